/* train.c - see train.h */
#include "train.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "rng.h"
#include "timer.h"

void trainer_init(Trainer *t, Detr *m, const OptimConfig *oc) {
    memset(t, 0, sizeof(*t));
    t->m = m;
    loss_weights_default(&t->lw);
    adamw_create(&t->opt, &m->ps, oc);
    loss_scaler_init(&t->scaler, 0, 0);
}

void trainer_enable_loss_scaling(Trainer *t, double init_scale) {
    loss_scaler_init(&t->scaler, 1, init_scale);
}

void trainer_free(Trainer *t) { adamw_destroy(&t->opt, &t->m->ps); }


void format_losses(const DetrLosses *l, char *buf, size_t len) {
    size_t used = 0;
    buf[0] = 0;
    static const char *const terms[3] = {"loss_ce", "loss_bbox", "loss_giou"};
    for (int i = l->first; i < l->L && used < len; i++) {
        const double values[3] = {l->layer[i].loss_ce, l->layer[i].loss_bbox, l->layer[i].loss_giou};
        for (int k = 0; k < 3 && used < len; k++) {
            char name[64];
            detr_loss_name(l, i, terms[k], name, sizeof(name));
            used += snprintf(buf + used, len - used, "%s%s=%.6g", used ? " " : "", name, values[k]);
        }
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

uint64_t trainer_micro_seed(uint64_t seed, int k) {
    return k == 0 ? seed : rng_hash64(seed, 0x6d6963726fu + (uint64_t)k); /* "micro" */
}

void trainer_accum_begin(Trainer *t, const LossNormalisers *norm, StepResult *res) {
    t->t_begin = timer_now();
    t->norm = *norm;
    t->micro = 0;
    for (int p = 0; p < PHASE_N; p++) t->phase_s[p] = t->phase_flops[p] = 0;
    memset(res, 0, sizeof(*res));
    params_zero_grad(&t->m->ps);
}

int trainer_accum_micro(Trainer *t, const MicroBatch *mb, uint64_t seed, StepResult *res, char *err,
                        size_t errlen) {
    Detr *m = t->m;
    char msg[1024], terms[2048];
    DetrLosses part;
    detr_forward(m, mb->images, mb->mask, mb->B, mb->H, mb->W, 1, seed);
    if (detr_loss_backward_partial(m, mb->targets, &t->lw, &t->norm, 1,
                                   loss_scaler_scale(&t->scaler), &part, msg, sizeof(msg)) != 0) {
        const char *p = first_nonfinite(m, 0);
        snprintf(err, errlen, "step %d%s: %s (so no loss terms could be computed)%s%s", t->step + 1,
                 t->micro ? " (a later micro-batch)" : "", msg,
                 p ? "; first non-finite parameter: " : "", p ? p : "");
        return -1;
    }
    if (!isfinite(part.total)) {
        format_losses(&part, terms, sizeof(terms));
        snprintf(err, errlen, "step %d: the loss is not finite (%s)%s", t->step + 1, terms,
                 t->scaler.enabled ? "; under --amp fp16 the forward itself left fp16's range (+-65504), "
                                     "which loss scaling cannot fix: try --amp bf16" : "");
        return -1;
    }
    detr_losses_add(&res->losses, &part);
    for (int p = 0; p < PHASE_N; p++) {
        t->phase_s[p] += m->phase_s[p];
        t->phase_flops[p] += m->phase_flops[p];
    }
    t->micro++;
    return 0;
}

int trainer_accum_finish(Trainer *t, float lr, float lr_backbone, StepResult *res, char *err,
                         size_t errlen) {
    Detr *m = t->m;
    char terms[2048];
    if (t->micro == 0) {
        snprintf(err, errlen, "step %d: no micro-batch was run (trainer_accum_micro before "
                 "trainer_accum_finish)", t->step + 1);
        return -1;
    }
    prof_range_push(m->prof, PROF_PHASE_CLIP); /* the global norm; the scale is applied in AdamW */
    double scale = loss_scaler_scale(&t->scaler);
    double norm = grad_global_norm(&m->ps) / scale; /* of the unscaled gradients */
    prof_range_pop(m->prof);
    res->loss_scale = t->scaler.enabled ? scale : NAN;
    if (!isfinite(norm) && t->scaler.enabled) { /* GradScaler: skip the update, back off */
        loss_scaler_update(&t->scaler, 1);
        res->skipped = 1;
        res->grad_norm = NAN;
        m->phase_s[PHASE_OPTIMIZER] = t->phase_s[PHASE_OPTIMIZER] = 0;
        t->step++;
        t->micro = 0;
        res->seconds = timer_now() - t->t_begin;
        return 0;
    }
    if (!isfinite(norm)) {
        const char *g = first_nonfinite(m, 1);
        format_losses(&res->losses, terms, sizeof(terms));
        snprintf(err, errlen, "step %d: the gradient norm is not finite; first non-finite gradient: "
                 "%s (losses: %s)", t->step + 1, g ? g : "?", terms);
        return -1;
    }
    res->grad_norm = norm;
    double t1 = timer_now();
    prof_range_push(m->prof, PROF_PHASE_OPTIMIZER);
    adamw_step_unscale(&t->opt, &m->ps, lr, lr_backbone, norm, (float)(1.0 / scale));
    prof_range_pop(m->prof);
    loss_scaler_update(&t->scaler, 0);
    m->phase_s[PHASE_OPTIMIZER] = t->phase_s[PHASE_OPTIMIZER] = timer_now() - t1;
    t->step++;
    t->micro = 0;
    res->seconds = timer_now() - t->t_begin;
    return 0;
}

int trainer_step_accum(Trainer *t, const MicroBatch *mb, int n_micro, float lr, float lr_backbone,
                       uint64_t seed, StepResult *res, char *err, size_t errlen) {
    if (n_micro < 1) {
        snprintf(err, errlen, "step %d: no micro-batch given", t->step + 1);
        return -1;
    }
    LossNormalisers norm;
    loss_normalisers_init(&norm);
    for (int k = 0; k < n_micro; k++)
        loss_normalisers_add(&norm, mb[k].targets, mb[k].B, t->m->cfg.queries, t->lw.eos_coef);
    trainer_accum_begin(t, &norm, res);
    for (int k = 0; k < n_micro; k++)
        if (trainer_accum_micro(t, &mb[k], trainer_micro_seed(seed, k), res, err, errlen) != 0)
            return -1;
    return trainer_accum_finish(t, lr, lr_backbone, res, err, errlen);
}

int trainer_step(Trainer *t, const float *images, const uint8_t *mask, const ImageTargets *targets,
                 int B, int H, int W, float lr, float lr_backbone, uint64_t seed, StepResult *res,
                 char *err, size_t errlen) {
    MicroBatch mb = {images, mask, targets, B, H, W};
    return trainer_step_accum(t, &mb, 1, lr, lr_backbone, seed, res, err, errlen);
}
