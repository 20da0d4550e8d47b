/* loss_scaler.h - dynamic loss scaling for fp16 training, with the rule and defaults of PyTorch's
 * torch.cuda.amp.GradScaler: the loss (in practice: the gradient that starts backward) is
 * multiplied by `scale`, so small fp16 gradients do not flush to zero; when the step's gradients
 * hold an inf or NaN the update is skipped and the scale halves; after growth_interval steps in a
 * row without one the scale doubles.
 *   GradScaler(init_scale=65536.0, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000) */
#ifndef DETR_LOSS_SCALER_H
#define DETR_LOSS_SCALER_H
#include <stdint.h>

#define LOSS_SCALE_INIT 65536.0
#define LOSS_SCALE_GROWTH_INTERVAL 2000

typedef struct {
    int enabled;          /* 0: no scaling (scale stays 1) */
    double scale;         /* the current scale */
    int growth_tracker;   /* finite steps since the last change of scale */
    int growth_interval;  /* LOSS_SCALE_GROWTH_INTERVAL */
    double growth_factor; /* 2 */
    double backoff_factor; /* 0.5 */
    int64_t skipped;      /* steps whose update was skipped, in this process */
} LossScaler;

/* enabled = 0 gives scale 1 and no skipping; init_scale <= 0 means LOSS_SCALE_INIT. */
void loss_scaler_init(LossScaler *s, int enabled, double init_scale);
/* The multiplier of the loss's gradient: scale when enabled, else 1. */
double loss_scaler_scale(const LossScaler *s);
/* After a step: found_inf -> scale *= backoff, tracker = 0, skipped++; otherwise tracker++,
 * and at growth_interval: scale *= growth, tracker = 0 (GradScaler.update). No-op when
 * disabled. */
void loss_scaler_update(LossScaler *s, int found_inf);

#endif
