/* params.c - see params.h */
#include "params.h"
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void params_init(ParamSet *ps, const Backend *be) {
    memset(ps, 0, sizeof(*ps));
    ps->be = be;
}

int params_declare(ParamSet *ps, ParamGroup group, float **data_slot, float **grad_slot, int ndim,
                   const int *shape, const char *fmt, ...) {
    if (ps->n == ps->cap) {
        ps->cap = ps->cap ? 2 * ps->cap : 256;
        ps->p = realloc(ps->p, (size_t)ps->cap * sizeof(Param));
        if (!ps->p) abort();
    }
    Param *p = &ps->p[ps->n];
    memset(p, 0, sizeof(*p));
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->name, sizeof(p->name), fmt, ap);
    va_end(ap);
    p->ndim = ndim;
    p->numel = 1;
    for (int i = 0; i < ndim; i++) {
        p->shape[i] = shape[i];
        p->numel *= (size_t)shape[i];
    }
    p->group = group;
    p->data_slot = data_slot;
    p->grad_slot = grad_slot;
    return ps->n++;
}

void params_allocate(ParamSet *ps) {
    const Backend *be = ps->be;
    size_t off = 0;
    /* trainable: main group first, then backbone, so each group is one contiguous range */
    for (int g = GROUP_MAIN; g <= GROUP_BACKBONE; g++) {
        size_t start = off;
        for (int i = 0; i < ps->n; i++)
            if (ps->p[i].group == (ParamGroup)g) {
                ps->p[i].offset = off;
                off += (ps->p[i].numel + 15) & ~(size_t)15; /* keep 64-byte alignment */
            }
        ps->n_train_group[g] = off - start;
    }
    ps->n_train = off;
    size_t foff = 0;
    for (int i = 0; i < ps->n; i++)
        if (ps->p[i].group == GROUP_FROZEN) {
            ps->p[i].offset = foff;
            foff += (ps->p[i].numel + 15) & ~(size_t)15;
        }
    ps->n_frozen = foff;
    ps->train_data = be->alloc(MEM_PARAMS, ps->n_train);
    ps->train_grad = be->alloc(MEM_GRADS, ps->n_train);
    ps->frozen_data = be->alloc(MEM_PARAMS, ps->n_frozen);
    be->fill(ps->train_data, 0.0f, ps->n_train);
    be->fill(ps->train_grad, 0.0f, ps->n_train);
    be->fill(ps->frozen_data, 0.0f, ps->n_frozen);
    for (int i = 0; i < ps->n; i++) {
        Param *p = &ps->p[i];
        if (p->group == GROUP_FROZEN) {
            p->data = ps->frozen_data + p->offset;
            p->grad = NULL;
        } else {
            p->data = ps->train_data + p->offset;
            p->grad = ps->train_grad + p->offset;
        }
        if (p->data_slot) *p->data_slot = p->data;
        if (p->grad_slot) *p->grad_slot = p->grad;
    }
}

void params_free(ParamSet *ps) {
    if (ps->train_data) ps->be->free(ps->train_data);
    if (ps->train_grad) ps->be->free(ps->train_grad);
    if (ps->frozen_data) ps->be->free(ps->frozen_data);
    free(ps->p);
    memset(ps, 0, sizeof(*ps));
}

Param *params_find(ParamSet *ps, const char *name) {
    for (int i = 0; i < ps->n; i++)
        if (strcmp(ps->p[i].name, name) == 0) return &ps->p[i];
    return NULL;
}

void params_zero_grad(ParamSet *ps) {
    if (ps->n_train) ps->be->fill(ps->train_grad, 0.0f, ps->n_train);
}
