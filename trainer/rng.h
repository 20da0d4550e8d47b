/* rng.h - counter-based random numbers: every draw is a pure function of (seed, index), so a
 * dropout mask can be regenerated in backward instead of stored, any thread may draw any index,
 * and the CPU and CUDA backends produce identical masks. */
#ifndef DETR_RNG_H
#define DETR_RNG_H
#include <stdint.h>

/* splitmix64 finaliser of seed and index. */
static inline uint64_t rng_hash64(uint64_t seed, uint64_t index) {
    uint64_t z = seed * 0x9E3779B97F4A7C15ull + index + 0x632BE59BD9B4E019ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform in [0, 1) with 24 bits. */
static inline float rng_uniform(uint64_t seed, uint64_t index) {
    return (float)(rng_hash64(seed, index) >> 40) * (1.0f / 16777216.0f);
}

/* Sequential generator for host-side draws (initialisation, shuffles). */
typedef struct { uint64_t seed, counter; } Rng;
static inline float rng_next_uniform(Rng *r) { return rng_uniform(r->seed, r->counter++); }
/* Standard normal via Box-Muller. */
float rng_next_normal(Rng *r);

#endif
