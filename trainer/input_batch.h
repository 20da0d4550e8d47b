/* input_batch.h - one micro-batch's images as the model consumes them, and the one function that
 * turns them into the backbone's input: normalised float images in CNHW [3, B, H, W] layout in
 * backend memory (backend.h), 0 on padding.
 *
 * Two sources:
 *  - host float: the loader's normalised [B, 3, H, W] batch (LoaderBatch.images), uploaded plane
 *    by plane (the CPU path, and --gpu-preprocess off);
 *  - uint8: the loader's RGB [B, 3, H, W] batch (LoaderConfig.uint8_output), normalised by
 *    input_normalise_u8_cnhw on the host, or, when the batch has a GPU stager (CUDA builds,
 *    --gpu-preprocess on), copied from the pinned loader slot on a copy stream and normalised by
 *    a kernel on the compute stream (trainer/cuda/cuda_input.h): a quarter of the bytes of the
 *    float batch cross the bus (uint8 pixels plus the uint8 mask instead of float pixels).
 * Both normalisations compute (v / 255 - mean) / std in float32 with the operations in the
 * loader's order (dataloader/loader.c normalise_row), so every path gives the loader's float
 * batch bit for bit (tests/unit/test_input_batch.c checks it).
 *
 * GPU path, per step (trainer/train_loop.c):
 *     input_batch_from_loader(&in, b);
 *     input_batch_upload_async(&in, stager);     copies start; the host goes on
 *     ... the model calls input_batch_images_cnhw (the kernel waits for the copy on the GPU) ...
 *     h2d_ns += input_batch_wait_copied(&in);     before loader_release(loader, b)
 * The loader slot must not be given back before input_batch_wait_copied: the copy reads it. */
#ifndef DETR_INPUT_BATCH_H
#define DETR_INPUT_BATCH_H
#include <stddef.h>
#include <stdint.h>
#include "../dataloader/loader.h"
#include "arena.h"
#include "backend.h"

/* The loader's normalisation constants (dataloader/loader.c kMean / kStd, the reference's
 * ImageNet values). */
extern const float INPUT_MEAN[3], INPUT_STD[3];

/* A GPU copy engine for one micro-batch slot (copy stream, device buffers, events); opaque.
 * CUDA builds only: elsewhere input_stager_create returns NULL. */
typedef struct InputStager InputStager;

typedef struct {
    int B, H, W;
    const float *images;      /* host [B, 3, H, W] normalised, 0 on padding; NULL for uint8 */
    const uint8_t *images_u8; /* host [B, 3, H, W] RGB, 0 on padding; used when images is NULL */
    const uint8_t *mask;      /* host [B, H, W], 1 = padding */
    InputStager *stager;      /* set by input_batch_upload_async; NULL = host path */
    int copy_pending;         /* copies issued and not yet waited for */
} InputBatch;

/* A view of a loader batch (float or uint8, whichever it holds); no GPU copy yet. */
void input_batch_from_loader(InputBatch *in, const LoaderBatch *b);

/* The CPU reference of the uint8 path: u8 [B, 3, H, W] RGB, mask [B, H, W] (1 = padding) ->
 * out [3, B, H, W] = (v / 255 - mean[c]) / std[c], exactly 0 where the mask is 1. */
void input_normalise_u8_cnhw(const uint8_t *u8, const uint8_t *mask, int B, int H, int W,
                             float *out);

/* The batch's images as backend CNHW [3, B, H, W] floats, allocated from `acts` (so valid until
 * its next reset). Host float: uploaded; uint8 with a stager: the GPU kernel, ordered after the
 * batch's copy; uint8 without: normalised on the host (straight into the arena on the CPU
 * backend, else through a host buffer and an upload). */
float *input_batch_images_cnhw(InputBatch *in, const Backend *be, Arena *acts);

/* The step's micro-batches, found by their host mask pointer (each loader slot has its own):
 * the model's input hook (detr.h, detr_set_input_hook) for batches given to detr_forward with
 * images == NULL. ctx is an InputBatchSet. Returns NULL when no batch has that mask. */
typedef struct {
    InputBatch *items;
    int n;
} InputBatchSet;
float *input_batch_set_images(void *ctx, const Backend *be, Arena *acts, const uint8_t *mask,
                              int B, int H, int W);

/* ---- GPU copies (CUDA builds; the functions below are no-ops on a host-path batch) ---- */

/* A stager for one micro-batch slot; NULL in CPU-only builds and when no CUDA device is current
 * (cuda_device_init not called: the run is on the CPU), so callers need no device check. Reused for every step's batch of that slot (buffers grow, never shrink). */
InputStager *input_stager_create(void);
void input_stager_destroy(InputStager *s);
/* Starts the host-to-device copies of a uint8 batch (images and mask, from the loader's pinned
 * slot) on the stager's copy stream and attaches the stager to the batch. */
void input_batch_upload_async(InputBatch *in, InputStager *s);
/* Blocks until the batch's copies have finished (then its loader slot may be released); returns
 * their GPU time in nanoseconds, 0 for a batch without pending copies. */
int64_t input_batch_wait_copied(InputBatch *in);

#endif
