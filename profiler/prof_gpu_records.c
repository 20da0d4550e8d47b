/* prof_gpu_records.c - see prof_gpu_records.h: GPU activity records on the CPU side, their
 * attribution to steps and phases, the batch a collector hands to the profiler's queue, and the
 * writer thread's side that stores a batch in the nsys-compatible and DETR_GPU_ tables. */
#include "prof_gpu_records.h"
#include <stdlib.h>
#include <string.h>
#include "prof_internal.h"

/* ---------------------------------------------------------------- pure helpers */

/* id = (step + 1) << 8 | phase: step -1 (outside any step) gives 0 in the high bits; phase takes
 * the low byte (PROF_PHASE_COUNT < 256). id 0 is never pushed (phase 0 is "step" at step -1
 * only when a step range opens before any step number, which prof_step_begin never does). */
uint64_t prof_gpu_external_id(int64_t step, int phase) {
    if (step < -1) step = -1;
    return ((uint64_t)(step + 1) << 8) | (uint64_t)(phase & 0xFF);
}

int prof_gpu_external_decode(uint64_t id, int64_t *step, int *phase) {
    int ph = (int)(id & 0xFF);
    if (ph >= PROF_PHASE_COUNT || (id >> 8) > (uint64_t)INT64_MAX - 1) return -1;
    *step = (int64_t)(id >> 8) - 1;
    *phase = ph;
    return 0;
}

int prof_gpu_mem_kind_from_cupti(int cupti_kind) {
    /* CUPTI: 0 unknown, 1 pageable, 2 pinned, 3 device, 4 array, 5 managed, 6 device static,
     * 7 managed static; nsys: the same minus one, and 7 for unknown */
    return cupti_kind >= 1 && cupti_kind <= 7 ? cupti_kind - 1 : PROF_GPU_MEM_UNKNOWN;
}

/* Index of the bracket that opens the one closing at s[close] (scanning backwards), or -1. */
static long matching_open(const char *s, long close, char open_ch, char close_ch) {
    int depth = 0;
    for (long i = close; i >= 0; i--) {
        if (s[i] == close_ch) depth++;
        else if (s[i] == open_ch && --depth == 0) return i;
    }
    return -1;
}

void prof_gpu_short_name(const char *demangled, char *out, size_t n) {
    if (!n) return;
    out[0] = 0;
    if (!demangled) return;
    long end = (long)strlen(demangled);
    while (end > 0 && demangled[end - 1] == ' ') end--;
    if (end >= 6 && strncmp(demangled + end - 6, " const", 6) == 0) end -= 6;
    /* drop the parameter list, then the template arguments of the function itself */
    if (end > 0 && demangled[end - 1] == ')') {
        long open = matching_open(demangled, end - 1, '(', ')');
        if (open > 0) end = open;
    }
    if (end > 0 && demangled[end - 1] == '>') {
        long open = matching_open(demangled, end - 1, '<', '>');
        if (open > 0) end = open;
    }
    /* the last name at bracket depth 0: after the return type's space and the last "::" */
    long begin = 0;
    int depth = 0;
    for (long i = 0; i < end; i++) {
        char ch = demangled[i];
        if (ch == '<' || ch == '(') depth++;
        else if ((ch == '>' || ch == ')') && depth > 0) depth--;
        else if (depth == 0 && ch == ' ') begin = i + 1;
        else if (depth == 0 && ch == ':' && i + 1 < end && demangled[i + 1] == ':') begin = i + 2;
    }
    if (begin >= end) begin = 0, end = (long)strlen(demangled); /* nothing sensible: keep it all */
    size_t len = (size_t)(end - begin);
    if (len >= n) len = n - 1;
    memcpy(out, demangled + begin, len);
    out[len] = 0;
}

/* ---------------------------------------------------------------- the batch */

/* Per (step, phase, activity, copy kind): the DETR_GPU_STEPS row a batch adds to. */
typedef struct {
    int64_t step;
    int phase;         /* ProfPhase, -1: unattributed */
    int activity;      /* PROF_GPU_KERNEL, _MEMCPY or _MEMSET */
    int copy_kind;     /* memcpy: ENUM_CUDA_MEMCPY_OPER id; -1 otherwise */
    int64_t count, total_ns, bytes;
} GpuAggregate;

/* A raw record and the step/phase its correlation gave (DETR_GPU_CORRELATION for externals). */
typedef struct {
    ProfGpuActivity a;
    int64_t step;
    int phase;
} GpuRow;

typedef struct Chunk {
    struct Chunk *next;
    size_t used, cap;
    char data[];
} Chunk;

#define STRING_DEDUP 256

struct ProfGpuBatch {
    GpuRow *rows;
    int64_t n_rows, cap_rows;
    GpuAggregate *agg;
    int n_agg, cap_agg, last_agg;
    Chunk *chunks;                     /* copied names; never moved, freed with the batch */
    const char *dedup[STRING_DEDUP];   /* recent strings by hash: kernel names repeat */
    int64_t n_records;                 /* activity records it accounts for (rows or aggregates) */
    int64_t bytes;                     /* heap it holds, for the queue's memory bound */
};

static ProfGpuBatch *batch_new(void) {
    ProfGpuBatch *b = calloc(1, sizeof(*b));
    if (b) b->bytes = (int64_t)sizeof(*b);
    return b;
}

void prof_gpu_batch_free(ProfGpuBatch *b) {
    if (!b) return;
    for (Chunk *c = b->chunks, *next; c; c = next) {
        next = c->next;
        free(c);
    }
    free(b->rows);
    free(b->agg);
    free(b);
}

int64_t prof_gpu_batch_bytes(const ProfGpuBatch *b) { return b ? b->bytes : 0; }

static uint32_t hash_string(const char *s) {
    uint32_t h = 2166136261u; /* FNV-1a */
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 16777619u;
    return h;
}

/* A copy of s that lives as long as the batch (NULL stays NULL; NULL on out of memory). */
static const char *batch_string(ProfGpuBatch *b, const char *s, int *oom) {
    if (!s) return NULL;
    uint32_t slot = hash_string(s) % STRING_DEDUP;
    if (b->dedup[slot] && strcmp(b->dedup[slot], s) == 0) return b->dedup[slot];
    size_t len = strlen(s) + 1;
    Chunk *c = b->chunks;
    if (!c || c->cap - c->used < len) {
        size_t cap = len > 65536 ? len : 65536;
        c = malloc(sizeof(Chunk) + cap);
        if (!c) {
            *oom = 1;
            return NULL;
        }
        c->used = 0;
        c->cap = cap;
        c->next = b->chunks;
        b->chunks = c;
        b->bytes += (int64_t)(sizeof(Chunk) + cap);
    }
    char *copy = c->data + c->used;
    memcpy(copy, s, len);
    c->used += len;
    b->dedup[slot] = copy;
    return copy;
}

static int grow(void **p, int64_t *cap, int64_t need, size_t elem, int64_t *bytes) {
    if (need <= *cap) return 0;
    int64_t n = *cap ? *cap * 2 : 256;
    while (n < need) n *= 2;
    void *q = realloc(*p, (size_t)n * elem);
    if (!q) return -1;
    *bytes += (n - *cap) * (int64_t)elem;
    *p = q;
    *cap = n;
    return 0;
}

static int batch_add_row(ProfGpuBatch *b, const ProfGpuActivity *a, int64_t step, int phase) {
    if (grow((void **)&b->rows, &b->cap_rows, b->n_rows + 1, sizeof(GpuRow), &b->bytes) != 0) return -1;
    GpuRow *r = &b->rows[b->n_rows];
    r->a = *a;
    r->step = step;
    r->phase = phase;
    int oom = 0;
    if (a->kind == PROF_GPU_KERNEL) {
        r->a.u.kernel.name = batch_string(b, a->u.kernel.name ? a->u.kernel.name : "kernel", &oom);
        r->a.u.kernel.demangled = batch_string(b, a->u.kernel.demangled, &oom);
    } else if (a->kind == PROF_GPU_RUNTIME) {
        r->a.u.runtime.name = batch_string(b, a->u.runtime.name ? a->u.runtime.name : "cudaUnknown", &oom);
    }
    if (oom) return -1;
    b->n_rows++;
    return 0;
}

static int batch_aggregate(ProfGpuBatch *b, int64_t step, int phase, int activity, int copy_kind,
                           int64_t ns, int64_t bytes) {
    GpuAggregate *g = NULL;
    if (b->n_agg > 0) {
        GpuAggregate *last = &b->agg[b->last_agg];
        if (last->step == step && last->phase == phase && last->activity == activity &&
            last->copy_kind == copy_kind)
            g = last;
    }
    for (int i = 0; !g && i < b->n_agg; i++)
        if (b->agg[i].step == step && b->agg[i].phase == phase && b->agg[i].activity == activity &&
            b->agg[i].copy_kind == copy_kind) {
            g = &b->agg[i];
            b->last_agg = i;
        }
    if (!g) {
        int64_t cap = b->cap_agg;
        if (grow((void **)&b->agg, &cap, b->n_agg + 1, sizeof(GpuAggregate), &b->bytes) != 0) return -1;
        b->cap_agg = (int)cap;
        b->last_agg = b->n_agg;
        g = &b->agg[b->n_agg++];
        *g = (GpuAggregate){step, phase, activity, copy_kind, 0, 0, 0};
    }
    g->count++;
    g->total_ns += ns > 0 ? ns : 0;
    g->bytes += bytes;
    return 0;
}

/* ---------------------------------------------------------------- the collector */

/* correlationId -> external id, direct-mapped on the (increasing) correlation id: an entry is
 * overwritten only by the call 2^18 calls later, long after its GPU work was delivered (buffers
 * are flushed at least once per traced window). 4 MiB. */
#define CORR_SLOTS (1u << 18)
typedef struct {
    uint32_t correlation_id;
    uint32_t valid;
    uint64_t external_id;
} CorrEntry;

#define AUTO_SUBMIT_ROWS 65536 /* bounds one batch (~10 MB) when a caller adds a lot at once */

struct ProfGpuCollector {
    Prof *prof;
    int keep_rows;
    ProfGpuKeepStep keep_step;
    void *keep_ctx;
    CorrEntry *corr;
    ProfGpuBatch *batch;
    int64_t unattributed;
};

ProfGpuCollector *prof_gpu_collector_new(Prof *prof, int keep_rows, ProfGpuKeepStep keep_step,
                                         void *keep_ctx) {
    ProfGpuCollector *c = calloc(1, sizeof(*c));
    if (!c) return NULL;
    c->corr = calloc(CORR_SLOTS, sizeof(CorrEntry));
    if (!c->corr) {
        free(c);
        return NULL;
    }
    c->prof = prof;
    c->keep_rows = keep_rows;
    c->keep_step = keep_step;
    c->keep_ctx = keep_ctx;
    return c;
}

void prof_gpu_collector_free(ProfGpuCollector *c) {
    if (!c) return;
    prof_gpu_batch_free(c->batch);
    free(c->corr);
    free(c);
}

int64_t prof_gpu_collector_unattributed(const ProfGpuCollector *c) { return c ? c->unattributed : 0; }

/* Step and phase of the API call with this correlation id: 0, or -1 when none was recorded. */
static int lookup(const ProfGpuCollector *c, uint32_t corr, int64_t *step, int *phase) {
    const CorrEntry *e = &c->corr[corr % CORR_SLOTS];
    if (!e->valid || e->correlation_id != corr) return -1;
    return prof_gpu_external_decode(e->external_id, step, phase);
}

static int keep(const ProfGpuCollector *c, int64_t step) {
    return c->keep_rows && (!c->keep_step || c->keep_step(c->keep_ctx, step));
}

int prof_gpu_collector_add(ProfGpuCollector *c, const ProfGpuActivity *a) {
    if (!c) return -1;
    if (!c->batch && !(c->batch = batch_new())) {
        prof_gpu_lost(c->prof, 1);
        return -1;
    }
    ProfGpuBatch *b = c->batch;
    int64_t step = -1;
    int phase = -1;
    int rc = 0;
    if (a->kind == PROF_GPU_EXTERNAL) {
        if (a->u.external.external_kind != PROF_GPU_EXTERNAL_KIND_CUSTOM0) return 0;
        CorrEntry *e = &c->corr[a->correlation_id % CORR_SLOTS];
        *e = (CorrEntry){a->correlation_id, 1, a->u.external.external_id};
        if (prof_gpu_external_decode(a->u.external.external_id, &step, &phase) == 0 && keep(c, step))
            rc = batch_add_row(b, a, step, phase);
        else
            return 0;
    } else {
        if (lookup(c, a->correlation_id, &step, &phase) != 0) step = -1, phase = -1;
        int is_work = a->kind == PROF_GPU_KERNEL || a->kind == PROF_GPU_MEMCPY || a->kind == PROF_GPU_MEMSET;
        if (is_work) {
            if (phase < 0) c->unattributed++;
            int64_t bytes = a->kind == PROF_GPU_MEMCPY ? a->u.copy.bytes
                          : a->kind == PROF_GPU_MEMSET ? a->u.set.bytes : 0;
            rc = batch_aggregate(b, step, phase, (int)a->kind,
                                 a->kind == PROF_GPU_MEMCPY ? a->u.copy.copy_kind : -1,
                                 a->end - a->start, bytes);
        }
        if (rc == 0 && keep(c, step)) rc = batch_add_row(b, a, step, phase);
    }
    if (rc != 0) {
        prof_gpu_lost(c->prof, 1);
        return -1;
    }
    b->n_records++;
    if (b->n_rows >= AUTO_SUBMIT_ROWS) prof_gpu_collector_submit(c);
    return 0;
}

int64_t prof_gpu_collector_submit(ProfGpuCollector *c) {
    if (!c || !c->batch) return 0;
    ProfGpuBatch *b = c->batch;
    c->batch = NULL;
    if (b->n_rows == 0 && b->n_agg == 0) {
        prof_gpu_batch_free(b);
        return 0;
    }
    int64_t n = b->n_records;
    if (prof_enqueue_gpu_batch(c->prof, b, n, b->bytes) != 0) {
        prof_gpu_batch_free(b);
        return -1;
    }
    return n;
}

/* ---------------------------------------------------------------- the writer's side */

#define WRITER_STRINGS 4096 /* StringIds cache of kernel and API names (cleared when full) */

typedef struct {
    char *value;
    int64_t id;
} StringEntry;

struct ProfGpuWriter {
    int tables_ready;
    sqlite3_stmt *kernel, *copy, *set, *runtime, *sync, *corr, *agg;
    StringEntry strings[WRITER_STRINGS];
    int n_strings;
    int64_t unattributed_id;
};

static void clear_strings(ProfGpuWriter *w) {
    for (int i = 0; i < WRITER_STRINGS; i++) {
        free(w->strings[i].value);
        w->strings[i].value = NULL;
    }
    w->n_strings = 0;
    w->unattributed_id = 0;
}

static void finalize_statements(ProfGpuWriter *w) {
    sqlite3_stmt **all[] = {&w->kernel, &w->copy, &w->set, &w->runtime, &w->sync, &w->corr, &w->agg};
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
        sqlite3_finalize(*all[i]);
        *all[i] = NULL;
    }
}

void prof_gpu_writer_reset(Prof *p) {
    ProfGpuWriter *w = p->gpu_writer;
    if (!w) return;
    /* a rolled-back transaction may have taken the lazily created tables and interned strings */
    finalize_statements(w);
    clear_strings(w);
    w->tables_ready = 0;
}

void prof_gpu_writer_free(Prof *p) {
    if (!p->gpu_writer) return;
    prof_gpu_writer_reset(p);
    free(p->gpu_writer);
    p->gpu_writer = NULL;
}

/* StringIds id of s through the cache; -1 on a database error. */
static int64_t string_id(Prof *p, ProfGpuWriter *w, const char *s) {
    uint32_t h = hash_string(s);
    for (int probe = 0; probe < WRITER_STRINGS; probe++) {
        StringEntry *e = &w->strings[(h + (uint32_t)probe) % WRITER_STRINGS];
        if (!e->value) break;
        if (strcmp(e->value, s) == 0) return e->id;
    }
    int64_t id = prof_intern_string(p, s);
    if (id < 0) return -1;
    if (w->n_strings >= WRITER_STRINGS * 3 / 4) clear_strings(w);
    for (int probe = 0; probe < WRITER_STRINGS; probe++) {
        StringEntry *e = &w->strings[(h + (uint32_t)probe) % WRITER_STRINGS];
        if (e->value) continue;
        if ((e->value = strdup(s))) {
            e->id = id;
            w->n_strings++;
        }
        break;
    }
    return id;
}

static int prepare(Prof *p, const char *sql, sqlite3_stmt **s) {
    return sqlite3_prepare_v3(p->db, sql, -1, SQLITE_PREPARE_PERSISTENT, s, NULL) == SQLITE_OK ? 0 : -1;
}

static int writer_ready(Prof *p, int need_tables) {
    if (!p->gpu_writer && !(p->gpu_writer = calloc(1, sizeof(ProfGpuWriter)))) return -1;
    ProfGpuWriter *w = p->gpu_writer;
    if (!w->agg && prepare(p, "INSERT INTO DETR_GPU_STEPS (run_id, step, phase_id, activity, copy_kind, count, "
                              "total_ns, bytes) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (run_id, step, phase_id, "
                              "activity, copy_kind) DO UPDATE SET count = count + excluded.count, "
                              "total_ns = total_ns + excluded.total_ns, bytes = bytes + excluded.bytes",
                       &w->agg) != 0)
        return -1;
    if (!need_tables || w->tables_ready) return 0;
    /* nsys creates a table only when it has data: so do we, on the first raw rows */
    if (prof_schema_create_cupti_tables(p->db) != 0) return -1;
    const struct {
        sqlite3_stmt **s;
        const char *sql;
    } all[] = {
        {&w->kernel, "INSERT INTO CUPTI_ACTIVITY_KIND_KERNEL (start, \"end\", deviceId, contextId, streamId, "
                     "correlationId, globalPid, demangledName, shortName, mangledName, launchType, cacheConfig, "
                     "registersPerThread, gridX, gridY, gridZ, blockX, blockY, blockZ, staticSharedMemory, "
                     "dynamicSharedMemory, localMemoryPerThread, localMemoryTotal, gridId, sharedMemoryExecuted, "
                     "graphNodeId, sharedMemoryLimitConfig) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,"
                     "?,?,?,?)"},
        {&w->copy, "INSERT INTO CUPTI_ACTIVITY_KIND_MEMCPY (start, \"end\", deviceId, contextId, streamId, "
                   "correlationId, globalPid, bytes, copyKind, srcKind, dstKind, graphNodeId) VALUES "
                   "(?,?,?,?,?,?,?,?,?,?,?,?)"},
        {&w->set, "INSERT INTO CUPTI_ACTIVITY_KIND_MEMSET (start, \"end\", deviceId, contextId, streamId, "
                  "correlationId, globalPid, value, bytes, graphNodeId, memKind) VALUES (?,?,?,?,?,?,?,?,?,?,?)"},
        {&w->runtime, "INSERT INTO CUPTI_ACTIVITY_KIND_RUNTIME (start, \"end\", eventClass, globalTid, "
                      "correlationId, nameId, returnValue) VALUES (?,?,0,?,?,?,?)"},
        {&w->sync, "INSERT INTO CUPTI_ACTIVITY_KIND_SYNCHRONIZATION (start, \"end\", deviceId, contextId, "
                   "streamId, correlationId, globalPid, syncType, eventId) VALUES (?,?,?,?,?,?,?,?,?)"},
        {&w->corr, "INSERT INTO DETR_GPU_CORRELATION (run_id, correlationId, externalKind, externalId, step, "
                   "name_id) VALUES (?,?,?,?,?,?)"},
    };
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
        if (prepare(p, all[i].sql, all[i].s) != 0) return -1;
    w->tables_ready = 1;
    return 0;
}

static int step_done(sqlite3_stmt *s) {
    int rc = sqlite3_step(s);
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    return rc == SQLITE_DONE ? 0 : -1;
}

static void bind_opt(sqlite3_stmt *s, int i, int64_t v) {
    if (v > 0) sqlite3_bind_int64(s, i, v); /* 0 / negative: none (NULL) */
}

static int64_t phase_id(Prof *p, ProfGpuWriter *w, int phase) {
    if (phase >= 0 && phase < PROF_PHASE_COUNT) return p->phase_string_id[phase];
    if (w->unattributed_id <= 0) w->unattributed_id = string_id(p, w, "unattributed");
    return w->unattributed_id;
}

static int write_kernel(Prof *p, ProfGpuWriter *w, const ProfGpuActivity *a) {
    const char *mangled = a->u.kernel.name;
    const char *demangled = a->u.kernel.demangled ? a->u.kernel.demangled : mangled;
    char short_name[512];
    prof_gpu_short_name(demangled, short_name, sizeof(short_name));
    int64_t dem_id = string_id(p, w, demangled), short_id = string_id(p, w, short_name);
    int64_t mangled_id = string_id(p, w, mangled);
    if (dem_id < 0 || short_id < 0 || mangled_id < 0) return -1;
    sqlite3_stmt *s = w->kernel;
    const int64_t v[] = {a->start, a->end, a->device_id, a->context_id, a->stream_id, a->correlation_id,
                         p->global_pid, dem_id, short_id, mangled_id, a->u.kernel.launch_type,
                         a->u.kernel.cache_config, a->u.kernel.registers_per_thread, a->u.kernel.grid_x,
                         a->u.kernel.grid_y, a->u.kernel.grid_z, a->u.kernel.block_x, a->u.kernel.block_y,
                         a->u.kernel.block_z, a->u.kernel.static_shared_memory,
                         a->u.kernel.dynamic_shared_memory, a->u.kernel.local_memory_per_thread,
                         a->u.kernel.local_memory_total, a->u.kernel.grid_id,
                         a->u.kernel.shared_memory_executed};
    int n = (int)(sizeof(v) / sizeof(v[0]));
    for (int i = 0; i < n; i++) sqlite3_bind_int64(s, i + 1, v[i]);
    bind_opt(s, n + 1, a->u.kernel.graph_node_id);
    sqlite3_bind_int64(s, n + 2, a->u.kernel.shared_memory_limit_config);
    return step_done(s);
}

static void bind_common(Prof *p, sqlite3_stmt *s, const ProfGpuActivity *a) {
    sqlite3_bind_int64(s, 1, a->start);
    sqlite3_bind_int64(s, 2, a->end);
    sqlite3_bind_int64(s, 3, a->device_id);
    sqlite3_bind_int64(s, 4, a->context_id);
    sqlite3_bind_int64(s, 5, a->stream_id);
    sqlite3_bind_int64(s, 6, a->correlation_id);
    sqlite3_bind_int64(s, 7, p->global_pid);
}

static int write_row(Prof *p, ProfGpuWriter *w, const GpuRow *r) {
    const ProfGpuActivity *a = &r->a;
    sqlite3_stmt *s;
    switch (a->kind) {
    case PROF_GPU_KERNEL: return write_kernel(p, w, a);
    case PROF_GPU_MEMCPY:
        s = w->copy;
        bind_common(p, s, a);
        sqlite3_bind_int64(s, 8, a->u.copy.bytes);
        sqlite3_bind_int(s, 9, a->u.copy.copy_kind);
        sqlite3_bind_int(s, 10, a->u.copy.src_kind);
        sqlite3_bind_int(s, 11, a->u.copy.dst_kind);
        bind_opt(s, 12, a->u.copy.graph_node_id);
        return step_done(s);
    case PROF_GPU_MEMSET:
        s = w->set;
        bind_common(p, s, a);
        sqlite3_bind_int64(s, 8, a->u.set.value);
        sqlite3_bind_int64(s, 9, a->u.set.bytes);
        bind_opt(s, 10, a->u.set.graph_node_id);
        sqlite3_bind_int(s, 11, a->u.set.mem_kind);
        return step_done(s);
    case PROF_GPU_RUNTIME: {
        int64_t name_id = string_id(p, w, a->u.runtime.name);
        if (name_id < 0) return -1;
        s = w->runtime;
        sqlite3_bind_int64(s, 1, a->start);
        sqlite3_bind_int64(s, 2, a->end);
        sqlite3_bind_int64(s, 3, a->u.runtime.global_tid);
        sqlite3_bind_int64(s, 4, a->correlation_id);
        sqlite3_bind_int64(s, 5, name_id);
        sqlite3_bind_int(s, 6, a->u.runtime.return_value);
        return step_done(s);
    }
    case PROF_GPU_SYNC:
        s = w->sync;
        bind_common(p, s, a);
        sqlite3_bind_int(s, 8, a->u.sync.sync_type);
        if (a->u.sync.event_id >= 0) sqlite3_bind_int64(s, 9, a->u.sync.event_id);
        return step_done(s);
    case PROF_GPU_EXTERNAL: {
        int64_t name_id = phase_id(p, w, r->phase);
        if (name_id < 0) return -1;
        s = w->corr;
        sqlite3_bind_int64(s, 1, p->run_id);
        sqlite3_bind_int64(s, 2, a->correlation_id);
        sqlite3_bind_int(s, 3, a->u.external.external_kind);
        sqlite3_bind_int64(s, 4, (int64_t)a->u.external.external_id);
        sqlite3_bind_int64(s, 5, r->step);
        sqlite3_bind_int64(s, 6, name_id);
        return step_done(s);
    }
    }
    return -1;
}

static const char *activity_name(int activity) {
    return activity == PROF_GPU_KERNEL ? "kernel" : activity == PROF_GPU_MEMCPY ? "memcpy" : "memset";
}

int prof_gpu_write_batch(Prof *p, const ProfGpuBatch *b) {
    if (writer_ready(p, b->n_rows > 0) != 0) return -1;
    ProfGpuWriter *w = p->gpu_writer;
    for (int64_t i = 0; i < b->n_rows; i++)
        if (write_row(p, w, &b->rows[i]) != 0) return -1;
    for (int i = 0; i < b->n_agg; i++) {
        const GpuAggregate *g = &b->agg[i];
        int64_t pid = phase_id(p, w, g->phase);
        if (pid < 0) return -1;
        sqlite3_stmt *s = w->agg;
        sqlite3_bind_int64(s, 1, p->run_id);
        sqlite3_bind_int64(s, 2, g->step);
        sqlite3_bind_int64(s, 3, pid);
        sqlite3_bind_text(s, 4, activity_name(g->activity), -1, SQLITE_STATIC);
        sqlite3_bind_int(s, 5, g->copy_kind);
        sqlite3_bind_int64(s, 6, g->count);
        sqlite3_bind_int64(s, 7, g->total_ns);
        sqlite3_bind_int64(s, 8, g->bytes);
        if (step_done(s) != 0) return -1;
    }
    return 0;
}
