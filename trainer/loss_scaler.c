/* loss_scaler.c - see loss_scaler.h */
#include "loss_scaler.h"

void loss_scaler_init(LossScaler *s, int enabled, double init_scale) {
    *s = (LossScaler){.enabled = enabled,
                      .scale = enabled ? (init_scale > 0 ? init_scale : LOSS_SCALE_INIT) : 1.0,
                      .growth_interval = LOSS_SCALE_GROWTH_INTERVAL,
                      .growth_factor = 2.0,
                      .backoff_factor = 0.5};
}

double loss_scaler_scale(const LossScaler *s) { return s->enabled ? s->scale : 1.0; }

void loss_scaler_update(LossScaler *s, int found_inf) {
    if (!s->enabled) return;
    if (found_inf) {
        s->scale *= s->backoff_factor;
        s->growth_tracker = 0;
        s->skipped++;
        return;
    }
    if (++s->growth_tracker == s->growth_interval) {
        s->scale *= s->growth_factor;
        s->growth_tracker = 0;
    }
}
