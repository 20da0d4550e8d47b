/* sampler.h - the loader's deterministic sample order: epoch permutation, sharding, aspect
 * grouping, and the per-sample random seeds. Everything is a pure function of (seed, epoch) and
 * the dataset, never of thread scheduling, so batches are identical for any number of workers
 * and a run can resume from (epoch, batch).
 *
 * Order of one epoch for rank r of world W (n samples):
 *   1. perm = identity, or with shuffle a Fisher-Yates permutation drawn from (seed, epoch);
 *   2. the last n % W entries of perm are dropped, so every shard has n / W samples; shard r is
 *      perm[r], perm[r + W], perm[r + 2W], ... (sample k of the epoch goes to rank k % W);
 *   3. with group_by_aspect, the shard is cut into windows of aspect_window batches; each window
 *      is sorted by aspect ratio (w / h from the dataset, ties by position), cut into batches,
 *      and (with shuffle) the full batches of the window are put in an order drawn from
 *      (seed, epoch, window). An incomplete batch can only be the last of the shard, and
 *      stays last.
 * Batch k of the epoch is then order[k * batch .. k * batch + batch). */
#ifndef DETR_SAMPLER_H
#define DETR_SAMPLER_H
#include <stdint.h>

typedef struct {
    int64_t n; /* samples in the dataset */
    int batch;
    int rank, world;
    int shuffle;
    int drop_last; /* the shard's incomplete last batch is not part of the epoch */
    int group_by_aspect;
    int aspect_window; /* batches per sorting window (group_by_aspect), >= 1 */
    uint64_t seed;
    const float *aspect; /* [n] width / height of each sample, needed for group_by_aspect */
} SamplerConfig;

/* Samples in each rank's shard: n / world. */
int64_t sampler_shard_len(const SamplerConfig *c);
/* Batches per epoch for one rank (the incomplete last batch counts unless drop_last). */
int64_t sampler_batches_per_epoch(const SamplerConfig *c);

/* Fisher-Yates permutation of 0..n-1 drawn from stream_seed: step i swaps with
 * j = floor(rng_hash64(stream_seed, i) * (m + 1) / 2^64) (64-bit draws, so no bias or
 * unreachable j for any practical n). */
void sampler_permutation(uint64_t stream_seed, int64_t n, int64_t *perm);

/* Fills order[sampler_shard_len(c)] with the dataset indices of this rank's shard for epoch, in
 * batch order (see the file comment). Returns 0, or -1 when out of memory. */
int sampler_epoch_order(const SamplerConfig *c, int epoch, int64_t *order);

/* Seed of every random draw of one sample (transform_apply's seed): a hash of (seed, epoch,
 * dataset index, attempt). attempt is 0 for the sample in its own place, k for the k-th
 * replacement of a bad sample (so a replacement is augmented differently from the same image in
 * its own batch). */
uint64_t sampler_sample_seed(uint64_t seed, int epoch, int64_t index, int attempt);

#endif
