/* prof.c - see prof.h: opening and closing the profile, the bounded record queue, ranges (with
 * their NVTX twins) and the per-step / loader / evaluation records. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "nvtx_ranges.h"
#include "prof_gpu_records.h"
#include "prof_internal.h"

static const struct {
    const char *name;
    uint32_t argb; /* NVTX / NVTX_EVENTS.color */
} phases[PROF_PHASE_COUNT] = {
    [PROF_PHASE_STEP] = {"step", 0xFF9E9E9Eu},
    [PROF_PHASE_DATA_WAIT] = {"data_wait", 0xFFE53935u},
    [PROF_PHASE_H2D] = {"h2d", 0xFFFB8C00u},
    [PROF_PHASE_BACKBONE] = {"backbone", 0xFF1E88E5u},
    [PROF_PHASE_ENCODER] = {"encoder", 0xFF3949ABu},
    [PROF_PHASE_DECODER] = {"decoder", 0xFF8E24AAu},
    [PROF_PHASE_HEADS] = {"heads", 0xFF00ACC1u},
    [PROF_PHASE_MATCHER] = {"matcher", 0xFFFDD835u},
    [PROF_PHASE_LOSS] = {"loss", 0xFFC0CA33u},
    [PROF_PHASE_BACKWARD] = {"backward", 0xFF43A047u},
    [PROF_PHASE_ALLREDUCE] = {"allreduce", 0xFF6D4C41u},
    [PROF_PHASE_CLIP] = {"clip", 0xFF00897Bu},
    [PROF_PHASE_OPTIMIZER] = {"optimizer", 0xFFD81B60u},
    [PROF_PHASE_EVAL] = {"eval", 0xFF546E7Au},
    [PROF_PHASE_CHECKPOINT] = {"checkpoint", 0xFF757575u},
    [PROF_PHASE_LOAD_SAMPLE] = {"load_sample", 0xFF8D6E63u},
    [PROF_PHASE_COLLATE] = {"collate", 0xFFA1887Fu},
};
#define TEXT_RANGE_ARGB 0xFFBDBDBDu

const char *prof_phase_name(ProfPhase phase) {
    return (int)phase >= 0 && phase < PROF_PHASE_COUNT ? phases[phase].name : "unknown";
}

uint32_t prof_phase_color(int phase) {
    return phase >= 0 && phase < PROF_PHASE_COUNT ? phases[phase].argb : TEXT_RANGE_ARGB;
}

void prof_options_default(ProfOptions *o, ProfLevel level) {
    o->level = level == PROF_TRACE ? PROF_TRACE : PROF_BASIC;
    o->queue_capacity = 4096;
    o->flush_interval_ms = 100;
    o->busy_timeout_ms = 5000;
    o->gpu_queue_bytes = (int64_t)256 << 20;
}

/* ---------------------------------------------------------------- the queue */

/* Copies size bytes of payload into the next slot. Never blocks on the writer: a full queue
 * drops the record and counts it. Returns 0, or -1 when dropped. */
static void count_drop_locked(Prof *p, RecordKind kind) {
    p->c.dropped++;
    if (kind == REC_STEP) p->c.dropped_steps++;
    if (kind == REC_RANGE) p->c.dropped_ranges++;
}

/* A record lost before reaching the queue (out of memory for its copy). */
static void count_drop(Prof *p, RecordKind kind) {
    pthread_mutex_lock(&p->mu);
    count_drop_locked(p, kind);
    pthread_mutex_unlock(&p->mu);
}

static int enqueue(Prof *p, RecordKind kind, const void *payload, size_t size) {
    pthread_mutex_lock(&p->mu);
    if (p->stop || p->head - p->tail >= p->cap) {
        count_drop_locked(p, kind);
        pthread_mutex_unlock(&p->mu);
        return -1;
    }
    Record *slot = &p->slots[p->head % p->cap];
    slot->kind = kind;
    memcpy(&slot->u, payload, size);
    p->head++;
    p->c.enqueued++;
    /* wake the writer once when the queue reaches the threshold; otherwise it wakes on its
     * flush interval (a signal per record would cost a futex call per record) */
    if (p->head - p->tail == p->wake_at) pthread_cond_signal(&p->wake);
    pthread_mutex_unlock(&p->mu);
    return 0;
}

int prof_enqueue_gpu_batch(Prof *p, ProfGpuBatch *b, int64_t n_records, int64_t bytes) {
    if (!p) return -1;
    pthread_mutex_lock(&p->mu);
    if (p->stop || p->head - p->tail >= p->cap ||
        p->gpu_pending_bytes + bytes > p->opt.gpu_queue_bytes) {
        p->c.dropped++;
        p->c.dropped_gpu += n_records;
        pthread_mutex_unlock(&p->mu);
        return -1;
    }
    Record *slot = &p->slots[p->head % p->cap];
    slot->kind = REC_GPU_BATCH;
    slot->u.gpu_batch = b;
    p->head++;
    p->c.enqueued++;
    p->gpu_pending_bytes += bytes;
    if (p->head - p->tail == p->wake_at) pthread_cond_signal(&p->wake);
    pthread_mutex_unlock(&p->mu);
    return 0;
}

void prof_gpu_lost(Prof *p, int64_t n) {
    if (!p || n <= 0) return;
    pthread_mutex_lock(&p->mu);
    p->c.cupti_dropped += n;
    pthread_mutex_unlock(&p->mu);
}

/* ---------------------------------------------------------------- ranges */

/* Phase hooks (prof_set_phase_hooks): the caller's struct, which must outlive its use. */
static _Atomic(const ProfPhaseHooks *) g_phase_hooks;

void prof_set_phase_hooks(const ProfPhaseHooks *hooks) {
    atomic_store_explicit(&g_phase_hooks, hooks, memory_order_release);
}

/* The range stack of this thread (NVTX push/pop nesting is per thread too). */
typedef struct {
    Prof *p;
    int phase;                 /* -1: free text */
    int recorded;              /* 0: NVTX only (free text below PROF_TRACE) */
    const ProfPhaseHooks *hooks; /* pushed to these phase hooks (pop them with it), or NULL */
    int64_t start_ns;
    char text[PROF_NAME_LEN];
} StackEntry;

#define PROF_STACK_MAX 64
static _Thread_local StackEntry tl_stack[PROF_STACK_MAX];
static _Thread_local int tl_depth;
static _Thread_local int tl_overflow; /* pushes beyond PROF_STACK_MAX still to be popped */

static StackEntry *stack_push(Prof *p, int phase, int recorded) {
    if (tl_depth == PROF_STACK_MAX) {
        tl_overflow++;
        atomic_fetch_add(&p->range_errors, 1);
        return NULL;
    }
    StackEntry *e = &tl_stack[tl_depth++];
    e->p = p;
    e->phase = phase;
    e->recorded = recorded;
    e->hooks = NULL;
    e->text[0] = 0;
    return e;
}

/* An entry leaves the stack: balance its phase hook push. */
static void hooks_pop(const StackEntry *e) {
    if (e->hooks && e->hooks->pop) e->hooks->pop();
}

static int64_t current_step(Prof *p) {
    return atomic_load_explicit(&p->cur_step, memory_order_relaxed);
}

static void queue_range(Prof *p, int phase, const char *text, int depth, int64_t start_ns,
                        int64_t end_ns) {
    RangeRecord r;
    r.step = current_step(p);
    r.phase = phase;
    r.depth = depth;
    r.start_ns = start_ns;
    r.end_ns = end_ns;
    r.global_tid = prof_global_tid();
    prof_copy_name(r.text, sizeof(r.text), text);
    enqueue(p, REC_RANGE, &r, sizeof(r));
}

void prof_range_push(Prof *p, ProfPhase phase) {
    if ((int)phase < 0 || phase >= PROF_PHASE_COUNT) phase = PROF_PHASE_STEP;
    nvtx_ranges_push_registered((int)phase, phases[phase].name, phases[phase].argb);
    if (!p) return;
    StackEntry *e = stack_push(p, (int)phase, 1);
    if (!e) return;
    const ProfPhaseHooks *h = atomic_load_explicit(&g_phase_hooks, memory_order_acquire);
    if (h && h->push) {
        h->push(current_step(p), (int)phase);
        e->hooks = h;
    }
    e->start_ns = prof_now_ns();
}

void prof_range_push_text(Prof *p, const char *name) {
    if (!name) name = "";
    nvtx_ranges_push_text(name, TEXT_RANGE_ARGB);
    if (!p) return;
    StackEntry *e = stack_push(p, -1, p->opt.level == PROF_TRACE);
    if (!e) return;
    prof_copy_name(e->text, sizeof(e->text), name);
    e->start_ns = prof_now_ns();
}

/* Pops this thread's innermost range; *popped gets its entry (copy). Returns 0, or -1 when
 * there was nothing to pop for p (counted as a range error). */
static int pop_entry(Prof *p, int64_t end_ns, StackEntry *popped) {
    if (tl_overflow > 0) {
        tl_overflow--;
        return -1; /* already counted at push */
    }
    if (tl_depth == 0) {
        atomic_fetch_add(&p->range_errors, 1);
        return -1;
    }
    *popped = tl_stack[--tl_depth];
    hooks_pop(popped);
    if (popped->p != p) {
        atomic_fetch_add(&p->range_errors, 1);
        return -1;
    }
    if (popped->recorded)
        queue_range(p, popped->phase, popped->text, tl_depth, popped->start_ns, end_ns);
    return 0;
}

void prof_range_pop(Prof *p) {
    int64_t end_ns = p ? prof_now_ns() : 0;
    nvtx_ranges_pop();
    if (!p) return;
    StackEntry e;
    pop_entry(p, end_ns, &e);
}

void prof_range_record(Prof *p, ProfPhase phase, int64_t start_ns, int64_t end_ns) {
    if (!p) return;
    if ((int)phase < 0 || phase >= PROF_PHASE_COUNT || end_ns < start_ns) {
        atomic_fetch_add(&p->range_errors, 1);
        return;
    }
    queue_range(p, (int)phase, NULL, tl_depth, start_ns, end_ns);
}

/* ---------------------------------------------------------------- steps and other records */

void prof_thread_name(Prof *p, const char *name) {
    if (!name) return;
    nvtx_ranges_name_thread(name); /* Nsight's timeline too */
    if (!p) return;
    RangeRecord r = {0};
    r.global_tid = prof_global_tid();
    prof_copy_name(r.text, sizeof(r.text), name);
    enqueue(p, REC_THREAD, &r, sizeof(r));
}

void prof_step_begin(Prof *p, int64_t step, int epoch) {
    if (p) {
        atomic_store_explicit(&p->cur_step, step, memory_order_relaxed);
        atomic_store_explicit(&p->cur_epoch, epoch, memory_order_relaxed);
    }
    prof_range_push(p, PROF_PHASE_STEP);
}

void prof_step_record_init(ProfStepRecord *r) {
    memset(r, 0, sizeof(*r));
    r->step = -1;
    r->epoch = -1;
    r->data_wait_ns = -1;
    r->h2d_ns = -1;
    r->loss = r->lr = r->lr_backbone = r->grad_norm = r->flops = r->padded_fraction = NAN;
    r->loss_scale = r->gpu_util = r->gpu_mem_util = NAN;
    r->gpu_alloc_retries = r->gpu_ooms = -1;
    r->skipped = 0;
    r->rss_bytes = -1;
}

int prof_step_add_loss(ProfStepRecord *r, const char *name, double value) {
    if (r->n_losses >= PROF_MAX_LOSSES) return -1;
    ProfLoss *l = &r->losses[r->n_losses++];
    prof_copy_name(l->name, sizeof(l->name), name);
    l->value = value;
    return 0;
}

int prof_step_add_memory(ProfStepRecord *r, const char *category, int64_t current_bytes,
                         int64_t peak_bytes) {
    if (r->n_mem >= PROF_MAX_MEM) return -1;
    ProfMemSample *m = &r->mem[r->n_mem++];
    prof_copy_name(m->category, sizeof(m->category), category);
    m->current_bytes = current_bytes;
    m->peak_bytes = peak_bytes;
    return 0;
}

void prof_step_abandon(Prof *p, int64_t step) {
    if (!p) {
        nvtx_ranges_pop();
        return;
    }
    if (tl_overflow == 0 && tl_depth > 0 && tl_stack[tl_depth - 1].p == p &&
        tl_stack[tl_depth - 1].phase == PROF_PHASE_STEP)
        tl_stack[tl_depth - 1].recorded = 0;
    prof_range_pop(p);
    atomic_store_explicit(&p->cur_step, step, memory_order_relaxed);
}

void prof_step_end(Prof *p, const ProfStepRecord *r) {
    int64_t end_ns = prof_now_ns();
    if (!p) {
        nvtx_ranges_pop(); /* the "step" range of prof_step_begin */
        return;
    }
    int64_t start_ns = end_ns;
    int top_is_step = tl_overflow == 0 && tl_depth > 0 && tl_stack[tl_depth - 1].p == p &&
                      tl_stack[tl_depth - 1].phase == PROF_PHASE_STEP;
    nvtx_ranges_pop(); /* the "step" range of prof_step_begin */
    if (top_is_step) {
        StackEntry e;
        start_ns = tl_stack[tl_depth - 1].start_ns;
        pop_entry(p, end_ns, &e); /* the range ends where the record does */
    } else {
        atomic_fetch_add(&p->range_errors, 1); /* no prof_step_begin, or unbalanced ranges */
    }
    ProfStepRecord *rec = malloc(sizeof(*rec));
    if (!rec) {
        count_drop(p, REC_STEP);
        return;
    }
    *rec = *r;
    if (rec->step < 0) rec->step = current_step(p);
    if (rec->epoch < 0) rec->epoch = atomic_load_explicit(&p->cur_epoch, memory_order_relaxed);
    if (rec->start_ns <= 0) rec->start_ns = start_ns;
    if (rec->end_ns <= 0) rec->end_ns = end_ns;
    if (rec->n_losses > PROF_MAX_LOSSES) rec->n_losses = PROF_MAX_LOSSES;
    if (rec->n_mem > PROF_MAX_MEM) rec->n_mem = PROF_MAX_MEM;
    if (rec->n_losses < 0) rec->n_losses = 0;
    if (rec->n_mem < 0) rec->n_mem = 0;
    int64_t rss = rec->rss_bytes >= 0 ? rec->rss_bytes : prof_rss_from_statm(p->statm_fd);
    int64_t peak = prof_peak_rss_hiwater();
    prof_step_add_memory(rec, "process_rss", rss, peak > rss ? peak : rss);
    if (enqueue(p, REC_STEP, &rec, sizeof(rec)) != 0) free(rec);
}

void prof_loader_record_init(ProfLoaderRecord *r) {
    r->step = -1;
    r->wait_ns = r->read_ns = r->decode_ns = r->augment_ns = r->collate_ns = -1;
    r->bytes_read = -1;
    r->queue_depth = -1;
    r->padded_fraction = NAN;
    r->skipped = r->dropped_boxes = -1;
}

void prof_loader(Prof *p, const ProfLoaderRecord *r) {
    if (!p) return;
    ProfLoaderRecord rec = *r;
    if (rec.step < 0) rec.step = current_step(p);
    enqueue(p, REC_LOADER, &rec, sizeof(rec));
}

int prof_eval(Prof *p, const ProfEvalRecord *r) {
    if (!p) return 0;
    int n = r->n_categories > 0 && r->per_category ? r->n_categories : 0;
    EvalCopy *e = malloc(sizeof(EvalCopy) + (size_t)n * sizeof(ProfCategoryAP));
    if (!e) {
        count_drop(p, REC_EVAL);
        return -1;
    }
    e->rec = *r;
    e->rec.n_categories = n;
    e->rec.per_category = NULL;
    if (n) memcpy(e->cats, r->per_category, (size_t)n * sizeof(ProfCategoryAP));
    if (e->rec.step < 0) e->rec.step = current_step(p);
    if (e->rec.epoch < 0) e->rec.epoch = atomic_load_explicit(&p->cur_epoch, memory_order_relaxed);
    if (enqueue(p, REC_EVAL, &e, sizeof(e)) != 0) {
        free(e);
        return -1;
    }
    return 0;
}

int prof_gpu_info(Prof *p, const ProfGpuInfo *g) {
    if (!p) return 0;
    ProfGpuInfo *copy = malloc(sizeof(*copy));
    if (!copy) {
        count_drop(p, REC_GPU);
        return -1;
    }
    *copy = *g;
    /* the writer reads the names as C strings */
    copy->name[sizeof(copy->name) - 1] = 0;
    copy->bus_location[sizeof(copy->bus_location) - 1] = 0;
    copy->uuid[sizeof(copy->uuid) - 1] = 0;
    copy->chip_name[sizeof(copy->chip_name) - 1] = 0;
    if (enqueue(p, REC_GPU, &copy, sizeof(copy)) != 0) {
        free(copy);
        return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------- accessors */

int64_t prof_run_id(const Prof *p) { return p ? p->run_id : -1; }
ProfLevel prof_level(const Prof *p) { return p ? p->opt.level : PROF_BASIC; }

ProfCounters prof_counters(Prof *p) {
    ProfCounters c = {0};
    if (!p) return c;
    pthread_mutex_lock(&p->mu);
    c = p->c;
    pthread_mutex_unlock(&p->mu);
    c.range_errors = atomic_load(&p->range_errors);
    return c;
}

/* ---------------------------------------------------------------- open / close */

static void free_prof(Prof *p) {
    if (!p) return;
    if (p->db) {
        prof_writer_finalize(p);
        sqlite3_close(p->db);
    }
    if (p->slots) {
        for (int64_t i = p->tail; i < p->head; i++) prof_record_release(&p->slots[i % p->cap]);
        free(p->slots);
        pthread_mutex_destroy(&p->mu);
        pthread_cond_destroy(&p->wake);
    }
    if (p->statm_fd >= 0) close(p->statm_fd);
    free(p->path);
    free(p);
}

/* The operating system's reason behind SQLite's last error, e.g. " (Permission denied)". */
static void os_reason(sqlite3 *db, char *out, size_t n) {
    int e = db ? sqlite3_system_errno(db) : 0;
    if (e) snprintf(out, n, " (%s)", strerror(e));
    else out[0] = 0;
}

/* "PRAGMA journal_mode = WAL" answers the mode in force; anything but "wal" is a refusal. */
static int enable_wal(Prof *p, char *err, size_t errlen) {
    sqlite3_stmt *s;
    char mode[32] = "";
    if (sqlite3_prepare_v2(p->db, "PRAGMA journal_mode = WAL", -1, &s, NULL) == SQLITE_OK) {
        if (sqlite3_step(s) == SQLITE_ROW && sqlite3_column_text(s, 0))
            snprintf(mode, sizeof(mode), "%s", (const char *)sqlite3_column_text(s, 0));
        sqlite3_finalize(s);
    }
    if (strcmp(mode, "wal") != 0) {
        char why[128];
        os_reason(p->db, why, sizeof(why));
        snprintf(err, errlen, "profile database %s: cannot switch it to WAL mode (%s%s): %s%s; "
                 "HINT: the folder must be writable (WAL keeps %s-wal and %s-shm beside it) and "
                 "on a local file system; choose another path with --db",
                 p->path, mode[0] ? "journal mode stays " : "no answer", mode,
                 sqlite3_errmsg(p->db), why, p->path, p->path);
        return -1;
    }
    if (sqlite3_exec(p->db, "PRAGMA synchronous = NORMAL", NULL, NULL, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "profile database %s: PRAGMA synchronous: %s", p->path,
                 sqlite3_errmsg(p->db));
        return -1;
    }
    return 0;
}

/* Why a database cannot be created at path, from its folder: missing, not a folder, or not
 * writable. Falls back to SQLite's own reason. */
static void folder_reason(const char *path, sqlite3 *db, char *out, size_t n) {
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash) snprintf(dir, sizeof(dir), ".");
    else if (slash == dir) dir[1] = 0;
    else *slash = 0;
    struct stat st;
    if (stat(dir, &st) != 0) snprintf(out, n, " (folder %s: %s)", dir, strerror(errno));
    else if (!S_ISDIR(st.st_mode)) snprintf(out, n, " (%s is not a folder)", dir);
    else if (access(dir, W_OK) != 0) snprintf(out, n, " (folder %s is not writable: %s)", dir,
                                              strerror(errno));
    else os_reason(db, out, n);
}

static int open_database(Prof *p, char *err, size_t errlen) {
    char why[4200];
    int rc = sqlite3_open_v2(p->path, &p->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL);
    if (rc != SQLITE_OK) {
        folder_reason(p->path, p->db, why, sizeof(why));
        snprintf(err, errlen, "profile database %s: cannot open or create it: %s%s; HINT: the "
                 "folder must exist and be writable; choose another path with --db", p->path,
                 p->db ? sqlite3_errmsg(p->db) : sqlite3_errstr(rc), why);
        return -1;
    }
    if (sqlite3_db_readonly(p->db, "main") == 1) {
        snprintf(err, errlen, "profile database %s: the file is read-only; HINT: make it "
                 "writable or choose another path with --db", p->path);
        return -1;
    }
    sqlite3_extended_result_codes(p->db, 1);
    sqlite3_busy_timeout(p->db, p->opt.busy_timeout_ms);
    rc = sqlite3_exec(p->db, "SELECT count(*) FROM sqlite_master", NULL, NULL, NULL);
    if ((rc & 0xff) == SQLITE_NOTADB) {
        snprintf(err, errlen, "profile database %s: the file exists and is not a SQLite database "
                 "(it is left untouched); HINT: choose another path with --db", p->path);
        return -1;
    }
    if (rc != SQLITE_OK) {
        os_reason(p->db, why, sizeof(why));
        snprintf(err, errlen, "profile database %s: cannot read it: %s%s; HINT: choose another "
                 "path with --db", p->path, sqlite3_errmsg(p->db), why);
        return -1;
    }
    return enable_wal(p, err, errlen);
}

/* Schema check/creation, phase names and the run's rows, in one transaction: a database that
 * cannot be written fails here, before training. */
static int start_run(Prof *p, const ProfRunInfo *info, char *err, size_t errlen) {
    if (sqlite3_exec(p->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "profile database %s: cannot write it: %s; HINT: choose another "
                 "path with --db", p->path, sqlite3_errmsg(p->db));
        return -1;
    }
    int ok = prof_schema_check_or_create(p->db, p->path, err, errlen) == 0 &&
             prof_writer_prepare(p, err, errlen) == 0;
    for (int i = 0; ok && i < PROF_PHASE_COUNT; i++) {
        p->phase_string_id[i] = prof_intern_string(p, phases[i].name);
        if (p->phase_string_id[i] < 0) {
            snprintf(err, errlen, "profile database %s: cannot write StringIds: %s", p->path,
                     sqlite3_errmsg(p->db));
            ok = 0;
        }
    }
    int64_t start_ns = info->start_ns > 0 ? info->start_ns : prof_now_ns();
    if (ok) ok = prof_schema_insert_run(p, info, start_ns, err, errlen) == 0;
    if (ok && sqlite3_exec(p->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "profile database %s: cannot commit the run: %s; HINT: choose "
                 "another path with --db", p->path, sqlite3_errmsg(p->db));
        ok = 0;
    }
    if (!ok && !sqlite3_get_autocommit(p->db)) sqlite3_exec(p->db, "ROLLBACK", NULL, NULL, NULL);
    return ok ? 0 : -1;
}

static int init_queue(Prof *p, char *err, size_t errlen) {
    p->cap = p->opt.queue_capacity;
    /* wake the writer at a quarter full: three quarters stay free while it gets scheduled */
    p->wake_at = p->cap / 4 > 0 ? p->cap / 4 : 1;
    p->slots = calloc((size_t)p->cap, sizeof(Record));
    if (!p->slots) {
        snprintf(err, errlen, "profiler: out of memory for a queue of %lld records",
                 (long long)p->cap);
        return -1;
    }
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* the writer's deadlines */
    pthread_cond_init(&p->wake, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&p->mu, NULL);
    return 0;
}

/* The writer thread blocks every signal, so SIGINT/SIGTERM reach the training thread. */
static int start_writer(Prof *p, char *err, size_t errlen) {
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&p->writer, NULL, prof_writer_main, p);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        snprintf(err, errlen, "profiler: cannot start the writer thread: %s", strerror(rc));
        return -1;
    }
    p->writer_started = 1;
    return 0;
}

Prof *prof_open_opts(const char *db_path, const ProfRunInfo *info, const ProfOptions *opt,
                     char *err, size_t errlen) {
    if (!db_path || !db_path[0]) {
        snprintf(err, errlen, "profile database: empty path; HINT: --db FILE");
        return NULL;
    }
    ProfRunInfo none = {0};
    if (!info) info = &none;
    Prof *p = calloc(1, sizeof(*p));
    if (!p || !(p->path = strdup(db_path))) {
        snprintf(err, errlen, "profiler: out of memory");
        free(p);
        return NULL;
    }
    p->statm_fd = -1;
    p->opt = *opt;
    if (p->opt.level != PROF_TRACE) p->opt.level = PROF_BASIC;
    if (p->opt.queue_capacity < 1) p->opt.queue_capacity = 4096;
    if (p->opt.flush_interval_ms < 1) p->opt.flush_interval_ms = 100;
    if (p->opt.busy_timeout_ms < 0) p->opt.busy_timeout_ms = 0;
    if (p->opt.gpu_queue_bytes <= 0) p->opt.gpu_queue_bytes = (int64_t)256 << 20;
    p->pid = prof_process_id();
    p->global_pid = p->pid << 24;
    p->peak_flops = info->peak_flops > 0 ? info->peak_flops : 0;
    atomic_store(&p->cur_step, -1);
    atomic_store(&p->cur_epoch, -1);
    if (open_database(p, err, errlen) != 0 || start_run(p, info, err, errlen) != 0 ||
        init_queue(p, err, errlen) != 0) {
        free_prof(p);
        return NULL;
    }
    p->statm_fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
    nvtx_ranges_init(); /* create the NVTX domain now, not inside the first timed phase */
    if (start_writer(p, err, errlen) != 0) {
        free_prof(p);
        return NULL;
    }
    return p;
}

Prof *prof_open(const char *db_path, const ProfRunInfo *info, ProfLevel level, char *err,
                size_t errlen) {
    ProfOptions o;
    prof_options_default(&o, level);
    return prof_open_opts(db_path, info, &o, err, errlen);
}

/* Forgets this thread's open ranges of p (a close inside a range), so that they are not taken
 * for another profiler's later. */
static void purge_stack(const Prof *p) {
    int kept = 0;
    for (int i = 0; i < tl_depth; i++) {
        if (tl_stack[i].p != p) tl_stack[kept++] = tl_stack[i];
        else hooks_pop(&tl_stack[i]);
    }
    tl_depth = kept;
}

int prof_close(Prof *p, int exit_code, char *err, size_t errlen) {
    if (!p) return 0;
    purge_stack(p);
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_signal(&p->wake);
    pthread_mutex_unlock(&p->mu);
    if (p->writer_started) pthread_join(p->writer, NULL);

    char msg[400] = "";
    int rc = 0;
    if (prof_writer_finish(p, exit_code, prof_now_ns(), msg, sizeof(msg)) != 0) {
        snprintf(err, errlen, "profile database %s: cannot record the end of run %lld: %s",
                 p->path, (long long)p->run_id, msg);
        rc = -1;
    } else if (p->c.write_failed > 0) {
        snprintf(err, errlen, "profile database %s: %lld records of run %lld could not be "
                 "written (%s); the database is consistent but incomplete", p->path,
                 (long long)p->c.write_failed, (long long)p->run_id, p->writer_error);
        rc = -1;
    }
    prof_writer_finalize(p);
    int crc = sqlite3_close(p->db);
    p->db = NULL;
    if (crc != SQLITE_OK && rc == 0) {
        snprintf(err, errlen, "profile database %s: close failed: %s", p->path,
                 sqlite3_errstr(crc));
        rc = -1;
    }
    free_prof(p);
    return rc;
}
