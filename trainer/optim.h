/* optim.h - global-norm gradient clipping and AdamW over the two parameter groups
 * (detr.md §3.1): the main group at lr, the backbone group (layer2-4) at lr_backbone, weight
 * decay on every trainable tensor, StepLR x0.1 every lr_drop epochs. */
#ifndef DETR_OPTIM_H
#define DETR_OPTIM_H
#include "config.h"
#include "params.h"

typedef struct {
    OptimConfig cfg;
    float *m, *v;   /* [n_train] each, MEM_OPTIM */
    int step;       /* completed optimizer steps */
} AdamW;

void adamw_create(AdamW *opt, ParamSet *ps, const OptimConfig *cfg);
void adamw_destroy(AdamW *opt, ParamSet *ps);
/* L2 norm of all trainable gradients (before clipping). */
double grad_global_norm(ParamSet *ps);
/* Clips (if cfg.clip > 0) using grad_norm (from grad_global_norm) and applies one AdamW step
 * with the given learning rates. */
void adamw_step(AdamW *opt, ParamSet *ps, float lr, float lr_backbone, double grad_norm);
/* The same on gradients that carry a loss scale: the stored gradients are multiplied by unscale
 * (1 / loss scale) on the fly, and grad_norm is the norm of the UNSCALED gradients. */
void adamw_step_unscale(AdamW *opt, ParamSet *ps, float lr, float lr_backbone, double grad_norm,
                        float unscale);
/* StepLR: lr * 0.1^(epoch / lr_drop). */
float lr_at_epoch(float base_lr, int epoch, int lr_drop);

#endif
