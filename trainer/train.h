/* train.h - one training step: forward, set loss, backward, global-norm clipping, AdamW; and
 * the non-finite guard that stops training with the step, the loss terms and the first
 * non-finite tensor named. */
#ifndef DETR_TRAIN_H
#define DETR_TRAIN_H
#include <stdint.h>
#include "detr.h"
#include "optim.h"

typedef struct {
    Detr *m;
    AdamW opt;
    LossWeights lw;
    int step;       /* completed steps */
} Trainer;

typedef struct {
    DetrLosses losses;
    double grad_norm;     /* before clipping */
    double seconds;       /* wall time of the step */
} StepResult;

void trainer_init(Trainer *t, Detr *m, const OptimConfig *oc);
void trainer_free(Trainer *t);
/* One step on a batch (host images [B,3,H,W], mask [B,H,W], targets [B]), with the given
 * learning rates. dropout seeds derive from seed. Returns 0, or -1 with err describing the
 * non-finite value (the parameters are then left unchanged). */
int trainer_step(Trainer *t, const float *images, const uint8_t *mask, const ImageTargets *targets,
                 int B, int H, int W, float lr, float lr_backbone, uint64_t seed, StepResult *res,
                 char *err, size_t errlen);
/* Loss terms as "loss_ce=..., loss_bbox=..., ..." for messages. */
void format_losses(const DetrLosses *l, char *buf, size_t len);

#endif
