/* prof.h - the profiler's public API: per-step records, phase ranges (also NVTX ranges in the
 * domain "detr") and evaluation results, written to a SQLite database by a background thread.
 *
 * Typical use in the training loop (see docs/profile-schema.md for what lands where):
 *
 *     Prof *prof = prof_open("run.sqlite", &info, PROF_BASIC, err, sizeof(err)); // before training
 *     ...
 *     prof_step_begin(prof, step, epoch);           // opens the "step" range
 *     prof_range_push(prof, PROF_PHASE_DATA_WAIT);  loader_next(...);  prof_range_pop(prof);
 *     prof_range_push(prof, PROF_PHASE_BACKBONE);   ...                prof_range_pop(prof);
 *     ...
 *     ProfStepRecord r;
 *     prof_step_record_init(&r);
 *     r.images = B; r.loss = total; prof_step_add_loss(&r, "loss_ce", ce); ...
 *     prof_step_end(prof, &r);                      // closes "step", queues the record
 *     prof_loader(prof, &loader_record);
 *     ...
 *     prof_close(prof, exit_code, err, sizeof(err));
 *
 * Every function except prof_open/prof_close accepts prof == NULL: the ranges then still reach
 * NVTX (so Nsight Systems shows the phases of an unprofiled run) and nothing else happens.
 *
 * Cost and blocking: the recording functions never touch SQLite. They copy the record into a
 * bounded in-memory queue under a mutex (about 4 us for a whole step's calls, see
 * docs/profile-schema.md); a writer thread drains it in transactions (one per flush interval or
 * per quarter-full queue). When the queue is full the record is dropped and counted
 * (DETR_RUNS.dropped_records): the producer never waits.
 *
 * Threads: records and ranges may come from any thread. A range is popped on the thread that
 * pushed it (the range stack is per thread, as NVTX's push/pop). prof_close must not race with
 * other calls on the same Prof.
 *
 * Clock: all timestamps are Unix-epoch nanoseconds from CLOCK_REALTIME (prof_now_ns), the clock
 * CUPTI uses by default on Linux, so CPU ranges and future GPU activity rows share one time axis.
 */
#ifndef DETR_PROF_H
#define DETR_PROF_H
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Version of the database layout written by this build (PRAGMA user_version). */
#define PROF_SCHEMA_VERSION 3

#define PROF_NAME_LEN 32    /* loss, memory category and free-text range names, NUL included */
#define PROF_MAX_LOSSES 48  /* loss terms per step record (6 decoder layers x 5 terms + totals) */
#define PROF_MAX_MEM 16     /* memory categories per step record */

typedef enum {
    PROF_BASIC = 1, /* per-step aggregates, loader/memory/eval records, phase ranges */
    PROF_TRACE = 2  /* basic + every free-text range (prof_range_push_text) kept, and on a GPU
                       the CUPTI activity rows of the traced steps (docs/gpu-profiling.md) */
} ProfLevel;

/* Phases of a training step (and a few outside it). The name (prof_phase_name) is the NVTX range
 * name and StringIds value: "step", "data_wait", "h2d", "backbone", ... */
typedef enum {
    PROF_PHASE_STEP = 0,   /* the whole step; opened by prof_step_begin, closed by prof_step_end */
    PROF_PHASE_DATA_WAIT,  /* blocked waiting for the loader's next batch */
    PROF_PHASE_H2D,        /* host-to-device copy (and GPU normalisation) */
    PROF_PHASE_BACKBONE,   /* ResNet forward (input_proj + positional encoding included) */
    PROF_PHASE_ENCODER,    /* transformer encoder forward */
    PROF_PHASE_DECODER,    /* transformer decoder forward */
    PROF_PHASE_HEADS,      /* class and box heads forward */
    PROF_PHASE_MATCHER,    /* Hungarian matching */
    PROF_PHASE_LOSS,       /* set criterion forward */
    PROF_PHASE_BACKWARD,   /* all backward passes */
    PROF_PHASE_ALLREDUCE,  /* gradient all-reduce (distributed runs) */
    PROF_PHASE_CLIP,       /* gradient-norm clipping */
    PROF_PHASE_OPTIMIZER,  /* AdamW update */
    PROF_PHASE_EVAL,       /* an evaluation pass */
    PROF_PHASE_CHECKPOINT, /* writing a checkpoint */
    PROF_PHASE_LOAD_SAMPLE, /* a loader worker reading, decoding and augmenting one image */
    PROF_PHASE_COLLATE,    /* a loader worker collating one image into its batch slot */
    PROF_PHASE_COUNT
} ProfPhase;

/* Facts about the run, stored once in DETR_RUNS (and the nsys-style TARGET_INFO_* tables).
 * Strings are copied by prof_open; NULL / 0 means "not known" unless noted. */
typedef struct {
    const char *command_line;     /* the argv joined with spaces */
    const char *git_revision;     /* e.g. `git rev-parse HEAD` captured at build time */
    const char *hostname;         /* NULL: gethostname() */
    const char *cpu_model;        /* NULL: "model name" from /proc/cpuinfo */
    int cpu_cores;                /* 0: online processors (sysconf) */
    const char *device;           /* "cpu", "cuda:0", ... */
    const char *gpu;              /* GPU name(s) for GPU runs; NULL on CPU runs */
    const char *library_versions; /* version_print's text: prof_capture_print(version_print) */
    const char *config_json;      /* the full run configuration as a JSON object */
    int64_t start_ns;             /* 0: prof_now_ns() at prof_open */
    double peak_flops;            /* device peak FLOP/s for MFU (CPU: measured sgemm peak) */
} ProfRunInfo;

typedef struct {
    char name[PROF_NAME_LEN]; /* "loss", "loss_ce", "loss_bbox_0", ... */
    double value;
} ProfLoss;

typedef struct {
    char category[PROF_NAME_LEN]; /* "params", "grads", "optim", "acts", "workspace", ... */
    int64_t current_bytes, peak_bytes;
} ProfMemSample;

/* One optimizer step. prof_step_record_init sets every field to "unknown" (NaN / -1 / 0);
 * fields left unknown are stored as NULL. */
typedef struct {
    int64_t step;           /* -1: the step given to prof_step_begin */
    int epoch;              /* -1: the epoch given to prof_step_begin */
    int64_t start_ns;       /* 0: start of the "step" range (prof_step_begin) */
    int64_t end_ns;         /* 0: end of the "step" range (prof_step_end) */
    int64_t data_wait_ns;   /* -1: unknown */
    int64_t h2d_ns;         /* -1: unknown (0 on the CPU backend) */
    int images;             /* images in the (effective) batch, 0: unknown */
    double loss;            /* total weighted loss (NaN: unknown) */
    double lr, lr_backbone; /* learning rates used by this step */
    double grad_norm;       /* total gradient norm before clipping */
    double flops;           /* model FLOPs of this step (forward + backward, see docs) */
    double padded_fraction; /* padded pixels / all pixels of the batch */
    double loss_scale;      /* fp16 loss scale this step's backward used (NaN: no loss scaling) */
    int skipped;            /* 1: the optimizer update was skipped (inf/NaN gradients under fp16
                               loss scaling; GradScaler's rule) */
    double gpu_util;        /* NVML: % of the last sample period a kernel ran (NaN: unknown) */
    double gpu_mem_util;    /* NVML: % of it device memory was read or written (NaN: unknown) */
    int64_t gpu_alloc_retries; /* caching allocator, so far in the run: cudaMalloc failures after
                                  which the cache was released and the request retried (-1: no GPU) */
    int64_t gpu_ooms;       /* ... requests refused (device full or over --mem-limit) (-1: no GPU) */
    int n_losses;           /* every loss term: DETR_STEPS.losses_json, one row each in the
                               DETR_LOSSES view */
    ProfLoss losses[PROF_MAX_LOSSES];
    int n_mem;              /* memory categories: DETR_MEMORY rows; prof_step_end appends
                               "process_rss", so leave one entry free */
    ProfMemSample mem[PROF_MAX_MEM];
    int64_t rss_bytes;      /* process resident set; -1: read /proc/self/statm at prof_step_end */
} ProfStepRecord;

/* The data loader's statistics for one batch (dataloader's LoaderStats in nanoseconds).
 * read/decode/augment/collate are sums over the batch's samples (worker time, not wall time). */
typedef struct {
    int64_t step;           /* -1: the current step (prof_step_begin) */
    int64_t wait_ns, read_ns, decode_ns, augment_ns, collate_ns;
    int64_t bytes_read;
    int queue_depth;        /* ready batches when the consumer asked (0: it had to wait) */
    double padded_fraction;
    int skipped;            /* bad samples skipped */
    int dropped_boxes;      /* invalid or over-limit boxes dropped */
} ProfLoaderRecord;

typedef struct {
    int64_t category_id;
    double ap;              /* AP@[.5:.95] of this category, -1 when it has no ground truth */
} ProfCategoryAP;

/* One COCO evaluation. stats[] in COCOeval's order: AP, AP50, AP75, AP_small, AP_medium,
 * AP_large, AR1, AR10, AR100, AR_small, AR_medium, AR_large (-1 = undefined, as COCOeval). */
typedef struct {
    int64_t step;           /* -1: the current step */
    int epoch;              /* -1: the current epoch */
    int64_t duration_ns;    /* -1: unknown */
    int64_t images;         /* images evaluated, -1: unknown */
    double stats[12];
    int n_categories;
    const ProfCategoryAP *per_category; /* [n_categories], copied by prof_eval */
} ProfEvalRecord;

/* One GPU, written to TARGET_INFO_GPU (created on the first call; absent on CPU runs). */
typedef struct {
    int id;                 /* CUDA device ordinal */
    char name[128], bus_location[64], uuid[64], chip_name[64];
    int64_t total_memory;   /* bytes */
    int64_t memory_bandwidth; /* bytes/s */
    int64_t clock_rate;     /* SM clock, Hz */
    int64_t l2_cache_size;  /* bytes */
    int sm_count, compute_major, compute_minor;
    int max_threads_per_block, max_warps_per_sm, max_blocks_per_sm;
    int max_registers_per_sm, max_registers_per_block;
    int64_t max_shmem_per_sm, max_shmem_per_block, max_shmem_per_block_optin; /* bytes */
    int threads_per_warp, async_engines, is_discrete;
} ProfGpuInfo;

/* Tuning knobs; prof_open uses prof_options_default's values. */
typedef struct {
    ProfLevel level;
    int queue_capacity;     /* records the queue holds, default 4096 (~100 B a slot; a step
                               record's ~3 KB copy is allocated while it waits) */
    int flush_interval_ms;  /* longest a record waits before its transaction, default 100 */
    int busy_timeout_ms;    /* how long a write waits for another connection's lock, default 5000 */
    int64_t gpu_queue_bytes; /* most heap queued GPU activity batches may hold, default 256 MiB;
                               a batch beyond it is dropped and counted */
} ProfOptions;

/* Counters, readable at any time. */
typedef struct {
    int64_t enqueued;       /* records accepted into the queue */
    int64_t written;        /* records committed to the database */
    int64_t dropped;        /* records refused because the queue was full */
    int64_t dropped_steps;  /* ... of which step records */
    int64_t dropped_ranges; /* ... of which ranges */
    int64_t write_failed;   /* records lost in a failed transaction (disk full, lock timeout) */
    int64_t range_errors;   /* pops without a push, stack overflow, mismatched prof */
    int64_t writer_cpu_ns;  /* CPU time the writer thread spent writing (its share of overhead) */
    int64_t dropped_gpu;    /* GPU activity records lost: their batch was refused (queue full or
                               over gpu_queue_bytes; each such batch also counts 1 in dropped) */
    int64_t cupti_dropped;  /* GPU activity records lost before the profiler saw them (CUPTI's
                               own count, buffers discarded over the buffer cap; prof_gpu_lost) */
} ProfCounters;

typedef struct Prof Prof;

void prof_options_default(ProfOptions *o, ProfLevel level);

/* Opens (or creates) the database, checks or creates the schema (refusing a database written
 * by a newer schema, or one that is not a detr profile), inserts the run row and starts the
 * writer thread. Any problem that would make the profile unwritable (folder missing or not
 * writable, read-only file, no WAL support) is reported here, before training starts.
 * Returns NULL with a complete message in err on failure. */
Prof *prof_open(const char *db_path, const ProfRunInfo *info, ProfLevel level, char *err,
                size_t errlen);
Prof *prof_open_opts(const char *db_path, const ProfRunInfo *info, const ProfOptions *opt,
                     char *err, size_t errlen);

/* Flushes every queued record, stores the end time, the status (exit_code 0 "ok", 130/143
 * "interrupted", other "failed") and the counters in DETR_RUNS, and closes the database.
 * Returns 0, or -1 with err when records were lost to write errors or the close failed.
 * The Prof is freed in both cases. prof == NULL returns 0. */
int prof_close(Prof *prof, int exit_code, char *err, size_t errlen);

int64_t prof_run_id(const Prof *prof);     /* DETR_RUNS.run_id, -1 for NULL */
ProfLevel prof_level(const Prof *prof);
ProfCounters prof_counters(Prof *prof);

/* Unix-epoch nanoseconds, CLOCK_REALTIME. */
int64_t prof_now_ns(void);
const char *prof_phase_name(ProfPhase phase);

/* Ranges. push/pop nest per thread; every pop records one range (DETR_PHASES + NVTX_EVENTS row,
 * eventType 59, domain "detr") and emits the matching NVTX pop. */
void prof_range_push(Prof *prof, ProfPhase phase);
/* A free-text range (e.g. one layer); recorded only at PROF_TRACE (always sent to NVTX).
 * The name is copied (truncated to PROF_NAME_LEN - 1 bytes). */
void prof_range_push_text(Prof *prof, const char *name);
void prof_range_pop(Prof *prof);

/* Phase hooks: called on the pushing thread for every recorded phase range (ProfPhase, not free
 * text) of a non-NULL Prof: push when it opens (with the current step), pop when it closes.
 * prof_cupti.c uses them to push the phase as a CUPTI external correlation id, so that every
 * kernel is attributed to the phase that launched it. NULL removes them. Set them before the
 * ranges they should see, and clear them only between ranges. */
typedef struct {
    void (*push)(int64_t step, int phase);
    void (*pop)(void);
} ProfPhaseHooks;
void prof_set_phase_hooks(const ProfPhaseHooks *hooks);
/* A range measured elsewhere (explicit times, prof_now_ns clock); recorded, not sent to NVTX. */
void prof_range_record(Prof *prof, ProfPhase phase, int64_t start_ns, int64_t end_ns);

/* Steps. prof_step_begin sets the step/epoch later ranges and records belong to and pushes the
 * "step" range; prof_step_end pops it and queues the record (copied). */
/* Names the calling thread in ThreadNames (nsys's table: the name a timeline shows for its
 * globalTid), e.g. "loader worker", and through NVTX (nvtxNameOsThreadA) for Nsight Systems;
 * prof == NULL names it through NVTX only. Call once per thread and Prof; later calls add
 * nothing. */
void prof_thread_name(Prof *prof, const char *name);

void prof_step_begin(Prof *prof, int64_t step, int epoch);
void prof_step_record_init(ProfStepRecord *r);
/* Appends a loss term / memory category; returns -1 (ignored) when the record is full. */
int prof_step_add_loss(ProfStepRecord *r, const char *name, double value);
int prof_step_add_memory(ProfStepRecord *r, const char *category, int64_t current_bytes,
                         int64_t peak_bytes);
void prof_step_end(Prof *prof, const ProfStepRecord *r);
/* Closes the "step" range of a prof_step_begin that turned out to have no step (the loader had no
 * batch left: the end of an epoch) without recording it, and makes `step` current again (the
 * last completed one), so that what follows (evaluation, checkpoint) is attributed to it. */
void prof_step_abandon(Prof *prof, int64_t step);

void prof_loader_record_init(ProfLoaderRecord *r);
void prof_loader(Prof *prof, const ProfLoaderRecord *r);
/* Returns 0, or -1 when the record was dropped (queue full or out of memory). */
int prof_eval(Prof *prof, const ProfEvalRecord *r);
int prof_gpu_info(Prof *prof, const ProfGpuInfo *g);

/* Helpers. */
/* Runs print(f) on an in-memory stream and returns the text (malloc'd; NULL on failure), e.g.
 * prof_capture_print(version_print) for ProfRunInfo.library_versions. */
char *prof_capture_print(void (*print)(FILE *f));
/* Resident set size of this process in bytes (-1 if unknown), and its peak: the larger of
 * getrusage's high-water mark (which the kernel updates lazily) and the current RSS. */
int64_t prof_process_rss_bytes(void);
int64_t prof_process_peak_rss_bytes(void);

#ifdef __cplusplus
}
#endif
#endif
