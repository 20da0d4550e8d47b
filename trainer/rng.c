/* rng.c - see rng.h */
#include "rng.h"
#include <math.h>

float rng_next_normal(Rng *r) {
    /* Box-Muller on two uniforms; u1 in (0, 1] so the log is finite. */
    float u1 = 1.0f - rng_next_uniform(r);
    float u2 = rng_next_uniform(r);
    return sqrtf(-2.0f * logf(u1)) * cosf(6.28318530717958647692f * u2);
}
