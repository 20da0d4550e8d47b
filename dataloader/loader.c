/* loader.c - see loader.h.
 *
 * Threads and who touches what:
 *   - the consumer (trainer) thread calls loader_next / loader_release / loader_start_epoch;
 *   - the loop thread runs the libuv loop: it queues one work item per sample and, once a
 *     batch is complete, one collate item per image of it, and places finished work
 *     (after-work callbacks);
 *   - libuv pool threads run the work items (read + decode + augment, or collate one image).
 * All bookkeeping (builds, jobs' states, slots, cursors) is guarded by Loader.mu; the loop thread
 * holds it for the whole of each callback. A work item only touches its own Job (and, when it
 * collates image i, image i's part of its Slot, reading the slot's layout) between uv_queue_work
 * and its after-work callback, which libuv orders through its own mutexes. The consumer wakes
 * the loop with uv_async_send under Loader.mu while async_open is set; the loop clears
 * async_open under the same mutex before uv_close, so no send can race the close (libuv #2226).
 * Sends coalesce, so the async callback re-scans everything (pump) instead of counting wake-ups.
 *
 * Pipeline of one batch: a Build (one of `prefetch`) gets the next batch index and queues its
 * samples; when all are in and it is the next batch to collate and a slot is free, the loop
 * thread sets the slot's layout (padded H and W, where each image's pixels and mask go) and
 * queues one collate item per image; each writes its image's normalised pixels, its own zero
 * padding and its mask rows (together they cover the whole padded batch, so the slot needs no
 * clearing) and its targets. When the last one is back, the slot becomes READY and the Build is
 * free again. Slots are given to batches strictly in batch order, so ready slots always hold the
 * batches the consumer asks for next (no deadlock when batches finish out of order). */
#include "loader.h"
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>
#include "mem.h"
#include "sampler.h"
#include "timer.h"

#define LOADER_MAX_FILE_BYTES ((int64_t)256 << 20) /* no image file is this large */
#define LOADER_MAX_ATTEMPTS 64 /* consecutive bad samples for one place before giving up */
#define LOADER_MAX_PREFETCH 64
#define LOADER_MAX_WORKERS 1024 /* libuv's own limit */

#define CONTAINER_OF(ptr, type, member) ((type *)((char *)(ptr) - offsetof(type, member)))

/* ImageNet statistics of the reference's T.Normalize. */
static const float kMean[3] = {0.485f, 0.456f, 0.406f};
static const float kStd[3] = {0.229f, 0.224f, 0.225f};

/* What one running work item needs besides its job: a decoder and reusable buffers. Kept in a
 * per-loader pool rather than in thread-locals: libuv's pool threads outlive the loader and are
 * shared by every loader of the process, so thread-locals could not be freed in loader_destroy.
 * At most one context per concurrently running item is ever created (<= pool size). */
typedef struct WorkerCtx {
    Decoder *dec;
    uint8_t *file; /* [file_cap] the encoded file */
    size_t file_cap;
    Image decoded; /* [h, w, 3], possibly DCT-scaled */
    TransformScratch scratch;
    struct WorkerCtx *next_free, *next_all;
} WorkerCtx;

typedef enum {
    JOB_IDLE,
    JOB_QUEUED,   /* sample item (req) queued or running */
    JOB_DONE,     /* holds a good sample */
    JOB_COLLATING /* collate item (collate_req) queued or running */
} JobState;

struct Build;

/* One sample of a batch in flight. */
typedef struct {
    uv_work_t req;         /* read + decode + augment */
    uv_work_t collate_req; /* this image's part of the batch, once the batch is complete */
    struct Loader *l;
    struct Build *build;
    JobState state;
    /* inputs (set on the loop thread before queueing) */
    int64_t place; /* position in the shard order this job fills */
    int attempt;   /* 0, or the number of bad samples replaced so far for this place */
    int64_t ds_index;
    uint64_t seed;
    /* outputs (written by the worker) */
    int ok;
    char err[512]; /* "path: reason" when !ok */
    Image out;     /* [out.h, out.w, 3] after the transform; buffer reused */
    float *xyxy;   /* [box_cap, 4] pixels of out */
    int *labels;   /* [box_cap] */
    int n_boxes, dropped_boxes;
    int orig_w, orig_h;
    double read_s, decode_s, augment_s;
    int64_t bytes;
    double collate_s; /* written by the collate item */
} Job;

typedef enum { BUILD_FREE, BUILD_FILLING, BUILD_COMPLETE, BUILD_COLLATING } BuildState;
typedef enum { SLOT_FREE, SLOT_COLLATING, SLOT_READY, SLOT_HELD } SlotState;

typedef struct Slot {
    LoaderBatch batch; /* what the consumer sees; points into block and meta */
    SlotState state;
    int gen;
    uint8_t *block; /* images ([B,3,H,W] f32 or u8) then mask ([B,H,W]) */
    size_t block_cap;
    void *meta; /* per-image arrays, allocated once */
} Slot;

typedef struct Build {
    struct Loader *l;
    BuildState state;
    int gen, epoch;
    int64_t batch;     /* batch index within the epoch */
    int nb;            /* images in this batch */
    int n_ok;          /* jobs holding a good sample */
    int n_pending;     /* requests of this build (sample or collate items) queued or running */
    LoaderStats stats; /* sums over the batch's samples */
    Job *jobs;         /* [cfg.batch] */
    Slot *slot;        /* while collating */
} Build;

struct Loader {
    const Dataset *ds;
    LoaderConfig cfg;
    SamplerConfig sampler;
    int64_t shard_len, batches_per_epoch;
    int box_cap;       /* boxes a job can hold before the max_boxes cut */
    int slot_boxes;    /* boxes per image in a slot: min(max_boxes, box_cap) */
    size_t slot_worst; /* bytes of a full batch at the transform's largest size, 0 = unknown */
    float *aspect;     /* [n_images] for group_by_aspect */

    uv_loop_t loop;
    uv_async_t wake;
    pthread_t thread;
    int loop_ready, thread_started;

    pthread_mutex_t mu; /* guards everything below */
    pthread_cond_t cv;  /* consumer: a slot became ready, or a fatal error */
    int async_open;     /* uv_async_send allowed */
    int closing;        /* uv_close called */
    int stop;
    int n_reqs;   /* work requests queued or running */
    int gen;      /* bumped by every loader_start_epoch */
    int loop_gen; /* generation the loop thread's cursors belong to */
    int started, epoch;
    int64_t start_batch;
    int64_t next_produce, next_collate, next_consume;
    int64_t *order;      /* [shard_len] this epoch's shard order */
    int fatal;           /* a fatal error happened while making batch fatal_batch */
    int64_t fatal_batch; /* batches before it are still delivered, in order */
    char fatal_msg[640];
    Slot *slots;   /* [prefetch] */
    Build *builds; /* [prefetch] */

    pthread_mutex_t ctx_mu; /* guards the worker-context pool */
    WorkerCtx *ctx_free, *ctx_all;
};

/* ---- process-wide libuv pool size ---- */

static pthread_mutex_t g_pool_mu = PTHREAD_MUTEX_INITIALIZER;
static int g_pool_size; /* 0 until the first loader set it */

/* UV_THREADPOOL_SIZE is read once, when the first work item of the process is queued; this
 * loader is the only user of the pool, so the first loader's value wins. */
static void warn_line(const LoaderConfig *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* One warning line: to the config's hook, or stderr. */
static void warn_line(const LoaderConfig *c, const char *fmt, ...) {
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (c->warn)
        c->warn(c->warn_ctx, line);
    else
        fprintf(stderr, "%s\n", line);
}

static void set_pool_size(const LoaderConfig *c) {
    pthread_mutex_lock(&g_pool_mu);
    int first = g_pool_size == 0, pool = g_pool_size;
    if (first) {
        char v[16];
        snprintf(v, sizeof v, "%d", c->workers);
        setenv("UV_THREADPOOL_SIZE", v, 1);
        g_pool_size = c->workers;
    }
    pthread_mutex_unlock(&g_pool_mu);
    if (!first && pool != c->workers)
        warn_line(c,
                  "warning: loader: workers=%d ignored: the libuv thread pool of this process "
                  "already has %d threads (its size is process-wide and fixed at first use)",
                  c->workers, pool);
}

int loader_pool_size(void) {
    pthread_mutex_lock(&g_pool_mu);
    int n = g_pool_size;
    pthread_mutex_unlock(&g_pool_mu);
    return n;
}

void loader_config_default(LoaderConfig *c) {
    memset(c, 0, sizeof *c);
    c->batch = 2;
    c->workers = 2;
    c->prefetch = 2;
    c->seed = 42;
    c->shuffle = 1;
    c->drop_last = 1; /* as the reference's training BatchSampler */
    c->rank = 0;
    c->world = 1;
    transform_config_default(&c->tf, 1);
    c->max_pixels = 100000000;
    c->max_boxes = 256;
    c->aspect_window = 20;
}

/* ---- small helpers ---- */

static void set_err(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || !errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static size_t round_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

static size_t pixel_bytes(const Loader *l, int nb, int H, int W) {
    size_t elem = l->cfg.uint8_output ? 1 : sizeof(float);
    return round_up((size_t)nb * 3 * (size_t)H * (size_t)W * elem, 64);
}

static size_t block_bytes(const Loader *l, int nb, int H, int W) {
    return pixel_bytes(l, nb, H, W) + (size_t)nb * (size_t)H * (size_t)W;
}

static void *slot_alloc(const Loader *l, size_t bytes) {
    if (!l->cfg.alloc_host) return host_alloc(MEM_INPUTS, bytes);
    if (mem_charge(MEM_INPUTS, bytes) != 0) return NULL;
    void *p = l->cfg.alloc_host(bytes);
    if (!p) mem_release(MEM_INPUTS, bytes);
    return p;
}

static void slot_free(const Loader *l, void *p, size_t bytes) {
    if (!p) return;
    if (!l->cfg.alloc_host) {
        host_free(p);
        return;
    }
    if (l->cfg.free_host) l->cfg.free_host(p);
    mem_release(MEM_INPUTS, bytes);
}

/* A fatal error while making batch `batch`: that batch and the later ones are not made, the
 * earlier ones still are, so the consumer sees the error exactly at that batch. */
static void set_fatal_locked(Loader *l, int64_t batch, const char *fmt, ...) {
    if (l->fatal && l->fatal_batch <= batch) return; /* keep the earliest cause */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(l->fatal_msg, sizeof l->fatal_msg, fmt, ap);
    va_end(ap);
    l->fatal = 1;
    l->fatal_batch = batch;
    pthread_cond_broadcast(&l->cv);
}

static void wake_loop_locked(Loader *l) {
    if (l->async_open) uv_async_send(&l->wake);
}

/* ---- worker contexts ---- */

static WorkerCtx *ctx_acquire(Loader *l) {
    pthread_mutex_lock(&l->ctx_mu);
    WorkerCtx *c = l->ctx_free;
    if (c) l->ctx_free = c->next_free;
    pthread_mutex_unlock(&l->ctx_mu);
    if (c) return c;
    c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->dec = decoder_create();
    if (!c->dec) {
        free(c);
        return NULL;
    }
    pthread_mutex_lock(&l->ctx_mu);
    c->next_all = l->ctx_all;
    l->ctx_all = c;
    pthread_mutex_unlock(&l->ctx_mu);
    return c;
}

static void ctx_release(Loader *l, WorkerCtx *c) {
    pthread_mutex_lock(&l->ctx_mu);
    c->next_free = l->ctx_free;
    l->ctx_free = c;
    pthread_mutex_unlock(&l->ctx_mu);
}

static void ctx_destroy_all(Loader *l) {
    WorkerCtx *c = l->ctx_all;
    while (c) {
        WorkerCtx *next = c->next_all;
        decoder_destroy(c->dec);
        image_free(&c->decoded);
        transform_scratch_free(&c->scratch);
        free(c->file);
        free(c);
        c = next;
    }
    l->ctx_all = l->ctx_free = NULL;
}

/* ---- the sample work item (pool thread) ---- */

/* Reads a whole regular file into *buf (grown as needed) with plain open/read: the read is part
 * of the sample's work item, never a separate uv_fs request. */
static int read_whole_file(const char *path, uint8_t **buf, size_t *cap, size_t *len, char *why,
                           size_t whylen) {
    /* O_NONBLOCK: a FIFO or device named like an image must not block a worker in open/read. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        set_err(why, whylen, "cannot open: %s", strerror(errno));
        return -1;
    }
    struct stat st;
    int rc = -1;
    if (fstat(fd, &st) != 0) {
        set_err(why, whylen, "cannot stat: %s", strerror(errno));
    } else if (!S_ISREG(st.st_mode)) {
        set_err(why, whylen, "not a regular file");
    } else if (st.st_size == 0) {
        set_err(why, whylen, "empty file (0 bytes)");
    } else if ((int64_t)st.st_size > LOADER_MAX_FILE_BYTES) {
        set_err(why, whylen, "file of %lld bytes is larger than the %lld-byte limit for an image",
                (long long)st.st_size, (long long)LOADER_MAX_FILE_BYTES);
    } else {
        size_t want = (size_t)st.st_size;
        if (want > *cap) {
            uint8_t *nb = realloc(*buf, want);
            if (!nb) {
                set_err(why, whylen, "out of memory reading %zu bytes", want);
                close(fd);
                return -1;
            }
            *buf = nb;
            *cap = want;
        }
        size_t got = 0;
        while (got < want) {
            ssize_t r = read(fd, *buf + got, want - got);
            if (r < 0 && errno == EINTR) continue;
            if (r < 0) {
                set_err(why, whylen, "read error: %s", strerror(errno));
                break;
            }
            if (r == 0) {
                set_err(why, whylen, "file shrank while reading (%zu of %zu bytes)", got, want);
                break;
            }
            got += (size_t)r;
        }
        if (got == want) {
            *len = got;
            rc = 0;
        }
    }
    close(fd);
    return rc;
}

/* Read, decode, targets, transform: fills the job's outputs or sets j->err. */
static void load_sample(Loader *l, WorkerCtx *c, Job *j) {
    const Dataset *ds = l->ds;
    char path[PATH_MAX], why[384];
    const char *dir = ds->images_dir ? ds->images_dir : ".";
    int n = snprintf(path, sizeof path, "%s/%s", dir, dataset_file_name(ds, j->ds_index));
    if (n < 0 || (size_t)n >= sizeof path) {
        set_err(j->err, sizeof j->err, "%s/%s: path too long", dir,
                dataset_file_name(ds, j->ds_index));
        return;
    }
    double t0 = timer_now();
    size_t len = 0;
    int rc = read_whole_file(path, &c->file, &c->file_cap, &len, why, sizeof why);
    double t1 = timer_now();
    j->read_s = t1 - t0;
    if (rc != 0) {
        set_err(j->err, sizeof j->err, "%s: %s", path, why);
        return;
    }
    j->bytes = (int64_t)len;

    int fw = 0, fh = 0, min_w = 0, min_h = 0;
    if (decode_probe(c->dec, c->file, len, &fw, &fh, why, sizeof why) != 0) {
        set_err(j->err, sizeof j->err, "%s: %s", path, why);
        return;
    }
    TransformPlan plan;
    if (transform_plan(&l->cfg.tf, j->seed, fw, fh, &plan) != 0) {
        set_err(j->err, sizeof j->err,
                "%s: a %dx%d image gives a degenerate or oversized transform", path, fw, fh);
        return;
    }
    transform_plan_min_size(&l->cfg.tf, j->seed, fw, fh, &min_w, &min_h);
    rc = decode_image(c->dec, c->file, len, min_w, min_h, l->cfg.max_pixels, &c->decoded, why,
                      sizeof why);
    double t2 = timer_now();
    j->decode_s = t2 - t1;
    if (rc != 0) {
        set_err(j->err, sizeof j->err, "%s: %s", path, why);
        return;
    }
    if (c->decoded.full_w != fw || c->decoded.full_h != fh) {
        set_err(j->err, sizeof j->err, "%s: decoded size %dx%d differs from the header's %dx%d",
                path, c->decoded.full_w, c->decoded.full_h, fw, fh);
        return;
    }

    int invalid = 0;
    int nb = dataset_targets(ds, j->ds_index, fw, fh, 0, j->xyxy, j->labels, l->box_cap, &invalid);
    j->dropped_boxes = invalid;
    if (nb > l->cfg.max_boxes) {
        j->dropped_boxes += nb - l->cfg.max_boxes;
        nb = l->cfg.max_boxes;
    }
    Boxes boxes = {nb, j->xyxy, j->labels};
    rc = transform_execute(&plan, &c->decoded, &boxes, &j->out, &c->scratch);
    j->augment_s = timer_now() - t2;
    if (rc != 0 || j->out.w <= 0 || j->out.h <= 0 || !j->out.rgb) {
        set_err(j->err, sizeof j->err, "%s: the transform failed on a %dx%d image (out of memory?)",
                path, fw, fh);
        return;
    }
    j->n_boxes = boxes.n;
    j->orig_w = fw;
    j->orig_h = fh;
    j->ok = 1;
}

static void sample_work(uv_work_t *req) {
    Job *j = CONTAINER_OF(req, Job, req);
    Loader *l = j->l;
    j->ok = 0;
    j->err[0] = 0;
    j->n_boxes = j->dropped_boxes = 0;
    j->read_s = j->decode_s = j->augment_s = 0;
    j->bytes = 0;
    double t0 = timer_now();
    WorkerCtx *c = ctx_acquire(l);
    if (!c) {
        set_err(j->err, sizeof j->err, "%s: out of memory creating a decoder",
                dataset_file_name(l->ds, j->ds_index));
        return;
    }
    load_sample(l, c, j);
    ctx_release(l, c);
    if (l->cfg.on_work) l->cfg.on_work(l->cfg.work_ctx, LOADER_WORK_SAMPLE, timer_now() - t0);
}

/* ---- the collate work items (pool thread), one per image of a batch ---- */

/* One row of w pixels, HWC uint8 -> three CHW float rows, normalised exactly as the reference's
 * to_tensor + Normalize: (v / 255 - mean) / std, in float32 with true divisions, so the batches
 * are bitwise equal to PyTorch's (a precomputed per-channel scale and offset, v * s + o, differs
 * from it in the last bit for 521 of the 768 channel/value pairs). The loop vectorises (the
 * stride-3 loads become shuffles, the divisions vdivps) and is bound by the memory writes: on
 * our 2-core AMD EPYC (AVX-512) it runs as fast as the multiply-add form, ~0.5 ms for an
 * 800x1067 image padded to 1000x1250, and the loader's collate time fell from 5.0 to 3.4 ms per
 * batch of 8 against the 256-entry table lookups it replaced. (Non-temporal stores were no
 * faster.) */
static void normalise_row(const uint8_t *restrict src, float *restrict r, float *restrict g,
                          float *restrict b, int w) {
    const float m0 = kMean[0], m1 = kMean[1], m2 = kMean[2];
    const float s0 = kStd[0], s1 = kStd[1], s2 = kStd[2];
    for (int x = 0; x < w; x++) {
        r[x] = ((float)src[3 * x] / 255.0f - m0) / s0;
        g[x] = ((float)src[3 * x + 1] / 255.0f - m1) / s1;
        b[x] = ((float)src[3 * x + 2] / 255.0f - m2) / s2;
    }
}

/* One row of w pixels, HWC uint8 -> three CHW uint8 rows (GPU preprocessing: no normalising). */
static void split_row(const uint8_t *restrict src, uint8_t *restrict r, uint8_t *restrict g,
                      uint8_t *restrict b, int w) {
    for (int x = 0; x < w; x++) {
        r[x] = src[3 * x];
        g[x] = src[3 * x + 1];
        b[x] = src[3 * x + 2];
    }
}

/* Image i of the batch -> its [3, H, W] pixels, zeros right of and below the image, and its
 * [H, W] mask rows (0 on the image, 1 on padding): every byte of image i's part of the slot is
 * written, so the slot needs no clearing between batches. */
static void collate_pixels(const Image *im, LoaderBatch *o, int i) {
    size_t plane = (size_t)o->H * (size_t)o->W;
    int h = im->h, w = im->w, W = o->W;
    size_t pad_x = (size_t)(W - w), below = (size_t)(o->H - h) * (size_t)W;
    uint8_t *m = o->mask + (size_t)i * plane; /* [H, W], 1 = padding */
    if (o->images_u8) {
        uint8_t *dst = o->images_u8 + (size_t)i * 3 * plane; /* [3, H, W] */
        for (int y = 0; y < h; y++) {
            uint8_t *r0 = dst + (size_t)y * W, *r1 = r0 + plane, *r2 = r1 + plane;
            split_row(im->rgb + (size_t)y * w * 3, r0, r1, r2, w);
            memset(r0 + w, 0, pad_x);
            memset(r1 + w, 0, pad_x);
            memset(r2 + w, 0, pad_x);
        }
        for (int c = 0; c < 3; c++) memset(dst + c * plane + (size_t)h * W, 0, below);
    } else {
        float *dst = o->images + (size_t)i * 3 * plane; /* [3, H, W] */
        for (int y = 0; y < h; y++) {
            float *r0 = dst + (size_t)y * W, *r1 = r0 + plane, *r2 = r1 + plane;
            normalise_row(im->rgb + (size_t)y * w * 3, r0, r1, r2, w);
            memset(r0 + w, 0, pad_x * sizeof(float));
            memset(r1 + w, 0, pad_x * sizeof(float));
            memset(r2 + w, 0, pad_x * sizeof(float));
        }
        for (int c = 0; c < 3; c++)
            memset(dst + c * plane + (size_t)h * W, 0, below * sizeof(float));
    }
    for (int y = 0; y < h; y++) {
        memset(m + (size_t)y * W, 0, (size_t)w);
        memset(m + (size_t)y * W + w, 1, pad_x);
    }
    memset(m + (size_t)h * W, 1, below);
}

/* Boxes xyxy pixels -> cxcywh normalised by the unpadded size, in the reference's float order. */
static void collate_targets(const Loader *l, const Job *j, LoaderBatch *o, int i) {
    float w = (float)j->out.w, h = (float)j->out.h;
    o->n_boxes[i] = j->n_boxes;
    for (int k = 0; k < j->n_boxes; k++) {
        const float *b = j->xyxy + 4 * k;
        float *d = o->boxes[i] + 4 * k;
        d[0] = ((b[0] + b[2]) / 2) / w;
        d[1] = ((b[1] + b[3]) / 2) / h;
        d[2] = (b[2] - b[0]) / w;
        d[3] = (b[3] - b[1]) / h;
        o->labels[i][k] = j->labels[k];
    }
    o->img_w[i] = j->out.w;
    o->img_h[i] = j->out.h;
    o->orig_w[i] = j->orig_w;
    o->orig_h[i] = j->orig_h;
    o->image_ids[i] = l->ds->images[j->ds_index].id;
}

/* Image i of a complete batch into the slot the loop thread laid out (start_collates_locked):
 * writes only image i's pixels, mask and per-image arrays, so the batch's items run in parallel. */
static void collate_work(uv_work_t *req) {
    Job *j = CONTAINER_OF(req, Job, collate_req);
    Build *b = j->build;
    LoaderBatch *o = &b->slot->batch;
    int i = (int)(j - b->jobs);
    double t0 = timer_now();
    collate_pixels(&j->out, o, i);
    collate_targets(j->l, j, o, i);
    j->collate_s = timer_now() - t0;
    if (j->l->cfg.on_work) j->l->cfg.on_work(j->l->cfg.work_ctx, LOADER_WORK_COLLATE, j->collate_s);
}

/* ---- loop thread: scheduling ---- */

static void sample_done(uv_work_t *req, int status);
static void collate_done(uv_work_t *req, int status);

static int build_is_stale(const Loader *l, const Build *b) {
    return b->gen != l->gen || l->stop || (l->fatal && b->batch >= l->fatal_batch);
}

static void queue_job_locked(Loader *l, Build *b, Job *j) {
    j->ds_index = l->order[(j->place + j->attempt) % l->shard_len];
    j->seed = sampler_sample_seed(l->cfg.seed, b->epoch, j->ds_index, j->attempt);
    j->state = JOB_QUEUED;
    b->n_pending++;
    l->n_reqs++;
    uv_queue_work(&l->loop, &j->req, sample_work, sample_done);
}

static void queue_collate_locked(Loader *l, Build *b, Job *j) {
    j->state = JOB_COLLATING;
    j->collate_s = 0;
    b->n_pending++;
    l->n_reqs++;
    uv_queue_work(&l->loop, &j->collate_req, collate_work, collate_done);
}

/* Cancels the build's items still queued (running ones finish; their after-work callbacks,
 * with UV_ECANCELED for the cancelled, bring n_pending down). */
static void cancel_build_locked(Build *b) {
    for (int i = 0; i < b->l->cfg.batch; i++) {
        Job *j = &b->jobs[i];
        if (j->state == JOB_QUEUED) uv_cancel((uv_req_t *)&j->req);
        if (j->state == JOB_COLLATING) uv_cancel((uv_req_t *)&j->collate_req);
    }
}

/* A stale build with nothing in flight is free again, and so is the slot it was collating into
 * (a build's last collate item normally does this in collate_done). */
static void retire_if_stale_locked(Loader *l, Build *b) {
    if (b->state == BUILD_FREE || b->n_pending != 0 || !build_is_stale(l, b)) return;
    if (b->slot) b->slot->state = SLOT_FREE;
    b->slot = NULL;
    b->state = BUILD_FREE;
}

static void begin_generation_locked(Loader *l) {
    l->loop_gen = l->gen;
    l->next_produce = l->next_collate = l->start_batch;
    for (int i = 0; i < l->cfg.prefetch; i++) {
        Build *b = &l->builds[i];
        if (b->state == BUILD_FREE) continue;
        cancel_build_locked(b);
        retire_if_stale_locked(l, b);
    }
}

static void start_builds_locked(Loader *l) {
    int B = l->cfg.batch;
    for (int i = 0; i < l->cfg.prefetch && l->next_produce < l->batches_per_epoch; i++) {
        Build *b = &l->builds[i];
        if (b->state != BUILD_FREE) continue;
        int64_t k = l->next_produce++;
        int64_t left = l->shard_len - k * B;
        b->state = BUILD_FILLING;
        b->gen = l->gen;
        b->epoch = l->epoch;
        b->batch = k;
        b->nb = left < B ? (int)left : B;
        b->n_ok = 0;
        memset(&b->stats, 0, sizeof b->stats);
        for (int j = 0; j < b->nb; j++) {
            b->jobs[j].place = k * B + j;
            b->jobs[j].attempt = 0;
            queue_job_locked(l, b, &b->jobs[j]);
        }
    }
}

/* Grows a slot's block to hold `need` bytes: straight to the worst case of the transform
 * (max_size x max_size images) the first time, so memory stays flat over a run; beyond it only
 * for a batch larger still (extreme aspect ratios round a side up past max_size). */
static int grow_slot_locked(Loader *l, Slot *s, size_t need) {
    size_t cap = round_up(need > l->slot_worst ? need : l->slot_worst, (size_t)1 << 16);
    slot_free(l, s->block, s->block_cap);
    s->block = NULL;
    s->block_cap = 0;
    s->block = slot_alloc(l, cap);
    if (!s->block) return -1;
    s->block_cap = cap;
    /* Touch every page now, so resident memory stays flat afterwards. (The collate items write
     * every byte of a batch, padding included; they do not rely on this.) */
    memset(s->block, 0, cap);
    return 0;
}

static Slot *find_slot_locked(Loader *l, SlotState st) {
    for (int i = 0; i < l->cfg.prefetch; i++)
        if (l->slots[i].state == st) return &l->slots[i];
    return NULL;
}

static Build *build_to_collate_locked(Loader *l) {
    for (int i = 0; i < l->cfg.prefetch; i++) {
        Build *b = &l->builds[i];
        if (b->state == BUILD_COMPLETE && !build_is_stale(l, b) && b->batch == l->next_collate)
            return b;
    }
    return NULL;
}

/* The slot's layout for a batch of nb images padded to H x W: the consumer's view and where
 * each collate item writes. */
static void lay_out_slot(const Loader *l, Slot *s, int nb, int H, int W) {
    LoaderBatch *o = &s->batch;
    o->B = nb;
    o->H = H;
    o->W = W;
    o->images = l->cfg.uint8_output ? NULL : (float *)s->block;
    o->images_u8 = l->cfg.uint8_output ? s->block : NULL;
    o->mask = s->block + pixel_bytes(l, nb, H, W);
}

/* Gives the next complete batch(es), in batch order, a free slot: lays the slot out (padded size
 * = the batch's largest H and W), then queues one collate item per image. */
static void start_collates_locked(Loader *l) {
    for (;;) {
        Build *b = build_to_collate_locked(l);
        Slot *s = b ? find_slot_locked(l, SLOT_FREE) : NULL;
        if (!s) return;
        int H = 0, W = 0;
        double content = 0;
        for (int i = 0; i < b->nb; i++) {
            const Image *im = &b->jobs[i].out;
            if (im->h > H) H = im->h;
            if (im->w > W) W = im->w;
            content += (double)im->h * im->w;
        }
        size_t need = block_bytes(l, b->nb, H, W);
        if (need > s->block_cap && grow_slot_locked(l, s, need) != 0) {
            set_fatal_locked(l, b->batch,
                             "out of memory: cannot allocate %zu bytes for a batch slot of %d "
                             "images of %dx%d (lower --batch or the image size)",
                             need, b->nb, W, H);
            return;
        }
        lay_out_slot(l, s, b->nb, H, W);
        b->stats.padded_fraction = 1.0 - content / ((double)b->nb * H * W);
        s->state = SLOT_COLLATING;
        s->gen = b->gen;
        b->slot = s;
        b->state = BUILD_COLLATING;
        l->next_collate++;
        for (int i = 0; i < b->nb; i++) queue_collate_locked(l, b, &b->jobs[i]);
    }
}

static void cancel_all_locked(Loader *l) {
    for (int i = 0; i < l->cfg.prefetch; i++)
        if (l->builds[i].state != BUILD_FREE) cancel_build_locked(&l->builds[i]);
}

/* Decides everything the loop thread does next; called after every event. */
static void pump_locked(Loader *l) {
    if (l->closing) return;
    if (l->stop) {
        cancel_all_locked(l);
        if (l->n_reqs == 0) {
            l->async_open = 0; /* no uv_async_send from now on (see the file comment) */
            l->closing = 1;
            uv_close((uv_handle_t *)&l->wake, NULL);
        }
        return;
    }
    if (l->gen != l->loop_gen) begin_generation_locked(l);
    if (!l->started) return;
    for (int i = 0; i < l->cfg.prefetch; i++) retire_if_stale_locked(l, &l->builds[i]);
    if (!l->fatal) start_builds_locked(l); /* builds before the fatal batch finish */
    start_collates_locked(l);
}

static void add_sample_stats(LoaderStats *s, const Job *j) {
    s->read_s += j->read_s;
    s->decode_s += j->decode_s;
    s->augment_s += j->augment_s;
    s->bytes_read += j->bytes;
    s->dropped_boxes += j->dropped_boxes;
}

/* A bad sample: one warning line, then the next sample of the shard order takes its place. */
static void replace_bad_sample_locked(Loader *l, Build *b, Job *j) {
    b->stats.skipped++;
    if (l->cfg.strict) {
        set_fatal_locked(l, b->batch, "bad sample (strict mode): %s", j->err);
        return;
    }
    warn_line(&l->cfg, "warning: loader: skipping sample: %s", j->err);
    if (j->attempt + 1 >= LOADER_MAX_ATTEMPTS || j->attempt + 1 >= l->shard_len) {
        set_fatal_locked(l, b->batch,
                         "%d consecutive samples failed to load (last: %s); check the dataset "
                         "with `detr-data check`",
                         j->attempt + 1, j->err);
        return;
    }
    j->attempt++;
    queue_job_locked(l, b, j);
}

static void sample_done(uv_work_t *req, int status) {
    Job *j = CONTAINER_OF(req, Job, req);
    Loader *l = j->l;
    Build *b = j->build;
    pthread_mutex_lock(&l->mu);
    j->state = JOB_IDLE;
    b->n_pending--;
    l->n_reqs--;
    if (status != 0 && !build_is_stale(l, b)) {
        queue_job_locked(l, b, j); /* not expected (only stale work is cancelled): retry */
    } else if (status == 0 && !build_is_stale(l, b)) {
        add_sample_stats(&b->stats, j);
        if (j->ok) {
            j->state = JOB_DONE;
            if (++b->n_ok == b->nb) b->state = BUILD_COMPLETE;
        } else {
            replace_bad_sample_locked(l, b, j);
        }
    }
    retire_if_stale_locked(l, b);
    pump_locked(l);
    pthread_mutex_unlock(&l->mu);
}

/* The build's last collate item is back: the slot is the consumer's now, or free again when the
 * batch went stale (restart, shutdown, a fatal error at an earlier batch) meanwhile. */
static void finish_collate_locked(Loader *l, Build *b) {
    Slot *s = b->slot;
    b->slot = NULL;
    if (!build_is_stale(l, b)) {
        s->batch.epoch = b->epoch;
        s->batch.index = b->batch;
        s->batch.stats = b->stats;
        s->state = SLOT_READY;
        pthread_cond_broadcast(&l->cv);
    } else {
        s->state = SLOT_FREE;
    }
    b->state = BUILD_FREE;
}

static void collate_done(uv_work_t *req, int status) {
    Job *j = CONTAINER_OF(req, Job, collate_req);
    Loader *l = j->l;
    Build *b = j->build;
    pthread_mutex_lock(&l->mu);
    j->state = JOB_DONE;
    b->n_pending--;
    l->n_reqs--;
    if (status != 0 && !build_is_stale(l, b)) {
        queue_collate_locked(l, b, j); /* not expected (only stale work is cancelled): retry */
    } else {
        if (status == 0) b->stats.collate_s += j->collate_s;
        if (b->n_pending == 0) finish_collate_locked(l, b);
    }
    pump_locked(l);
    pthread_mutex_unlock(&l->mu);
}

static void wake_cb(uv_async_t *h) {
    Loader *l = h->data;
    pthread_mutex_lock(&l->mu);
    pump_locked(l);
    pthread_mutex_unlock(&l->mu);
}

static void *loop_main(void *arg) {
    Loader *l = arg;
    uv_run(&l->loop, UV_RUN_DEFAULT); /* returns once the wake handle is closed and idle */
    int rc = uv_loop_close(&l->loop);
    if (rc != 0) fprintf(stderr, "warning: loader: uv_loop_close: %s\n", uv_strerror(rc));
    return NULL;
}

/* ---- creation and destruction ---- */

static int validate_config(const Dataset *ds, const LoaderConfig *c, char *err, size_t errlen) {
    if (!ds || ds->n_images <= 0) {
        set_err(err, errlen, "loader: the dataset has no images");
        return -1;
    }
#define REQUIRE(cond, ...)                     \
    do {                                       \
        if (!(cond)) {                         \
            set_err(err, errlen, __VA_ARGS__); \
            return -1;                         \
        }                                      \
    } while (0)
    REQUIRE(c->batch >= 1, "loader: batch is %d; it must be at least 1 (--batch)", c->batch);
    REQUIRE(c->workers >= 1 && c->workers <= LOADER_MAX_WORKERS,
            "loader: workers is %d; it must be in 1..%d (--workers)", c->workers,
            LOADER_MAX_WORKERS);
    REQUIRE(c->prefetch >= 1 && c->prefetch <= LOADER_MAX_PREFETCH,
            "loader: prefetch is %d; it must be in 1..%d (--prefetch)", c->prefetch,
            LOADER_MAX_PREFETCH);
    REQUIRE(
        c->world >= 1 && c->rank >= 0 && c->rank < c->world,
        "loader: rank %d / world %d: world must be >= 1 and rank in 0..world-1 (--rank, --world)",
        c->rank, c->world);
    REQUIRE(c->max_boxes >= 1, "loader: max_boxes is %d; it must be at least 1", c->max_boxes);
    REQUIRE(c->max_pixels >= 0, "loader: max_pixels is negative (--max-pixels; 0 = no limit)");
    REQUIRE(!c->group_by_aspect || c->aspect_window >= 1,
            "loader: aspect_window is %d; it must be at least 1 with group_by_aspect",
            c->aspect_window);
    REQUIRE(!c->alloc_host == !c->free_host,
            "loader: alloc_host and free_host must be set together");
    REQUIRE(ds->images && ds->names, "loader: the dataset is not open");
#undef REQUIRE
    return 0;
}

static int alloc_slots(Loader *l) {
    int B = l->cfg.batch, mb = l->slot_boxes;
    /* Per-image arrays of a slot, in one block: pointers first so alignment holds. */
    size_t bytes = (size_t)B * (2 * sizeof(void *) + sizeof(int64_t) + 5 * sizeof(int)) +
        (size_t)B * mb * (4 * sizeof(float) + sizeof(int));
    for (int i = 0; i < l->cfg.prefetch; i++) {
        Slot *s = &l->slots[i];
        char *p = host_alloc(MEM_INPUTS, bytes);
        if (!p) return -1;
        s->meta = p;
        LoaderBatch *o = &s->batch;
        o->labels = (int **)p; /* [B] */
        p += (size_t)B * sizeof(int *);
        o->boxes = (float **)p; /* [B] */
        p += (size_t)B * sizeof(float *);
        o->image_ids = (int64_t *)p; /* [B] */
        p += (size_t)B * sizeof(int64_t);
        float *boxes = (float *)p; /* [B, slot_boxes, 4] */
        p += (size_t)B * mb * 4 * sizeof(float);
        o->n_boxes = (int *)p;       /* [B] */
        o->img_h = o->n_boxes + B;   /* [B] */
        o->img_w = o->img_h + B;     /* [B] */
        o->orig_h = o->img_w + B;    /* [B] */
        o->orig_w = o->orig_h + B;   /* [B] */
        int *labels = o->orig_w + B; /* [B, slot_boxes] */
        for (int b = 0; b < B; b++) {
            o->boxes[b] = boxes + (size_t)b * mb * 4;
            o->labels[b] = labels + (size_t)b * mb;
        }
    }
    return 0;
}

static int alloc_builds(Loader *l) {
    int B = l->cfg.batch;
    for (int i = 0; i < l->cfg.prefetch; i++) {
        Build *b = &l->builds[i];
        b->l = l;
        b->jobs = calloc((size_t)B, sizeof *b->jobs);
        if (!b->jobs) return -1;
        for (int j = 0; j < B; j++) {
            Job *job = &b->jobs[j];
            job->l = l;
            job->build = b;
            job->xyxy = malloc((size_t)l->box_cap * 4 * sizeof(float));
            job->labels = malloc((size_t)l->box_cap * sizeof(int));
            if (!job->xyxy || !job->labels) return -1;
        }
    }
    return 0;
}

static void free_all(Loader *l) {
    if (l->builds) {
        for (int i = 0; i < l->cfg.prefetch; i++) {
            Build *b = &l->builds[i];
            if (!b->jobs) continue;
            for (int j = 0; j < l->cfg.batch; j++) {
                image_free(&b->jobs[j].out);
                free(b->jobs[j].xyxy);
                free(b->jobs[j].labels);
            }
            free(b->jobs);
        }
        free(l->builds);
    }
    if (l->slots) {
        for (int i = 0; i < l->cfg.prefetch; i++) {
            slot_free(l, l->slots[i].block, l->slots[i].block_cap);
            host_free(l->slots[i].meta);
        }
        free(l->slots);
    }
    ctx_destroy_all(l);
    free(l->order);
    free(l->aspect);
    pthread_mutex_destroy(&l->ctx_mu);
    pthread_cond_destroy(&l->cv);
    pthread_mutex_destroy(&l->mu);
    free(l);
}

static int init_sync(Loader *l) {
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    int rc = pthread_cond_init(&l->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&l->mu, NULL);
    pthread_mutex_init(&l->ctx_mu, NULL);
    return rc;
}

static int init_sampler(Loader *l, char *err, size_t errlen) {
    const Dataset *ds = l->ds;
    const LoaderConfig *c = &l->cfg;
    if (c->group_by_aspect) {
        l->aspect = malloc((size_t)ds->n_images * sizeof *l->aspect);
        if (!l->aspect) return -1;
        for (int64_t i = 0; i < ds->n_images; i++) {
            const DsImage *im = &ds->images[i];
            l->aspect[i] = im->width > 0 && im->height > 0 ? (float)im->width / im->height : 1.0f;
        }
    }
    l->sampler = (SamplerConfig){.n = ds->n_images,
                                 .batch = c->batch,
                                 .rank = c->rank,
                                 .world = c->world,
                                 .shuffle = c->shuffle,
                                 .drop_last = c->drop_last,
                                 .group_by_aspect = c->group_by_aspect,
                                 .aspect_window = c->aspect_window,
                                 .seed = c->seed,
                                 .aspect = l->aspect};
    l->shard_len = sampler_shard_len(&l->sampler);
    l->batches_per_epoch = sampler_batches_per_epoch(&l->sampler);
    if (l->batches_per_epoch <= 0) {
        set_err(
            err, errlen,
            "loader: rank %d gets %lld of the %lld images (world %d), less than one batch of %d "
            "with drop_last: lower --batch or --world",
            c->rank, (long long)l->shard_len, (long long)ds->n_images, c->world, c->batch);
        return -1;
    }
    int64_t max_ann = 1;
    for (int64_t i = 0; i < ds->n_images; i++)
        if ((int64_t)ds->images[i].n_ann > max_ann) max_ann = ds->images[i].n_ann;
    l->box_cap = max_ann > INT_MAX / 16 ? INT_MAX / 16 : (int)max_ann;
    l->slot_boxes = c->max_boxes < l->box_cap ? c->max_boxes : l->box_cap;
    /* The reference resize keeps the long side within max_size (+1 from rounding up to an
     * aspect ratio of 2), and the short side within it too. */
    int side = c->tf.max_size > 0 ? c->tf.max_size + 1 : 0;
    l->slot_worst = side ? block_bytes(l, c->batch, side, side) : 0;
    return 0;
}

Loader *loader_create(const Dataset *ds, const LoaderConfig *cfg, char *err, size_t errlen) {
    if (validate_config(ds, cfg, err, errlen) != 0) return NULL;
    Loader *l = calloc(1, sizeof *l);
    if (!l) {
        set_err(err, errlen, "loader: out of memory");
        return NULL;
    }
    l->ds = ds;
    l->cfg = *cfg;
    if (init_sync(l) != 0) {
        set_err(err, errlen, "loader: cannot initialise a condition variable");
        free(l);
        return NULL;
    }
    l->slots = calloc((size_t)cfg->prefetch, sizeof *l->slots);
    l->builds = calloc((size_t)cfg->prefetch, sizeof *l->builds);
    int rc = init_sampler(l, err, errlen);
    if (rc == 0 && (!l->slots || !l->builds || alloc_slots(l) != 0 || alloc_builds(l) != 0)) {
        set_err(err, errlen, "loader: out of memory allocating %d batch slots of %d images",
                cfg->prefetch, cfg->batch);
        rc = -1;
    }
    if (rc != 0) {
        free_all(l);
        return NULL;
    }

    set_pool_size(cfg);
    rc = uv_loop_init(&l->loop);
    if (rc == 0) {
        l->loop_ready = 1;
        rc = uv_async_init(&l->loop, &l->wake, wake_cb);
        if (rc != 0) {
            uv_loop_close(&l->loop);
            l->loop_ready = 0;
        }
    }
    if (rc != 0) {
        set_err(err, errlen, "loader: libuv initialisation failed: %s", uv_strerror(rc));
        free_all(l);
        return NULL;
    }
    l->wake.data = l;
    l->async_open = 1;
    if (pthread_create(&l->thread, NULL, loop_main, l) != 0) {
        set_err(err, errlen, "loader: cannot start the loop thread: %s", strerror(errno));
        uv_close((uv_handle_t *)&l->wake, NULL);
        uv_run(&l->loop, UV_RUN_DEFAULT);
        uv_loop_close(&l->loop);
        free_all(l);
        return NULL;
    }
    l->thread_started = 1;
    return l;
}

void loader_destroy(Loader *l) {
    if (!l) return;
    if (l->thread_started) {
        pthread_mutex_lock(&l->mu);
        l->stop = 1;
        wake_loop_locked(l);
        pthread_cond_broadcast(&l->cv);
        pthread_mutex_unlock(&l->mu);
        pthread_join(l->thread, NULL); /* the loop exits once every work item came back */
    }
    free_all(l);
}

/* ---- consumer API ---- */

int64_t loader_batches_per_epoch(const Loader *l) { return l->batches_per_epoch; }

int loader_start_epoch(Loader *l, int epoch, int64_t start_batch) {
    if (start_batch < 0 || start_batch > l->batches_per_epoch) {
        fprintf(stderr,
                "error: loader: resume position %lld is outside 0..%lld batches of the epoch\n",
                (long long)start_batch, (long long)l->batches_per_epoch);
        return -1;
    }
    int64_t *order = malloc((size_t)l->shard_len * sizeof *order);
    if (!order || sampler_epoch_order(&l->sampler, epoch, order) != 0) {
        fprintf(stderr, "error: loader: out of memory computing the order of epoch %d\n", epoch);
        free(order);
        return -1;
    }
    pthread_mutex_lock(&l->mu);
    if (l->stop) {
        pthread_mutex_unlock(&l->mu);
        free(order);
        return -1;
    }
    int64_t *old = l->order;
    l->order = order;
    l->gen++;
    l->epoch = epoch;
    l->start_batch = start_batch;
    l->next_consume = start_batch;
    l->started = 1;
    l->fatal = 0;
    l->fatal_batch = 0;
    l->fatal_msg[0] = 0;
    for (int i = 0; i < l->cfg.prefetch; i++) /* batches of the previous epoch nobody will take */
        if (l->slots[i].state == SLOT_READY) l->slots[i].state = SLOT_FREE;
    wake_loop_locked(l);
    pthread_mutex_unlock(&l->mu);
    free(old);
    return 0;
}

static Slot *ready_slot_locked(Loader *l) {
    for (int i = 0; i < l->cfg.prefetch; i++) {
        Slot *s = &l->slots[i];
        if (s->state == SLOT_READY && s->gen == l->gen && s->batch.index == l->next_consume)
            return s;
    }
    return NULL;
}

static int count_ready_locked(const Loader *l) {
    int n = 0;
    for (int i = 0; i < l->cfg.prefetch; i++)
        n += l->slots[i].state == SLOT_READY && l->slots[i].gen == l->gen;
    return n;
}

int loader_queue_depth(Loader *l) {
    pthread_mutex_lock(&l->mu);
    int n = count_ready_locked(l);
    pthread_mutex_unlock(&l->mu);
    return n;
}

static int all_slots_held_locked(const Loader *l) {
    for (int i = 0; i < l->cfg.prefetch; i++)
        if (l->slots[i].state != SLOT_HELD) return 0;
    return 1;
}

/* What the consumer can have right now (l->mu held): -1 fatal / stopped / not started (err set),
 * 0 end of the epoch, 1 a ready batch (*s), 2 none ready yet, 3 every slot held by the
 * consumer. */
static int next_state_locked(Loader *l, Slot **s, char *err, size_t errlen) {
    if (l->fatal && l->next_consume >= l->fatal_batch) {
        set_err(err, errlen, "loader: %s", l->fatal_msg);
        return -1;
    }
    if (l->stop) {
        set_err(err, errlen, "loader: shutting down");
        return -1;
    }
    if (!l->started) {
        set_err(err, errlen, "loader: loader_start_epoch was not called");
        return -1;
    }
    if (l->next_consume >= l->batches_per_epoch) return 0;
    if ((*s = ready_slot_locked(l)) != NULL) return 1;
    return all_slots_held_locked(l) ? 3 : 2;
}

/* Hands the ready slot s to the consumer (l->mu held). */
static void take_locked(Loader *l, Slot *s, double wait_s, int depth, LoaderBatch **out) {
    s->state = SLOT_HELD;
    l->next_consume++;
    s->batch.stats.wait_s = wait_s;
    s->batch.stats.queue_depth = depth;
    *out = &s->batch;
}

int loader_try_next(Loader *l, LoaderBatch **out, char *err, size_t errlen) {
    *out = NULL;
    pthread_mutex_lock(&l->mu);
    Slot *s = NULL;
    int depth = count_ready_locked(l);
    int rc = next_state_locked(l, &s, err, errlen);
    if (rc == 1) take_locked(l, s, 0.0, depth, out);
    pthread_mutex_unlock(&l->mu);
    return rc == 3 ? 2 : rc;
}

int loader_next(Loader *l, LoaderBatch **out, double timeout_s, char *err, size_t errlen) {
    *out = NULL;
    double t0 = timer_now();
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    if (timeout_s > 0) {
        double s = (double)deadline.tv_sec + deadline.tv_nsec * 1e-9 + timeout_s;
        deadline.tv_sec = (time_t)s;
        deadline.tv_nsec = (long)((s - (double)deadline.tv_sec) * 1e9);
    }
    pthread_mutex_lock(&l->mu);
    int depth = count_ready_locked(l);
    Slot *s = NULL;
    int rc = 1;
    for (;;) {
        int state = next_state_locked(l, &s, err, errlen);
        if (state <= 1) {
            rc = state;
        } else if (state == 3) {
            set_err(err, errlen,
                    "loader: all %d prefetch slots are held by the consumer; release a "
                    "batch (loader_release) before asking for the next",
                    l->cfg.prefetch);
            rc = -1;
        } else {
            int w = timeout_s > 0 ? pthread_cond_timedwait(&l->cv, &l->mu, &deadline)
                                  : pthread_cond_wait(&l->cv, &l->mu);
            if (w != ETIMEDOUT) continue;
            if ((s = ready_slot_locked(l)) != NULL) {
                rc = 1;
            } else {
                set_err(err, errlen,
                        "loader: timed out after %.1f s waiting for batch %lld of epoch %d",
                        timeout_s, (long long)l->next_consume, l->epoch);
                rc = -1;
            }
        }
        break;
    }
    if (rc == 1) take_locked(l, s, timer_now() - t0, depth, out);
    pthread_mutex_unlock(&l->mu);
    return rc;
}

void loader_release(Loader *l, LoaderBatch *b) {
    if (!l || !b) return;
    Slot *s = CONTAINER_OF(b, Slot, batch);
    if (s < l->slots || s >= l->slots + l->cfg.prefetch) {
        fprintf(stderr, "error: loader_release: the batch does not belong to this loader\n");
        return;
    }
    pthread_mutex_lock(&l->mu);
    if (s->state == SLOT_HELD) {
        s->state = SLOT_FREE;
        wake_loop_locked(l);
    }
    pthread_mutex_unlock(&l->mu);
}
