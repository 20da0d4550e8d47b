/* prof_internal.h - what the profiler's .c files share: the Prof object, the queued record, and the
 * schema / writer / system-information functions. Not part of the public API (prof.h). */
#ifndef DETR_PROF_INTERNAL_H
#define DETR_PROF_INTERNAL_H
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include "prof.h"

/* NVTX domain id used in NVTX_EVENTS.domainId for "detr" (0 is NVTX's default domain). */
#define PROF_NVTX_DOMAIN_ID 1
#define PROF_NVTX_DOMAIN_NAME "detr" /* = NVTX_RANGES_DOMAIN */
/* nsys event types (ENUM_NSYS_EVENT_TYPE). */
#define PROF_NVTX_PUSHPOP_RANGE 59
#define PROF_NVTX_DOMAIN_CREATE 75

typedef enum { REC_STEP, REC_RANGE, REC_LOADER, REC_EVAL, REC_GPU, REC_THREAD, REC_GPU_BATCH } RecordKind;

/* GPU activity gathered by a ProfGpuCollector (prof_gpu_records.c); writer-side state. */
typedef struct ProfGpuBatch ProfGpuBatch;
typedef struct ProfGpuWriter ProfGpuWriter;

typedef struct {
    int64_t step;              /* -1: outside any step */
    int phase;                 /* ProfPhase, or -1 for a free-text range */
    int depth;                 /* nesting depth on its thread, 0 = outermost */
    int64_t start_ns, end_ns;
    int64_t global_tid;        /* (pid << 24) | tid */
    char text[PROF_NAME_LEN];  /* free-text name (phase == -1) */
} RangeRecord;

/* prof_eval's heap copy: the record and its per-category array in one block. */
typedef struct {
    ProfEvalRecord rec;
    ProfCategoryAP cats[];
} EvalCopy;

typedef struct {
    RecordKind kind;
    union {
        ProfStepRecord *step;  /* heap copies keep the slots small (a step record is ~3 KB) */
        RangeRecord range;     /* REC_RANGE; REC_THREAD: global_tid and text (the name) */
        ProfLoaderRecord loader;
        EvalCopy *eval;
        ProfGpuInfo *gpu;      /* step, eval, gpu: owned by the record, freed once written */
        ProfGpuBatch *gpu_batch; /* REC_GPU_BATCH: owned too */
    } u;
} Record;

typedef struct {
    sqlite3_stmt *begin, *commit, *rollback;
    sqlite3_stmt *step, *phase, *nvtx, *mem, *loader, *eval, *eval_cat, *gpu;
    sqlite3_stmt *counters;     /* UPDATE DETR_RUNS SET records_written = ..., dropped = ... */
    sqlite3_stmt *str_find, *str_insert;
} Statements;

#define PROF_TEXT_CACHE 512
typedef struct {
    char name[PROF_NAME_LEN];
    int64_t id;                /* 0 = empty entry */
} TextCacheEntry;

struct Prof {
    sqlite3 *db;
    char *path;
    ProfOptions opt;
    int64_t run_id;
    int64_t pid, global_pid;
    double peak_flops;
    int64_t phase_string_id[PROF_PHASE_COUNT];

    /* The queue: records [tail, head) are waiting, slot i % cap. Producers fill slot head under
     * mu; the writer reads [tail, tail + n) without the lock (producers never touch them, since
     * head - tail <= cap) and advances tail under mu when they are written. */
    pthread_mutex_t mu;
    pthread_cond_t wake;
    Record *slots;
    int64_t cap, head, tail;
    int64_t wake_at;           /* queued records that wake the writer before its interval */
    int stop;                  /* prof_close asked the writer to drain and exit */
    ProfCounters c;            /* under mu (range_errors: atomic below) */
    char writer_error[512];    /* first write error, under mu */
    pthread_t writer;
    int writer_started;

    _Atomic int64_t cur_step;
    _Atomic int cur_epoch;
    _Atomic int64_t range_errors;
    int statm_fd;              /* /proc/self/statm, read with pread by producers */
    int64_t gpu_pending_bytes; /* heap held by queued GPU batches, under mu (bounded by
                                  opt.gpu_queue_bytes) */

    /* writer thread only */
    Statements st;
    TextCacheEntry text_cache[PROF_TEXT_CACHE];
    int gpu_table_ready;
    ProfGpuWriter *gpu_writer; /* GPU activity statements and name cache (prof_gpu_records.c) */
};

/* prof_schema.c */
/* Inside an open transaction: creates the schema in an empty database, or checks the version of
 * an existing one. Returns 0, or -1 with a message naming path and the fix. */
int prof_schema_check_or_create(sqlite3 *db, const char *path, char *err, size_t errlen);
/* Inside the same transaction: inserts DETR_RUNS and the run's nsys-style rows (session start,
 * system environment, analysis window, process, thread, domain). Sets p->run_id. */
int prof_schema_insert_run(Prof *p, const ProfRunInfo *info, int64_t start_ns, char *err,
                           size_t errlen);
/* Creates TARGET_INFO_GPU if it does not exist yet. */
int prof_schema_create_gpu_table(sqlite3 *db);
/* Creates the nsys CUDA activity tables (CUPTI_ACTIVITY_KIND_KERNEL, _MEMCPY, _MEMSET, _RUNTIME,
 * _SYNCHRONIZATION) and their ENUM tables with their rows, if they do not exist yet. */
int prof_schema_create_cupti_tables(sqlite3 *db);
/* INSERT statement of a TARGET_INFO_GPU row (27 parameters, see prof_writer.c). */
extern const char *const prof_gpu_insert_sql;

/* prof_writer.c */
int prof_writer_prepare(Prof *p, char *err, size_t errlen);
void prof_writer_finalize(Prof *p);
void *prof_writer_main(void *arg);
/* After the writer has exited: end time, status and counters of the run. 0 or -1 with msg. */
int prof_writer_finish(Prof *p, int exit_code, int64_t end_ns, char *msg, size_t msglen);
uint32_t prof_phase_color(int phase);  /* ARGB of a phase (-1: free text); prof.c */
/* StringIds id of s (inserted when missing); -1 on a database error. */
int64_t prof_intern_string(Prof *p, const char *s);
/* Frees a heap payload (step, eval, gpu, gpu batch); returns the bytes of a GPU batch freed
 * (to be taken off gpu_pending_bytes), else 0. */
int64_t prof_record_release(Record *r);

/* prof.c: queues a GPU batch (ownership passes on success). A full queue or a batch that would
 * take the queued GPU data over opt.gpu_queue_bytes is refused and its n_records counted in
 * dropped_gpu_records. Returns 0 or -1. */
int prof_enqueue_gpu_batch(Prof *p, ProfGpuBatch *b, int64_t n_records, int64_t bytes);

/* prof_gpu_records.c, writer thread */
int prof_gpu_write_batch(Prof *p, const ProfGpuBatch *b);
void prof_gpu_writer_reset(Prof *p);   /* after a rollback: tables and strings may be gone */
void prof_gpu_writer_free(Prof *p);
void prof_gpu_batch_free(ProfGpuBatch *b);
int64_t prof_gpu_batch_bytes(const ProfGpuBatch *b);

/* prof_sysinfo.c */
int64_t prof_thread_id(void);          /* the kernel thread id, cached per thread */
int64_t prof_process_id(void);         /* getpid(), cached (both caches cleared in a fork child) */
int64_t prof_global_tid(void);         /* (pid << 24) | (tid & 0xFFFFFF) */
void prof_cpu_model(char *out, size_t n);
void prof_os_arch(char *out, size_t n);
int64_t prof_rss_from_statm(int fd);   /* -1 if unknown */
int64_t prof_peak_rss_hiwater(void);   /* getrusage ru_maxrss in bytes (may lag the RSS) */
/* Copies s into a fixed buffer, truncating; NULL copies "". */
void prof_copy_name(char *dst, size_t n, const char *s);

#endif
