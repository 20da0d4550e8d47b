/* sampler.c - see sampler.h */
#include "sampler.h"
#include <stdlib.h>
#include <string.h>
#include "rng.h"

/* Independent random streams derived from the user's seed. */
enum { STREAM_SAMPLE = 1, STREAM_ORDER = 2, STREAM_WINDOW = 3 };

int64_t sampler_shard_len(const SamplerConfig *c) { return c->world > 0 ? c->n / c->world : 0; }

int64_t sampler_batches_per_epoch(const SamplerConfig *c) {
    int64_t len = sampler_shard_len(c);
    if (c->batch <= 0) return 0;
    return c->drop_last ? len / c->batch : (len + c->batch - 1) / c->batch;
}

/* Uniform integer in [0, bound) from a 64-bit draw (multiply-shift). */
static int64_t draw_below(uint64_t stream_seed, uint64_t index, int64_t bound) {
    unsigned __int128 x = (unsigned __int128)rng_hash64(stream_seed, index) * (uint64_t)bound;
    return (int64_t)(x >> 64);
}

void sampler_permutation(uint64_t stream_seed, int64_t n, int64_t *perm) {
    for (int64_t i = 0; i < n; i++) perm[i] = i;
    for (int64_t m = n - 1; m > 0; m--) {
        int64_t j = draw_below(stream_seed, (uint64_t)(n - 1 - m), m + 1);
        int64_t t = perm[m];
        perm[m] = perm[j];
        perm[j] = t;
    }
}

uint64_t sampler_sample_seed(uint64_t seed, int epoch, int64_t index, int attempt) {
    uint64_t s = rng_hash64(seed, STREAM_SAMPLE);
    s = rng_hash64(s, (uint64_t)(int64_t)epoch);
    s = rng_hash64(s, (uint64_t)index);
    return rng_hash64(s, (uint64_t)attempt);
}

typedef struct {
    float aspect;
    int64_t pos;   /* position in the shard: breaks ties, so the sort is a total order */
    int64_t index; /* dataset index */
} AspectKey;

static int cmp_aspect(const void *a, const void *b) {
    const AspectKey *x = a, *y = b;
    if (x->aspect < y->aspect) return -1;
    if (x->aspect > y->aspect) return 1;
    return (x->pos > y->pos) - (x->pos < y->pos);
}

/* Sorts one window of the shard by aspect ratio and reorders its full batches. */
static void group_window(const SamplerConfig *c, int epoch, int64_t window, int64_t *order,
                         int64_t start, int64_t len, AspectKey *keys, int64_t *batch_perm) {
    for (int64_t i = 0; i < len; i++) {
        int64_t idx = order[start + i];
        float a = c->aspect ? c->aspect[idx] : 1.0f;
        keys[i] = (AspectKey){a == a ? a : 1.0f, start + i, idx}; /* NaN -> 1 */
    }
    qsort(keys, (size_t)len, sizeof *keys, cmp_aspect);
    int64_t full = len / c->batch;
    if (c->shuffle) {
        uint64_t s = rng_hash64(rng_hash64(rng_hash64(c->seed, STREAM_WINDOW), (uint64_t)epoch),
                                (uint64_t)window);
        sampler_permutation(s, full, batch_perm);
    } else {
        for (int64_t b = 0; b < full; b++) batch_perm[b] = b;
    }
    int64_t out = start;
    for (int64_t b = 0; b < full; b++)
        for (int i = 0; i < c->batch; i++) order[out++] = keys[batch_perm[b] * c->batch + i].index;
    for (int64_t i = full * c->batch; i < len; i++) order[out++] = keys[i].index; /* the tail */
}

int sampler_epoch_order(const SamplerConfig *c, int epoch, int64_t *order) {
    int64_t len = sampler_shard_len(c);
    if (len <= 0) return 0;
    int64_t *perm = malloc((size_t)c->n * sizeof *perm);
    if (!perm) return -1;
    if (c->shuffle)
        sampler_permutation(rng_hash64(rng_hash64(c->seed, STREAM_ORDER), (uint64_t)epoch), c->n,
                            perm);
    else
        for (int64_t i = 0; i < c->n; i++) perm[i] = i;
    for (int64_t i = 0; i < len; i++) order[i] = perm[i * c->world + c->rank];
    free(perm);
    if (!c->group_by_aspect || c->batch <= 0) return 0;

    int64_t wlen = (int64_t)(c->aspect_window > 0 ? c->aspect_window : 1) * c->batch;
    AspectKey *keys = malloc((size_t)wlen * sizeof *keys);
    int64_t *batch_perm = malloc((size_t)(wlen / c->batch + 1) * sizeof *batch_perm);
    if (!keys || !batch_perm) {
        free(keys);
        free(batch_perm);
        return -1;
    }
    for (int64_t w = 0, start = 0; start < len; w++, start += wlen)
        group_window(c, epoch, w, order, start, len - start < wlen ? len - start : wlen, keys,
                     batch_perm);
    free(keys);
    free(batch_perm);
    return 0;
}
