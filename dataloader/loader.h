/* loader.h - the asynchronous multi-worker batch loader (libuv).
 *
 * A loop thread owns a libuv loop; each sample's read + decode + augment is one uv_queue_work
 * item (the libuv pool is one global FIFO, so no uv_fs_* requests are chained into it); the pool
 * size is set from `workers` before its first use. Batches are collated into a ring of
 * `prefetch` slots (page-locked through the alloc hook when the trainer runs on CUDA, aligned
 * host memory otherwise); a slot is reused only after the consumer releases it.
 *
 * Determinism: the epoch order comes from (seed, epoch), every random draw of a sample from
 * (seed, epoch, sample index), so batches are bitwise identical for any number of workers, and
 * a run resumes from (epoch, batch position). Sharding (rank, world): the epoch order is cut
 * into world equal shards (sample k goes to rank k % world) after dropping the remainder so all
 * shards have the same length; with drop_last, each shard's incomplete last batch is dropped.
 *
 * Bad samples (missing/corrupt/oversized file, ...) are skipped with one warning line (path and
 * reason), counted in the stats, and replaced by the next sample of the shard so batches stay
 * full; with strict, the first failure is fatal (loader_next returns -1 with the reason). */
#ifndef DETR_LOADER_H
#define DETR_LOADER_H
#include <stddef.h>
#include <stdint.h>
#include "dataset.h"
#include "transforms.h"

typedef struct {
    int batch;             /* images per batch */
    int workers;           /* libuv pool threads (UV_THREADPOOL_SIZE), default 2 */
    int prefetch;          /* batch slots in the ring, default 2 */
    uint64_t seed;
    int shuffle;           /* 1 for training */
    int drop_last;         /* drop each shard's incomplete last batch */
    int rank, world;       /* sharding, default 0 / 1 */
    TransformConfig tf;
    int uint8_output;      /* 1: images as uint8 RGB [B,3,H,W] (GPU preprocessing); 0: normalised f32 */
    int group_by_aspect;   /* batch images of similar aspect ratio together */
    int strict;            /* first bad sample is fatal */
    int64_t max_pixels;    /* refuse images above this many pixels (header), default 100e6 */
    int max_boxes;         /* per image, default 256 (more are dropped and counted) */
    /* optional slot memory hooks (e.g. cudaHostAlloc); NULL = 64-byte aligned host memory */
    void *(*alloc_host)(size_t bytes);
    void (*free_host)(void *p);
} LoaderConfig;

void loader_config_default(LoaderConfig *c);

/* Timings in seconds, sums over the batch's samples unless noted. */
typedef struct {
    double wait_s;         /* consumer's time blocked in loader_next for this batch */
    double read_s, decode_s, augment_s, collate_s;
    int64_t bytes_read;
    int queue_depth;       /* ready batches when this one was handed out */
    double padded_fraction;/* padded pixels / all pixels of the batch */
    int skipped;           /* bad samples skipped while making this batch */
    int dropped_boxes;     /* invalid or over-limit boxes dropped */
} LoaderStats;

typedef struct {
    int B, H, W;           /* padded size */
    float *images;         /* [B, 3, H, W] normalised, 0 on padding (NULL if uint8_output) */
    uint8_t *images_u8;    /* [B, 3, H, W] RGB, 0 on padding (NULL unless uint8_output) */
    uint8_t *mask;         /* [B, H, W], 1 = padding */
    int *n_boxes;          /* [B] */
    int **labels;          /* [B] -> [n_boxes[b]] category ids */
    float **boxes;         /* [B] -> [n_boxes[b], 4] cxcywh normalised to the unpadded image */
    int *img_h, *img_w;    /* [B] unpadded size after the transform */
    int *orig_h, *orig_w;  /* [B] original image size */
    int64_t *image_ids;    /* [B] COCO ids */
    int epoch;
    int64_t index;         /* batch index within the epoch (of this rank) */
    LoaderStats stats;
} LoaderBatch;

typedef struct Loader Loader;

/* Starts the loop thread. ds must outlive the loader. Returns NULL with err on failure. */
Loader *loader_create(const Dataset *ds, const LoaderConfig *cfg, char *err, size_t errlen);
/* Batches per epoch for this rank. */
int64_t loader_batches_per_epoch(const Loader *l);
/* (Re)starts producing epoch `epoch` from batch `start_batch` (resume); cancels work in flight. */
int loader_start_epoch(Loader *l, int epoch, int64_t start_batch);
/* Blocks up to timeout_s for the next batch. Returns 1 with *out set, 0 at the end of the epoch,
 * -1 on a fatal error or timeout (message in err). */
int loader_next(Loader *l, LoaderBatch **out, double timeout_s, char *err, size_t errlen);
/* Gives the batch's slot back to the ring. */
void loader_release(Loader *l, LoaderBatch *b);
/* Stops at any moment (work in flight included), joins the thread, frees everything. */
void loader_destroy(Loader *l);

#endif
