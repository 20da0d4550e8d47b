/* synth_batch.h - in-memory synthetic detection batches of a fixed size, for measuring the model
 * alone (bench/bench_train.c) without the data loader: each image is a noisy background with
 * 1..max_objects filled rectangles whose colour encodes the class.
 * Every draw is a pure function of (seed, sample index), so batches are reproducible. */
#ifndef DETR_SYNTH_BATCH_H
#define DETR_SYNTH_BATCH_H
#include <stdint.h>
#include "matcher.h"

typedef struct {
    int B, H, W;          /* padded batch size */
    float *images;        /* [B, 3, H, W] normalised, zero on padding */
    uint8_t *mask;        /* [B, H, W], 1 = padding */
    ImageTargets *targets;/* [B] (pointing into the arrays below) */
    int *labels;          /* [B * max_objects] */
    float *boxes;         /* [B * max_objects, 4] cxcywh normalised to the unpadded image */
} SynthBatch;

/* Allocates a batch of B images of at most H x W. */
void synth_batch_alloc(SynthBatch *sb, int B, int H, int W, int max_objects);
void synth_batch_free(SynthBatch *sb);
/* Fills the batch with samples first_index .. first_index+B-1. Image sizes vary between
 * 3/4 and all of H x W (so padding and masks are exercised) unless fixed_size. */
void synth_batch_fill(SynthBatch *sb, uint64_t seed, uint64_t first_index, int num_classes,
                      int max_objects, int fixed_size);

#endif
