/* train.h - one training step: forward, set loss, backward, global-norm clipping, AdamW; and
 * the non-finite guard that stops training with the step, the loss terms and the first
 * non-finite tensor named.
 *
 * Gradient accumulation: a step may consist of several micro-batches (effective batch = the sum
 * of their images). Loss normalisation (num_boxes and the CE weight sum over the WHOLE step's
 * targets), clipping and the AdamW update are those of one batch of that size: each
 * micro-batch's loss is its share divided by the whole step's normalisers (detr.h:
 * detr_loss_backward_partial), its gradient is accumulated, and the norm, clipping and update
 * run once on the sum. Equal to one big batch up to float rounding when the images have the
 * same size and dropout is off (see detr_loss_backward_partial). */
#ifndef DETR_TRAIN_H
#define DETR_TRAIN_H
#include <stdint.h>
#include "detr.h"
#include "loss_scaler.h"
#include "optim.h"

typedef struct {
    Detr *m;
    AdamW opt;
    LossWeights lw;
    LossScaler scaler; /* fp16 loss scaling (disabled unless trainer_enable_loss_scaling) */
    int step;       /* completed steps (a step whose update the scaler skipped counts) */
    /* state of the step in progress (trainer_accum_*) */
    LossNormalisers norm;
    int micro;      /* micro-batches done in this step */
    double t_begin; /* timer_now() at trainer_accum_begin */
    double phase_s[PHASE_N];     /* wall time per phase, summed over the step's micro-batches */
    double phase_flops[PHASE_N]; /* FLOPs per phase, summed over the step's micro-batches */
} Trainer;

typedef struct {
    DetrLosses losses;    /* of the whole step (sum of the micro-batches' shares) */
    double grad_norm;     /* before clipping (unscaled); NaN when the update was skipped */
    double seconds;       /* wall time of the step */
    double loss_scale;    /* the loss scale this step used; NaN without loss scaling */
    int skipped;          /* 1: gradients not finite under loss scaling, update skipped */
} StepResult;

/* One micro-batch: host images [B,3,H,W], mask [B,H,W] (1 = padding), targets [B]. */
typedef struct {
    const float *images;
    const uint8_t *mask;
    const ImageTargets *targets;
    int B, H, W;
} MicroBatch;

void trainer_init(Trainer *t, Detr *m, const OptimConfig *oc);
/* fp16: scales the loss by a dynamic factor (loss_scaler.h; init_scale <= 0: 65536). A step whose
 * gradients are not finite is then skipped (no update, res->skipped = 1) instead of failing. */
void trainer_enable_loss_scaling(Trainer *t, double init_scale);
void trainer_free(Trainer *t);
/* One step on a batch (host images [B,3,H,W], mask [B,H,W], targets [B]), with the given
 * learning rates. dropout seeds derive from seed. Returns 0, or -1 with err describing the
 * non-finite value (the parameters are then left unchanged). Same as trainer_step_accum with
 * one micro-batch. */
int trainer_step(Trainer *t, const float *images, const uint8_t *mask, const ImageTargets *targets,
                 int B, int H, int W, float lr, float lr_backbone, uint64_t seed, StepResult *res,
                 char *err, size_t errlen);
/* One step over n_micro micro-batches (all in memory at once). Micro-batch k's dropout seed is
 * trainer_micro_seed(seed, k). Returns as trainer_step. */
int trainer_step_accum(Trainer *t, const MicroBatch *mb, int n_micro, float lr, float lr_backbone,
                       uint64_t seed, StepResult *res, char *err, size_t errlen);

/* The same in three calls, for callers that hold one micro-batch at a time (each must still be
 * counted in norm before the first micro-batch's loss):
 *   LossNormalisers n; loss_normalisers_init(&n);
 *   for each micro-batch: loss_normalisers_add(&n, targets, B, m->cfg.queries, t->lw.eos_coef);
 *   trainer_accum_begin(t, &n, res);
 *   for k: trainer_accum_micro(t, &mb[k], trainer_micro_seed(seed, k), res, ...);
 *   trainer_accum_finish(t, lr, lr_backbone, res, ...);
 * begin zeroes the gradients and res; micro adds its loss share to res->losses; finish computes
 * the gradient norm, checks it, clips and updates. On -1 from micro or finish the parameters are
 * unchanged and the step is abandoned (begin again). */
void trainer_accum_begin(Trainer *t, const LossNormalisers *norm, StepResult *res);
int trainer_accum_micro(Trainer *t, const MicroBatch *mb, uint64_t seed, StepResult *res, char *err,
                        size_t errlen);
int trainer_accum_finish(Trainer *t, float lr, float lr_backbone, StepResult *res, char *err,
                         size_t errlen);
/* Dropout seed of micro-batch k of a step with seed `seed`: the seed itself for k = 0 (so one
 * micro-batch is exactly trainer_step), a hash of (seed, k) after. */
uint64_t trainer_micro_seed(uint64_t seed, int k);

/* Loss terms as "loss_ce=..., loss_bbox=..., ..." for messages. */
void format_losses(const DetrLosses *l, char *buf, size_t len);

#endif
