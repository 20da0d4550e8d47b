/* train.c - see train.h */
#include "train.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "timer.h"

void trainer_init(Trainer *t, Detr *m, const OptimConfig *oc) {
    memset(t, 0, sizeof(*t));
    t->m = m;
    loss_weights_default(&t->lw);
    adamw_create(&t->opt, &m->ps, oc);
}

void trainer_free(Trainer *t) { adamw_destroy(&t->opt, &t->m->ps); }


void format_losses(const DetrLosses *l, char *buf, size_t len) {
    size_t used = 0;
    buf[0] = 0;
    for (int i = l->first; i < l->L && used < len; i++) {
        char suffix[16] = "";
        if (i != l->L - 1) snprintf(suffix, sizeof(suffix), "_%d", i);
        used += snprintf(buf + used, len - used, "%sloss_ce%s=%.6g loss_bbox%s=%.6g loss_giou%s=%.6g",
                         i > l->first ? " " : "", suffix, l->layer[i].loss_ce, suffix, l->layer[i].loss_bbox,
                         suffix, l->layer[i].loss_giou);
    }
}

/* Name of the first parameter (or gradient, if grads) holding a NaN/Inf, or NULL. */
static const char *first_nonfinite(Detr *m, int grads) {
    ParamSet *ps = &m->ps;
    for (int i = 0; i < ps->n; i++) {
        const Param *p = &ps->p[i];
        const float *src = grads ? p->grad : p->data;
        if (!src) continue;
        float *h = malloc(p->numel * sizeof(float));
        m->be->download(h, src, p->numel * sizeof(float));
        int bad = 0;
        for (size_t k = 0; k < p->numel && !bad; k++) bad = !isfinite(h[k]);
        free(h);
        if (bad) return p->name;
    }
    return NULL;
}

int trainer_step(Trainer *t, const float *images, const uint8_t *mask, const ImageTargets *targets,
                 int B, int H, int W, float lr, float lr_backbone, uint64_t seed, StepResult *res,
                 char *err, size_t errlen) {
    Detr *m = t->m;
    double t0 = timer_now();
    memset(res, 0, sizeof(*res));
    params_zero_grad(&m->ps);
    detr_forward(m, images, mask, B, H, W, 1, seed);
    char msg[1024];
    char terms[2048];
    if (detr_loss_backward(m, targets, &t->lw, 1, 1.0, &res->losses, msg, sizeof(msg)) != 0) {
        const char *p = first_nonfinite(m, 0);
        snprintf(err, errlen, "step %d: %s (so no loss terms could be computed)%s%s", t->step + 1,
                 msg, p ? "; first non-finite parameter: " : "", p ? p : "");
        return -1;
    }
    if (!isfinite(res->losses.total)) {
        format_losses(&res->losses, terms, sizeof(terms));
        snprintf(err, errlen, "step %d: the loss is not finite (%s)", t->step + 1, terms);
        return -1;
    }
    double norm = grad_global_norm(&m->ps);
    if (!isfinite(norm)) {
        const char *g = first_nonfinite(m, 1);
        format_losses(&res->losses, terms, sizeof(terms));
        snprintf(err, errlen, "step %d: the gradient norm is not finite; first non-finite gradient: "
                 "%s (losses: %s)", t->step + 1, g ? g : "?", terms);
        return -1;
    }
    res->grad_norm = norm;
    double t1 = timer_now();
    adamw_step(&t->opt, &m->ps, lr, lr_backbone, norm);
    m->phase_s[PHASE_OPTIMIZER] = timer_now() - t1;
    t->step++;
    res->seconds = timer_now() - t0;
    return 0;
}
