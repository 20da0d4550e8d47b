/* loader.h - the asynchronous multi-worker batch loader (libuv).
 *
 * A loop thread owns a libuv loop; each sample's read + decode + augment is one uv_queue_work
 * item (the libuv pool is one global FIFO, so no uv_fs_* requests are chained into it; files are
 * read with plain open/read inside the item); collating a complete batch is one item per image
 * (each writes its image's normalised pixels, zero padding, mask rows and targets into its own
 * part of the slot), so the images of a batch are collated in parallel. The pool size
 * is set from `workers` (UV_THREADPOOL_SIZE) before its first use: it is PROCESS-WIDE and fixed
 * when the first work item of the process is queued, so a second loader asking for another size
 * gets a warning and shares the first pool (loader_pool_size() tells the size in use).
 * Batches are collated into a ring of `prefetch` slots (page-locked through the alloc hook when
 * the trainer runs on CUDA, 64-byte aligned host memory otherwise); a slot is reused only after
 * the consumer releases it.
 *
 * Memory is bounded: `prefetch` slots, each allocated when first used for a full batch of the
 * transform's largest images (batch x 3 x (max_size+1)^2, f32 or uint8, plus the mask; e.g.
 * 42.7 MB for batch 2, f32, max_size 1333) and grown (never shrunk) only for a batch larger still
 * (an extreme aspect ratio; or, with max_size 0, the largest batch seen so far); plus the samples
 * of at most `prefetch` batches in flight (one transformed image each); plus per running work
 * item one decoder with its file and decode buffers. So memory is flat over a run and steady
 * state allocates nothing. Slot memory is charged to MEM_INPUTS (trainer/mem.h). The alloc hooks
 * are called on the loader's loop thread (growth, with the loader's lock held, so loader_next
 * waits for them) and in loader_destroy: with CUDA, allocate with cudaHostAllocPortable (or set
 * the device inside the hook).
 * Keeping `workers` threads busy needs prefetch * batch >= workers samples in flight.
 *
 * Determinism: the epoch order comes from (seed, epoch), every random draw of a sample from
 * (seed, epoch, dataset index of the sample), so batches are bitwise identical for any number of
 * workers, and a run resumes from (epoch, batch position) with loader_start_epoch (see
 * dataloader/sampler.h for the exact order). Sharding (rank, world): the epoch order is cut
 * into world equal shards (sample k goes to rank k % world) after dropping the last
 * n % world samples of the epoch order so all shards have the same length (shards are disjoint
 * and together cover the rest); with drop_last, each shard's incomplete last batch is dropped.
 *
 * Bad samples (missing, empty, unreadable, corrupt, truncated or oversized file, ...) are skipped
 * with one warning line on stderr (path and reason), counted in the batch's stats, and replaced
 * by the next sample of the shard order: the sample at shard position p is replaced by position
 * p + 1, then p + 2, ... (wrapping around), with its own random draws (attempt number in the
 * seed; that image then appears twice in the epoch), so batches stay full and stay identical
 * for any number of workers. After 64 consecutive failures for one place the loader stops with
 * an error. With strict, the first failure is fatal: the batches before the one that holds the
 * bad sample are still delivered, then loader_next returns -1 with the path and reason (the same
 * batch whatever the number of workers).
 *
 * Threads: one consumer thread calls loader_next / loader_release / loader_start_epoch /
 * loader_destroy. A batch's memory stays valid until loader_release (or loader_destroy). */
#ifndef DETR_LOADER_H
#define DETR_LOADER_H
#include <stddef.h>
#include <stdint.h>
#include "dataset.h"
#include "transforms.h"

typedef struct {
    int batch;             /* images per batch, default 2 */
    int workers;           /* libuv pool threads (UV_THREADPOOL_SIZE), default 2; process-wide */
    int prefetch;          /* batch slots in the ring (and batches in flight), default 2 */
    uint64_t seed;         /* default 42 */
    int shuffle;           /* 1 for training (default); 0 keeps the dataset's order */
    int drop_last;         /* drop each shard's incomplete last batch; default 1 (training) */
    int rank, world;       /* sharding, default 0 / 1 */
    TransformConfig tf;
    int uint8_output;      /* 1: images as uint8 RGB [B,3,H,W] (GPU preprocessing); 0: normalised f32 */
    int group_by_aspect;   /* batch images of similar aspect ratio together */
    int aspect_window;     /* group_by_aspect: batches per window sorted by aspect, default 20 */
    int strict;            /* first bad sample is fatal */
    int64_t max_pixels;    /* refuse images above this many pixels (header), default 100e6 */
    int max_boxes;         /* per image, default 256 (more are dropped and counted) */
    /* optional slot memory hooks (e.g. cudaHostAlloc); NULL = 64-byte aligned host memory */
    void *(*alloc_host)(size_t bytes);
    void (*free_host)(void *p);
    /* optional: receives each warning line (no newline; skipped samples, pool size) instead of
     * stderr; called on the loop thread (and in loader_create). NULL = stderr. */
    void (*warn)(void *ctx, const char *line);
    void *warn_ctx;
    /* optional: called on the worker thread at the end of each work item, with its kind
     * (LOADER_WORK_SAMPLE: read + decode + augment of one image; LOADER_WORK_COLLATE: one image
     * collated into its slot) and its duration in seconds; e.g. for a profiler's per-thread
     * ranges. Must be thread-safe and quick. NULL = none. */
    void (*on_work)(void *ctx, int kind, double seconds);
    void *work_ctx;
} LoaderConfig;

enum { LOADER_WORK_SAMPLE = 0, LOADER_WORK_COLLATE = 1 };

void loader_config_default(LoaderConfig *c);

/* Timings in seconds, sums over the batch's samples unless noted (work items run in parallel,
 * so a sum is worker time, not the batch's wall-clock time). */
typedef struct {
    double wait_s;         /* consumer's time blocked in loader_next for this batch */
    double read_s, decode_s, augment_s;
    double collate_s;      /* sum of the batch's per-image collate items (normalise, pad, mask,
                              targets) */
    int64_t bytes_read;
    int queue_depth;       /* ready batches (this one included) when loader_next was called:
                              0 means the consumer had to wait for the loader */
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
/* (Re)starts producing epoch `epoch` from batch `start_batch` (resume); cancels work in flight
 * and drops ready batches of the previous epoch (batches the consumer holds stay valid until
 * released). Must be called before the first loader_next. Returns 0, or -1 (start_batch outside
 * 0..batches per epoch, out of memory) with a message on stderr. */
int loader_start_epoch(Loader *l, int epoch, int64_t start_batch);
/* Blocks up to timeout_s (<= 0: no limit) for the next batch; batches come in order (batch k
 * before k + 1) whatever order the workers finish in. Returns 1 with *out set, 0 at the end of
 * the epoch, -1 on a fatal error, a timeout, or when every slot is held by the consumer (message
 * in err). After a timeout the loader keeps running and loader_next may be called again. */
int loader_next(Loader *l, LoaderBatch **out, double timeout_s, char *err, size_t errlen);
/* The next batch only if it is ready now (never blocks): 1 with *out set (stats.wait_s 0), 0 at
 * the end of the epoch, 2 when it is not ready yet or every slot is held (nothing taken: call
 * loader_next later), -1 on a fatal error (message in err). For a consumer that fetches ahead
 * without waiting. */
int loader_try_next(Loader *l, LoaderBatch **out, char *err, size_t errlen);
/* Batches ready for the consumer right now (the profiler may sample it between steps). */
int loader_queue_depth(Loader *l);
/* Gives the batch's slot back to the ring. */
void loader_release(Loader *l, LoaderBatch *b);
/* Stops at any moment (work in flight included), joins the thread, frees everything. */
void loader_destroy(Loader *l);
/* Threads of the process's libuv pool as set by the first loader (0 before any). */
int loader_pool_size(void);

#endif
