/* test_prof_gpu.c - GPU activity without a GPU: synthetic CUPTI-like records go through the real
 * collector (correlation -> step/phase, aggregates, trace filter) and the real writer thread into
 * a real database; then the SQL of the nsys stats reports cuda_gpu_kern_sum,
 * cuda_gpu_mem_time_sum, cuda_api_sum and nvtx_sum (written out here as profiling.md §1.5
 * describes them, with the median/stdev aggregates nsysstats registers) runs on the file and its
 * answers are checked against the input. Also: phase hooks balance, NOT NULL columns, dropped
 * records, basic level, schema migration 1 -> 2, and detr-prof report/export/summary. */
#include <math.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "../../profiler/prof.h"
#include "../../profiler/prof_gpu_records.h"
#include "../../profiler/prof_nvml.h"
#include "check.h"
#include "test_nsys_agg.h"
#include "test_util.h"

static char g_dir[256];
static const char *g_build;

static sqlite3 *open_ro(const char *path) {
    sqlite3 *db = NULL;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) return NULL;
    db_register_median_stdev(db); /* as nsysstats does */
    return db;
}

static int64_t q_int(sqlite3 *db, const char *sql) {
    sqlite3_stmt *s;
    int64_t v = -999;
    if (sqlite3_prepare_v2(db, sql, -1, &s, NULL) != SQLITE_OK) {
        fprintf(stderr, "query failed: %s: %s\n", sql, sqlite3_errmsg(db));
        return -998;
    }
    if (sqlite3_step(s) == SQLITE_ROW && sqlite3_column_type(s, 0) != SQLITE_NULL) v = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    return v;
}

/* ---- the nsys reports' SQL, written out (profiling.md §1.5) ---- */

/* cuda_gpu_kern_sum: kernels grouped by (demangled) name through the NAMED view. */
static const char *const KERN_SUM_VIEW =
    "CREATE TEMP VIEW IF NOT EXISTS CUPTI_ACTIVITY_KIND_KERNEL_NAMED AS SELECT k.*, "
    "(SELECT value FROM StringIds WHERE id = k.demangledName) AS name FROM CUPTI_ACTIVITY_KIND_KERNEL AS k";
static const char *const KERN_SUM =
    "WITH summary AS (SELECT name AS name, sum(\"end\" - start) AS total, count(*) AS num, "
    "avg(\"end\" - start) AS avg, median(\"end\" - start) AS med, min(\"end\" - start) AS min, "
    "max(\"end\" - start) AS max, stdev(\"end\" - start) AS stddev FROM CUPTI_ACTIVITY_KIND_KERNEL_NAMED "
    "GROUP BY 1), totals AS (SELECT sum(total) AS total FROM summary) "
    "SELECT round(summary.total * 100.0 / (SELECT total FROM totals), 1) AS \"Time:ratio_%\", "
    "summary.total AS \"Total Time:dur_ns\", summary.num AS \"Instances\", round(summary.avg, 1) AS \"Avg:dur_ns\", "
    "round(summary.med, 1) AS \"Med:dur_ns\", summary.min AS \"Min:dur_ns\", summary.max AS \"Max:dur_ns\", "
    "round(summary.stddev, 1) AS \"StdDev:dur_ns\", summary.name AS \"Name\" FROM summary ORDER BY 2 DESC, 9";

/* cuda_gpu_mem_time_sum: copies named by ENUM_CUDA_MEMCPY_OPER's label, memsets together. */
static const char *const MEM_TIME_SUM =
    "WITH memops AS (SELECT '[CUDA memcpy ' || mos.label || ']' AS name, mcpy.\"end\" - mcpy.start AS duration "
    "FROM CUPTI_ACTIVITY_KIND_MEMCPY AS mcpy INNER JOIN ENUM_CUDA_MEMCPY_OPER AS mos ON mos.id = mcpy.copyKind "
    "UNION ALL SELECT '[CUDA memset]' AS name, \"end\" - start AS duration FROM CUPTI_ACTIVITY_KIND_MEMSET), "
    "summary AS (SELECT name AS name, sum(duration) AS total, count(*) AS num, avg(duration) AS avg, "
    "median(duration) AS med, min(duration) AS min, max(duration) AS max, stdev(duration) AS stddev "
    "FROM memops GROUP BY 1), totals AS (SELECT sum(total) AS total FROM summary) "
    "SELECT round(summary.total * 100.0 / (SELECT total FROM totals), 1) AS \"Time:ratio_%\", "
    "summary.total AS \"Total Time:dur_ns\", summary.num AS \"Count\", round(summary.avg, 1) AS \"Avg:dur_ns\", "
    "round(summary.med, 1) AS \"Med:dur_ns\", summary.min AS \"Min:dur_ns\", summary.max AS \"Max:dur_ns\", "
    "round(summary.stddev, 1) AS \"StdDev:dur_ns\", summary.name AS \"Operation\" FROM summary ORDER BY 2 DESC, 9";

/* cuda_api_sum: runtime calls by name, the "_vNNNN[N]" version suffix cut. */
static const char *const API_SUM =
    "WITH summary AS (SELECT nameId AS nameId, sum(\"end\" - start) AS total, count(*) AS num, "
    "avg(\"end\" - start) AS avg, median(\"end\" - start) AS med, min(\"end\" - start) AS min, "
    "max(\"end\" - start) AS max, stdev(\"end\" - start) AS stddev FROM CUPTI_ACTIVITY_KIND_RUNTIME GROUP BY 1), "
    "totals AS (SELECT sum(total) AS total FROM summary) "
    "SELECT round(summary.total * 100.0 / (SELECT total FROM totals), 1) AS \"Time:ratio_%\", "
    "summary.total AS \"Total Time:dur_ns\", summary.num AS \"Num Calls\", round(summary.avg, 1) AS \"Avg:dur_ns\", "
    "round(summary.med, 1) AS \"Med:dur_ns\", summary.min AS \"Min:dur_ns\", summary.max AS \"Max:dur_ns\", "
    "round(summary.stddev, 1) AS \"StdDev:dur_ns\", "
    "CASE WHEN substr(ids.value, -6, 2) = '_v' THEN substr(ids.value, 1, length(ids.value) - 6) "
    "WHEN substr(ids.value, -7, 2) = '_v' THEN substr(ids.value, 1, length(ids.value) - 7) "
    "ELSE ids.value END AS \"Name\" FROM summary LEFT JOIN StringIds AS ids ON ids.id = summary.nameId "
    "ORDER BY 2 DESC, 9";

/* nvtx_sum: push/pop (59, 70) and start/end (60, 71) ranges named "domain:range" through the
 * domain-create rows (75) of the same process. */
static const char *const NVTX_SUM =
    "WITH domains AS (SELECT domainId AS id, (globalTid & 0x0000FFFFFF000000) AS pid, "
    "coalesce((SELECT value FROM StringIds WHERE id = textId), text) AS name FROM NVTX_EVENTS WHERE eventType = 75), "
    "ranges AS (SELECT CASE WHEN e.eventType IN (59, 70) THEN 'PushPop' ELSE 'StartEnd' END AS style, "
    "coalesce(d.name || ':', '') || coalesce((SELECT value FROM StringIds WHERE id = e.textId), e.text) AS name, "
    "e.\"end\" - e.start AS duration FROM NVTX_EVENTS AS e LEFT JOIN domains AS d ON d.id = e.domainId "
    "AND d.pid = (e.globalTid & 0x0000FFFFFF000000) WHERE e.eventType IN (59, 60, 70, 71) AND e.\"end\" IS NOT NULL), "
    "summary AS (SELECT name, style, sum(duration) AS total, count(*) AS num, avg(duration) AS avg, "
    "median(duration) AS med, min(duration) AS min, max(duration) AS max, stdev(duration) AS stddev "
    "FROM ranges GROUP BY name, style), totals AS (SELECT sum(total) AS total FROM summary) "
    "SELECT round(total * 100.0 / (SELECT total FROM totals), 1) AS \"Time:ratio_%\", total AS \"Total Time:dur_ns\", "
    "num AS \"Instances\", round(avg, 1) AS \"Avg:dur_ns\", round(med, 1) AS \"Med:dur_ns\", min AS \"Min:dur_ns\", "
    "max AS \"Max:dur_ns\", round(stddev, 1) AS \"StdDev:dur_ns\", style AS \"Style\", name AS \"Range\" "
    "FROM summary ORDER BY 2 DESC, 10";

/* Runs a report and returns the row whose column `key_col` is `key`, as int64 values of the
 * columns in cols[] (out[]). Returns 1 when found, 0 if not, -1 on a SQL error. Also counts rows. */
static int report_row(sqlite3 *db, const char *sql, int key_col, const char *key, const int *cols, int n_cols,
                      double *out, int *n_rows) {
    sqlite3_stmt *s;
    if (sqlite3_prepare_v2(db, sql, -1, &s, NULL) != SQLITE_OK) {
        fprintf(stderr, "report SQL failed: %s\n", sqlite3_errmsg(db));
        return -1;
    }
    int found = 0, rows = 0, rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        rows++;
        const char *k = (const char *)sqlite3_column_text(s, key_col);
        if (!found && k && strcmp(k, key) == 0) {
            for (int i = 0; i < n_cols; i++) out[i] = sqlite3_column_double(s, cols[i]);
            found = 1;
        }
    }
    if (rc != SQLITE_DONE) fprintf(stderr, "report step failed: %s\n", sqlite3_errmsg(db));
    sqlite3_finalize(s);
    if (n_rows) *n_rows = rows;
    return rc == SQLITE_DONE ? found : -1;
}

/* ---- phase hooks: what prof_cupti.c would push onto CUPTI's CUSTOM0 stack ---- */

static uint64_t g_pushed[64];
static int g_depth, g_max_depth, g_pushes;
static void hook_push(int64_t step, int phase) {
    if (g_depth < 64) g_pushed[g_depth] = prof_gpu_external_id(step, phase);
    g_depth++, g_pushes++;
    if (g_depth > g_max_depth) g_max_depth = g_depth;
}
static void hook_pop(void) { g_depth--; }
static const ProfPhaseHooks g_hooks = {hook_push, hook_pop};

/* ---- synthetic records ---- */

typedef struct {
    int64_t t;          /* next start time */
    uint32_t corr;      /* next correlation id */
    ProfGpuCollector *c;
    int64_t global_tid;
} Gen;

static void add(Gen *g, const ProfGpuActivity *a) { prof_gpu_collector_add(g->c, a); }

/* One API call of step/phase (phase < 0: outside every range) launching a kernel: external
 * correlation, runtime record, kernel. Returns the kernel's duration. */
static void launch(Gen *g, int64_t step, int phase, const char *mangled, const char *demangled, int64_t dur,
                   ProfGpuActivity *last_kernel) {
    uint32_t corr = g->corr++;
    ProfGpuActivity a;
    if (phase >= 0) {
        memset(&a, 0, sizeof(a));
        a.kind = PROF_GPU_EXTERNAL;
        a.correlation_id = corr;
        a.u.external.external_kind = PROF_GPU_EXTERNAL_KIND_CUSTOM0;
        a.u.external.external_id = prof_gpu_external_id(step, phase);
        add(g, &a);
    }
    memset(&a, 0, sizeof(a));
    a.kind = PROF_GPU_RUNTIME;
    a.start = g->t;
    a.end = g->t + 3000;
    a.correlation_id = corr;
    a.u.runtime.global_tid = g->global_tid;
    a.u.runtime.name = "cudaLaunchKernel_v7000";
    add(g, &a);
    memset(&a, 0, sizeof(a));
    a.kind = PROF_GPU_KERNEL;
    a.start = g->t + 5000;
    a.end = a.start + dur;
    a.device_id = 0, a.context_id = 1, a.stream_id = 7, a.correlation_id = corr;
    a.u.kernel.grid_x = 64, a.u.kernel.grid_y = 2, a.u.kernel.grid_z = 1;
    a.u.kernel.block_x = 256, a.u.kernel.block_y = 1, a.u.kernel.block_z = 1;
    a.u.kernel.registers_per_thread = 32, a.u.kernel.static_shared_memory = 1024;
    a.u.kernel.grid_id = corr;
    a.u.kernel.name = mangled;
    a.u.kernel.demangled = demangled;
    add(g, &a);
    if (last_kernel) *last_kernel = a;
    g->t += dur + 10000;
}

static void copy(Gen *g, int64_t step, int phase, int kind, int64_t bytes, int64_t dur) {
    uint32_t corr = g->corr++;
    ProfGpuActivity a;
    memset(&a, 0, sizeof(a));
    a.kind = PROF_GPU_EXTERNAL;
    a.correlation_id = corr;
    a.u.external.external_kind = PROF_GPU_EXTERNAL_KIND_CUSTOM0;
    a.u.external.external_id = prof_gpu_external_id(step, phase);
    add(g, &a);
    memset(&a, 0, sizeof(a));
    a.kind = PROF_GPU_RUNTIME;
    a.start = g->t, a.end = g->t + 2000, a.correlation_id = corr;
    a.u.runtime.global_tid = g->global_tid;
    a.u.runtime.name = "cudaMemcpyAsync_v3020";
    add(g, &a);
    memset(&a, 0, sizeof(a));
    a.kind = PROF_GPU_MEMCPY;
    a.start = g->t + 4000, a.end = a.start + dur, a.context_id = 1, a.stream_id = 7, a.correlation_id = corr;
    a.u.copy.bytes = bytes, a.u.copy.copy_kind = kind;
    a.u.copy.src_kind = prof_gpu_mem_kind_from_cupti(2), a.u.copy.dst_kind = prof_gpu_mem_kind_from_cupti(3);
    add(g, &a);
    g->t += dur + 10000;
}

static void memset_rec(Gen *g, int64_t step, int phase, int64_t bytes, int64_t dur) {
    uint32_t corr = g->corr++;
    ProfGpuActivity a;
    memset(&a, 0, sizeof(a));
    a.kind = PROF_GPU_EXTERNAL;
    a.correlation_id = corr;
    a.u.external.external_kind = PROF_GPU_EXTERNAL_KIND_CUSTOM0;
    a.u.external.external_id = prof_gpu_external_id(step, phase);
    add(g, &a);
    memset(&a, 0, sizeof(a));
    a.kind = PROF_GPU_MEMSET;
    a.start = g->t, a.end = g->t + dur, a.context_id = 1, a.stream_id = 7, a.correlation_id = corr;
    a.u.set.bytes = bytes, a.u.set.mem_kind = prof_gpu_mem_kind_from_cupti(3);
    add(g, &a);
    memset(&a, 0, sizeof(a));
    a.kind = PROF_GPU_SYNC;
    a.start = g->t + dur, a.end = g->t + dur + 500, a.context_id = 1, a.stream_id = 7, a.correlation_id = corr;
    a.u.sync.sync_type = 3;
    a.u.sync.event_id = -1;
    add(g, &a);
    g->t += dur + 10000;
}

static const char *const GEMM_M = "_Z6gemm_kIfEvPT_i", *const GEMM_D = "void gemm_k<float>(float*, int)";
static const char *const RELU_M = "_ZN4detr4reluEPfl", *const RELU_D = "detr::relu(float*, long)";

typedef struct {
    int keep_only_step; /* -1: keep every step */
} KeepCtx;
static int keep_step(void *ctx, int64_t step) { return step == ((KeepCtx *)ctx)->keep_only_step; }

/* A run with 2 recorded steps (real ranges) and synthetic GPU activity: per step, backbone 2 gemm
 * (1000, 3000 ns) + 1 relu (500 ns), backward 1 gemm (2000 ns); step 1 also an HtoD copy (4096 B,
 * 800 ns) in h2d and a memset (256 B, 100 ns) in optimizer; one relu (700 ns) outside every range.
 * keep_rows/keep: the collector's trace settings. Returns the run's start. */
static int write_run(const char *path, ProfLevel level, int keep_rows, KeepCtx *keep, int64_t queue_bytes,
                     int64_t *n_lost_out) {
    char err[512];
    ProfOptions o;
    prof_options_default(&o, level);
    if (queue_bytes > 0) o.gpu_queue_bytes = queue_bytes;
    ProfRunInfo info = {.device = "cuda:0", .command_line = "test_prof_gpu"};
    Prof *p = prof_open_opts(path, &info, &o, err, sizeof(err));
    if (!p) {
        fprintf(stderr, "prof_open: %s\n", err);
        return -1;
    }
    ProfGpuInfo gi = {.id = 0, .name = "Synthetic GPU", .sm_count = 132, .compute_major = 9};
    prof_gpu_info(p, &gi);
    /* two real steps with phase ranges: NVTX_EVENTS, DETR_PHASES, DETR_STEPS */
    for (int step = 1; step <= 2; step++) {
        prof_step_begin(p, step, 0);
        prof_range_push(p, PROF_PHASE_BACKBONE);
        usleep(1000);
        prof_range_pop(p);
        prof_range_push(p, PROF_PHASE_BACKWARD);
        usleep(1000);
        prof_range_pop(p);
        ProfStepRecord r;
        prof_step_record_init(&r);
        r.images = 2;
        prof_step_end(p, &r);
    }
    Gen g = {prof_now_ns() - 1000000, 100, NULL, 0};
    g.global_tid = (int64_t)getpid() << 24 | 1;
    g.c = prof_gpu_collector_new(p, keep_rows, keep ? keep_step : NULL, keep);
    for (int step = 1; step <= 2; step++) {
        if (step == 1) copy(&g, step, PROF_PHASE_H2D, 1, 4096, 800);
        launch(&g, step, PROF_PHASE_BACKBONE, GEMM_M, GEMM_D, 1000, NULL);
        launch(&g, step, PROF_PHASE_BACKBONE, GEMM_M, GEMM_D, 3000, NULL);
        launch(&g, step, PROF_PHASE_BACKBONE, RELU_M, RELU_D, 500, NULL);
        prof_gpu_collector_submit(g.c); /* one "CUPTI buffer" per phase: correlation across batches */
        launch(&g, step, PROF_PHASE_BACKWARD, GEMM_M, GEMM_D, 2000, NULL);
        if (step == 1) memset_rec(&g, step, PROF_PHASE_OPTIMIZER, 256, 100);
    }
    launch(&g, -1, -1, RELU_M, RELU_D, 700, NULL);
    int64_t unattributed = prof_gpu_collector_unattributed(g.c);
    int64_t sent = prof_gpu_collector_submit(g.c);
    prof_gpu_collector_free(g.c);
    if (n_lost_out) *n_lost_out = sent;
    prof_gpu_lost(p, 7); /* as prof_cupti.c reports CUPTI's dropped records */
    int rc = prof_close(p, 0, err, sizeof(err));
    if (rc != 0) fprintf(stderr, "prof_close: %s\n", err);
    return rc == 0 && unattributed == 1 ? 0 : -1;
}

static void test_hooks(void) {
    char path[400], err[512];
    snprintf(path, sizeof(path), "%s/hooks.sqlite", g_dir);
    Prof *p = prof_open(path, NULL, PROF_TRACE, err, sizeof(err));
    CHECK("hooks: open", p != NULL, "%s", err);
    if (!p) return;
    prof_set_phase_hooks(&g_hooks);
    prof_step_begin(p, 5, 0);
    prof_range_push(p, PROF_PHASE_BACKBONE);
    CHECK("hooks: step then phase pushed with the current step",
          g_depth == 2 && g_pushed[0] == prof_gpu_external_id(5, PROF_PHASE_STEP) &&
          g_pushed[1] == prof_gpu_external_id(5, PROF_PHASE_BACKBONE), "depth %d", g_depth);
    prof_range_push_text(p, "layer1");
    CHECK("hooks: free-text ranges are not pushed", g_depth == 2, "depth %d", g_depth);
    prof_range_pop(p);
    prof_range_pop(p);
    ProfStepRecord r;
    prof_step_record_init(&r);
    prof_step_end(p, &r);
    CHECK("hooks: every push popped", g_depth == 0 && g_pushes == 2, "depth %d, pushes %d", g_depth, g_pushes);
    prof_step_begin(p, 6, 0);
    prof_step_abandon(p, 5);
    prof_range_push(p, PROF_PHASE_EVAL);
    prof_close(p, 0, err, sizeof(err)); /* closed inside a range */
    CHECK("hooks: abandon and close inside a range pop too", g_depth == 0 && g_pushes == 4, "depth %d", g_depth);
    prof_set_phase_hooks(NULL);
    prof_range_push(NULL, PROF_PHASE_LOSS);
    prof_range_pop(NULL);
    CHECK("hooks: removed, and never called for a NULL Prof", g_pushes == 4, "%d", g_pushes);
    int64_t step;
    int phase;
    CHECK("external id round trip", prof_gpu_external_decode(prof_gpu_external_id(123456789, PROF_PHASE_LOSS), &step,
                                                             &phase) == 0 && step == 123456789 && phase == PROF_PHASE_LOSS, "");
    CHECK("external id of no step", prof_gpu_external_decode(prof_gpu_external_id(-1, PROF_PHASE_EVAL), &step, &phase) == 0 &&
          step == -1 && phase == PROF_PHASE_EVAL, "");
    CHECK("external id with a bad phase refused", prof_gpu_external_decode(0xFF, &step, &phase) == -1, "");
}

static void test_short_names(void) {
    const char *cases[][2] = {
        {"void gemm_k<float>(float*, int)", "gemm_k"},
        {"detr::relu(float*, long)", "relu"},
        {"void at::native::(anonymous namespace)::reduce<float, 4>(at::Tensor, int) const", "reduce"},
        {"add_kernel", "add_kernel"},
        {"void cutlass::Kernel2<cutlass_80_tensorop_s1688gemm_128x128_32x3_nn_align4>(Params)", "Kernel2"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char out[128];
        prof_gpu_short_name(cases[i][0], out, sizeof(out));
        CHECK("short name", strcmp(out, cases[i][1]) == 0, "'%s' -> '%s', want '%s'", cases[i][0], out, cases[i][1]);
    }
    CHECK("memory kinds: CUPTI unknown -> nsys 7, pinned 2 -> 1, device 3 -> 2",
          prof_gpu_mem_kind_from_cupti(0) == 7 && prof_gpu_mem_kind_from_cupti(2) == 1 &&
          prof_gpu_mem_kind_from_cupti(3) == 2 && prof_gpu_mem_kind_from_cupti(99) == 7, "");
}

/* Every column declared NOT NULL in our CUPTI tables is NOT NULL in the file, and the columns the
 * nsys dump declares NOT NULL are declared so. */
static void check_not_null(sqlite3 *db) {
    const char *required[] = {"CUPTI_ACTIVITY_KIND_KERNEL.start", "CUPTI_ACTIVITY_KIND_KERNEL.end",
                              "CUPTI_ACTIVITY_KIND_KERNEL.deviceId", "CUPTI_ACTIVITY_KIND_KERNEL.contextId",
                              "CUPTI_ACTIVITY_KIND_KERNEL.streamId", "CUPTI_ACTIVITY_KIND_KERNEL.demangledName",
                              "CUPTI_ACTIVITY_KIND_KERNEL.shortName", "CUPTI_ACTIVITY_KIND_KERNEL.registersPerThread",
                              "CUPTI_ACTIVITY_KIND_KERNEL.gridX", "CUPTI_ACTIVITY_KIND_KERNEL.blockZ",
                              "CUPTI_ACTIVITY_KIND_KERNEL.staticSharedMemory",
                              "CUPTI_ACTIVITY_KIND_KERNEL.dynamicSharedMemory",
                              "CUPTI_ACTIVITY_KIND_KERNEL.localMemoryPerThread",
                              "CUPTI_ACTIVITY_KIND_KERNEL.localMemoryTotal", "CUPTI_ACTIVITY_KIND_KERNEL.gridId",
                              "CUPTI_ACTIVITY_KIND_MEMCPY.bytes", "CUPTI_ACTIVITY_KIND_MEMCPY.copyKind"};
    for (size_t i = 0; i < sizeof(required) / sizeof(required[0]); i++) {
        char table[64], sql[256];
        const char *dot = strchr(required[i], '.');
        snprintf(table, sizeof(table), "%.*s", (int)(dot - required[i]), required[i]);
        snprintf(sql, sizeof(sql), "SELECT \"notnull\" FROM pragma_table_info('%s') WHERE name = '%s'", table, dot + 1);
        CHECK("NOT NULL as in the nsys dump", q_int(db, sql) == 1, "%s", required[i]);
    }
    const char *tables[] = {"CUPTI_ACTIVITY_KIND_KERNEL", "CUPTI_ACTIVITY_KIND_MEMCPY", "CUPTI_ACTIVITY_KIND_MEMSET",
                            "CUPTI_ACTIVITY_KIND_RUNTIME", "CUPTI_ACTIVITY_KIND_SYNCHRONIZATION"};
    for (size_t t = 0; t < sizeof(tables) / sizeof(tables[0]); t++) {
        char sql[256];
        snprintf(sql, sizeof(sql), "SELECT count(*) FROM pragma_table_info('%s') WHERE \"notnull\" = 1", tables[t]);
        int64_t n_nn = q_int(db, sql);
        snprintf(sql, sizeof(sql), "SELECT count(*) FROM %s", tables[t]);
        CHECK("CUPTI table has rows and NOT NULL columns", q_int(db, sql) > 0 && n_nn >= 5, "%s: %lld NOT NULL",
              tables[t], (long long)n_nn);
    }
    CHECK("kernel: 0 for unknown launchType/cacheConfig, names resolve in StringIds",
          q_int(db, "SELECT count(*) FROM CUPTI_ACTIVITY_KIND_KERNEL k WHERE launchType IS NULL OR cacheConfig IS NULL "
                    "OR NOT EXISTS (SELECT 1 FROM StringIds WHERE id = k.shortName) OR NOT EXISTS "
                    "(SELECT 1 FROM StringIds WHERE id = k.mangledName)") == 0, "");
    CHECK("kernel: shortName is the base name",
          q_int(db, "SELECT count(*) FROM CUPTI_ACTIVITY_KIND_KERNEL k JOIN StringIds s ON s.id = k.shortName "
                    "WHERE s.value = 'gemm_k'") == 6, "");
    CHECK("kernel: globalPid = pid << 24 of the run (the reports' join key)",
          q_int(db, "SELECT count(*) FROM CUPTI_ACTIVITY_KIND_KERNEL k JOIN DETR_RUNS r ON r.global_pid = k.globalPid") == 9,
          "");
}

static void test_trace_run(void) {
    char path[400];
    snprintf(path, sizeof(path), "%s/trace.sqlite", g_dir);
    CHECK("trace: run written", write_run(path, PROF_TRACE, 1, NULL, 0, NULL) == 0, "see stderr");
    sqlite3 *db = open_ro(path);
    if (!db) return;
    CHECK("trace: 9 kernels, 1 copy, 1 memset, 10 runtime calls, 1 sync, 10 correlations",
          q_int(db, "SELECT count(*) FROM CUPTI_ACTIVITY_KIND_KERNEL") == 9 &&
          q_int(db, "SELECT count(*) FROM CUPTI_ACTIVITY_KIND_MEMCPY") == 1 &&
          q_int(db, "SELECT count(*) FROM CUPTI_ACTIVITY_KIND_MEMSET") == 1 &&
          q_int(db, "SELECT count(*) FROM CUPTI_ACTIVITY_KIND_RUNTIME") == 10 &&
          q_int(db, "SELECT count(*) FROM CUPTI_ACTIVITY_KIND_SYNCHRONIZATION") == 1 &&
          q_int(db, "SELECT count(*) FROM DETR_GPU_CORRELATION") == 10,
          "%lld kernels, %lld runtime, %lld corr", (long long)q_int(db, "SELECT count(*) FROM CUPTI_ACTIVITY_KIND_KERNEL"),
          (long long)q_int(db, "SELECT count(*) FROM CUPTI_ACTIVITY_KIND_RUNTIME"),
          (long long)q_int(db, "SELECT count(*) FROM DETR_GPU_CORRELATION"));
    check_not_null(db);

    /* attribution: every kernel launched inside a range has its phase through the correlation */
    CHECK("attribution: every kernel but the one launched outside all ranges has a phase",
          q_int(db, "SELECT count(*) FROM CUPTI_ACTIVITY_KIND_KERNEL k LEFT JOIN DETR_GPU_CORRELATION c ON "
                    "c.correlationId = k.correlationId WHERE c.name_id IS NULL") == 1, "");
    CHECK("attribution: backbone kernel time 2 x 4500 ns, backward 2 x 2000 ns",
          q_int(db, "SELECT sum(k.\"end\" - k.start) FROM CUPTI_ACTIVITY_KIND_KERNEL k JOIN DETR_GPU_CORRELATION c "
                    "ON c.correlationId = k.correlationId JOIN StringIds s ON s.id = c.name_id WHERE s.value = 'backbone'") == 9000 &&
          q_int(db, "SELECT sum(k.\"end\" - k.start) FROM CUPTI_ACTIVITY_KIND_KERNEL k JOIN DETR_GPU_CORRELATION c "
                    "ON c.correlationId = k.correlationId JOIN StringIds s ON s.id = c.name_id WHERE s.value = 'backward' "
                    "AND c.step = 2") == 2000, "");
    CHECK("aggregates: DETR_GPU_STEPS kernel ns per step and phase",
          q_int(db, "SELECT total_ns FROM DETR_GPU_STEPS g JOIN StringIds s ON s.id = g.phase_id WHERE step = 1 AND "
                    "s.value = 'backbone' AND activity = 'kernel'") == 4500 &&
          q_int(db, "SELECT count FROM DETR_GPU_STEPS g JOIN StringIds s ON s.id = g.phase_id WHERE step = 2 AND "
                    "s.value = 'backbone' AND activity = 'kernel'") == 3 &&
          q_int(db, "SELECT total_ns FROM DETR_GPU_STEPS g JOIN StringIds s ON s.id = g.phase_id WHERE step = -1 AND "
                    "s.value = 'unattributed'") == 700, "");
    CHECK("aggregates: copy bytes by kind, memset bytes",
          q_int(db, "SELECT bytes FROM DETR_GPU_STEPS WHERE step = 1 AND activity = 'memcpy' AND copy_kind = 1") == 4096 &&
          q_int(db, "SELECT bytes FROM DETR_GPU_STEPS WHERE step = 1 AND activity = 'memset'") == 256, "");
    CHECK("dropped: CUPTI's dropped records counted in DETR_RUNS",
          q_int(db, "SELECT cupti_dropped_records FROM DETR_RUNS") == 7 &&
          q_int(db, "SELECT dropped_gpu_records FROM DETR_RUNS") == 0, "");

    /* the nsys reports */
    sqlite3_exec(db, KERN_SUM_VIEW, NULL, NULL, NULL);
    double v[4];
    int rows = 0;
    int cols[] = {1, 2, 4, 5};
    int found = report_row(db, KERN_SUM, 8, GEMM_D, cols, 4, v, &rows);
    CHECK("cuda_gpu_kern_sum: gemm total 12000 ns, 6 instances, median 2000, min 1000",
          found == 1 && rows == 2 && v[0] == 12000 && v[1] == 6 && v[2] == 2000 && v[3] == 1000,
          "found %d rows %d: %.0f %.0f %.0f %.0f", found, rows, v[0], v[1], v[2], v[3]);
    found = report_row(db, KERN_SUM, 8, RELU_D, cols, 4, v, &rows);
    CHECK("cuda_gpu_kern_sum: relu 1700 ns, 3 instances", found == 1 && v[0] == 1700 && v[1] == 3, "%.0f %.0f", v[0], v[1]);
    int mcols[] = {1, 2};
    found = report_row(db, MEM_TIME_SUM, 8, "[CUDA memcpy Host-to-Device]", mcols, 2, v, &rows);
    CHECK("cuda_gpu_mem_time_sum: one HtoD copy of 800 ns", found == 1 && rows == 2 && v[0] == 800 && v[1] == 1,
          "found %d rows %d", found, rows);
    found = report_row(db, MEM_TIME_SUM, 8, "[CUDA memset]", mcols, 2, v, &rows);
    CHECK("cuda_gpu_mem_time_sum: one memset of 100 ns", found == 1 && v[0] == 100 && v[1] == 1, "");
    found = report_row(db, API_SUM, 8, "cudaLaunchKernel", mcols, 2, v, &rows);
    CHECK("cuda_api_sum: 9 cudaLaunchKernel calls of 3000 ns, _v7000 cut",
          found == 1 && rows == 2 && v[0] == 27000 && v[1] == 9, "found %d rows %d %.0f", found, rows, v[0]);
    found = report_row(db, API_SUM, 8, "cudaMemcpyAsync", mcols, 2, v, &rows);
    CHECK("cuda_api_sum: cudaMemcpyAsync, _v3020 cut", found == 1 && v[1] == 1, "");
    found = report_row(db, NVTX_SUM, 9, "detr:backbone", mcols, 2, v, &rows);
    CHECK("nvtx_sum: detr:backbone twice, about 1 ms each", found == 1 && v[1] == 2 && v[0] >= 2e6 && v[0] < 2e9,
          "found %d %.0f", found, v[0]);
    found = report_row(db, NVTX_SUM, 9, "detr:step", mcols, 2, v, &rows);
    CHECK("nvtx_sum: detr:step twice", found == 1 && v[1] == 2, "");
    CHECK("ENUM tables populated", q_int(db, "SELECT count(*) FROM ENUM_CUDA_MEMCPY_OPER") == 14 &&
          q_int(db, "SELECT count(*) FROM ENUM_CUDA_MEM_KIND") == 8 &&
          q_int(db, "SELECT count(*) FROM ENUM_CUPTI_SYNC_TYPE") == 5 &&
          q_int(db, "SELECT count(*) FROM TARGET_INFO_GPU") == 1, "");
    sqlite3_close(db);

    /* detr-prof picks the tables up */
    char cmd[1400], *out = NULL, *err = NULL;
    snprintf(cmd, sizeof(cmd), "%s/detr-prof export %s --chrome-trace %s/trace.json", g_build, path, g_dir);
    int rc = run_capture(g_dir, cmd, &out, &err);
    free(out), free(err);
    snprintf(cmd, sizeof(cmd), "%s/trace.json", g_dir);
    char *json = read_text(cmd);
    CHECK("detr-prof export: kernels, copies and runtime calls in the trace",
          rc == 0 && json && strstr(json, "\"gemm_k\"") && strstr(json, "\"cat\":\"kernel\"") &&
          strstr(json, "Memcpy HtoD") && strstr(json, "\"cudaLaunchKernel\""), "rc %d", rc);
    free(json);
    snprintf(cmd, sizeof(cmd), "%s/detr-prof report %s -o %s/report.html", g_build, path, g_dir);
    rc = run_capture(g_dir, cmd, &out, &err);
    free(out), free(err);
    snprintf(cmd, sizeof(cmd), "%s/report.html", g_dir);
    char *html = read_text(cmd);
    CHECK("detr-prof report: the GPU kernels in the page's data", rc == 0 && html && strstr(html, "gemm_k") &&
          strstr(html, "kernel_totals"), "rc %d", rc);
    free(html);
    snprintf(cmd, sizeof(cmd), "%s/detr-prof summary %s", g_build, path);
    rc = run_capture(g_dir, cmd, &out, &err);
    CHECK("detr-prof summary shows GPU time per phase and the top kernels",
          rc == 0 && out && strstr(out, "GPU time per step by phase") && strstr(out, "top kernels"),
          "rc %d: %.600s", rc, out ? out : "");
    free(out), free(err);
}

static void test_basic_and_schedule(void) {
    char path[400];
    snprintf(path, sizeof(path), "%s/basic.sqlite", g_dir);
    CHECK("basic: run written", write_run(path, PROF_BASIC, 0, NULL, 0, NULL) == 0, "");
    sqlite3 *db = open_ro(path);
    if (db) {
        CHECK("basic: no raw CUDA activity tables, only the per-step aggregates",
              q_int(db, "SELECT count(*) FROM sqlite_master WHERE name LIKE 'CUPTI_ACTIVITY_KIND_%'") == 0 &&
              q_int(db, "SELECT count(*) FROM DETR_GPU_CORRELATION") == 0 &&
              q_int(db, "SELECT sum(total_ns) FROM DETR_GPU_STEPS WHERE activity = 'kernel'") == 2 * 6500 + 700, "");
        sqlite3_close(db);
    }
    snprintf(path, sizeof(path), "%s/sched.sqlite", g_dir);
    KeepCtx keep = {2};
    CHECK("schedule: run written", write_run(path, PROF_TRACE, 1, &keep, 0, NULL) == 0, "");
    db = open_ro(path);
    if (db) {
        CHECK("schedule: raw rows of the traced step only, aggregates of every step",
              q_int(db, "SELECT count(*) FROM CUPTI_ACTIVITY_KIND_KERNEL") == 4 &&
              q_int(db, "SELECT count(*) FROM CUPTI_ACTIVITY_KIND_MEMCPY") == 0 &&
              q_int(db, "SELECT min(step) FROM DETR_GPU_CORRELATION") == 2 &&
              q_int(db, "SELECT count(DISTINCT step) FROM DETR_GPU_STEPS") == 3, "");
        sqlite3_close(db);
    }
    snprintf(path, sizeof(path), "%s/dropped.sqlite", g_dir);
    int64_t sent = 0;
    CHECK("dropped: run written", write_run(path, PROF_TRACE, 1, NULL, 1000, &sent) == 0 && sent == -1, "sent %lld",
          (long long)sent);
    db = open_ro(path);
    if (db) {
        /* every batch is over the 1000-byte bound: all 3 batches' 32 records dropped and counted */
        int64_t dropped = q_int(db, "SELECT dropped_gpu_records FROM DETR_RUNS");
        CHECK("dropped: batches over the queue's GPU bound counted per record",
              dropped == 32 && q_int(db, "SELECT dropped_records FROM DETR_RUNS") == 3 &&
              q_int(db, "SELECT count(*) FROM sqlite_master WHERE name = 'CUPTI_ACTIVITY_KIND_KERNEL'") == 0,
              "dropped_gpu_records %lld", (long long)dropped);
        sqlite3_close(db);
    }
}

static void test_migration(void) {
    char path[400], err[512];
    snprintf(path, sizeof(path), "%s/v1.sqlite", g_dir);
    Prof *p = prof_open(path, NULL, PROF_BASIC, err, sizeof(err));
    CHECK("migration: open", p != NULL, "%s", err);
    if (!p) return;
    prof_close(p, 0, err, sizeof(err));
    /* turn the file back into a version-1 file */
    sqlite3 *db;
    sqlite3_open(path, &db);
    int ok = sqlite3_exec(db, "DROP TABLE DETR_GPU_CORRELATION; DROP TABLE DETR_GPU_STEPS; "
                              "ALTER TABLE DETR_RUNS DROP COLUMN dropped_gpu_records; "
                              "ALTER TABLE DETR_RUNS DROP COLUMN cupti_dropped_records; "
                              "ALTER TABLE DETR_STEPS DROP COLUMN loss_scale; "
                              "ALTER TABLE DETR_STEPS DROP COLUMN skipped; "
                              "ALTER TABLE DETR_STEPS DROP COLUMN gpu_util; "
                              "ALTER TABLE DETR_STEPS DROP COLUMN gpu_mem_util; "
                              "ALTER TABLE DETR_STEPS DROP COLUMN gpu_alloc_retries; "
                              "ALTER TABLE DETR_STEPS DROP COLUMN gpu_ooms; "
                              "UPDATE META_DATA_EXPORT SET value = '1' WHERE name = 'DETR_SCHEMA_VERSION'; "
                              "PRAGMA user_version = 1", NULL, NULL, NULL) == SQLITE_OK;
    sqlite3_close(db);
    CHECK("migration: version-1 file made", ok, "");
    p = prof_open(path, NULL, PROF_BASIC, err, sizeof(err));
    CHECK("migration: a version-1 file is opened and migrated", p != NULL, "%s", err);
    if (p) prof_close(p, 0, err, sizeof(err));
    db = open_ro(path);
    CHECK("migration: latest version, GPU tables and counters, loss-scale columns, both runs kept",
          q_int(db, "PRAGMA user_version") == PROF_SCHEMA_VERSION &&
          q_int(db, "SELECT count(*) FROM pragma_table_info('DETR_STEPS') WHERE name IN "
                    "('loss_scale', 'skipped', 'gpu_util', 'gpu_mem_util', 'gpu_alloc_retries', 'gpu_ooms')") == 6 && q_int(db, "SELECT count(*) FROM DETR_RUNS") == 2 &&
          q_int(db, "SELECT sum(dropped_gpu_records + cupti_dropped_records) FROM DETR_RUNS") == 0 &&
          q_int(db, "SELECT count(*) FROM DETR_GPU_STEPS") == 0 &&
          q_int(db, "SELECT value FROM META_DATA_EXPORT WHERE name = 'DETR_SCHEMA_VERSION'") == PROF_SCHEMA_VERSION, "");
    sqlite3_close(db);
}

/* NVML utilisation: the step record's columns, and the library's absence handled (on a machine
 * with the NVIDIA driver, the first device's bus id is not known here: only the writer path). */
static void test_nvml(void) {
    char path[400], err[512];
    snprintf(path, sizeof(path), "%s/nvml.sqlite", g_dir);
    Prof *p = prof_open(path, NULL, PROF_BASIC, err, sizeof(err));
    CHECK("nvml: open", p != NULL, "%s", err);
    if (!p) return;
    ProfStepRecord r;
    for (int s = 1; s <= 2; s++) {
        prof_step_begin(p, s, 0);
        prof_step_record_init(&r);
        if (s == 1) r.gpu_util = 87.0, r.gpu_mem_util = 41.0, r.gpu_alloc_retries = 2, r.gpu_ooms = 0;
        prof_step_end(p, &r);
    }
    prof_close(p, 0, err, sizeof(err));
    sqlite3 *db = open_ro(path);
    CHECK("nvml: utilisation and allocator counters stored per step, NULL when unknown",
          db && q_int(db, "SELECT count(*) FROM DETR_STEPS WHERE step = 1 AND gpu_util = 87 AND gpu_mem_util = 41 "
                          "AND gpu_alloc_retries = 2 AND gpu_ooms = 0") == 1 &&
              q_int(db, "SELECT count(*) FROM DETR_STEPS WHERE step = 2 AND gpu_util IS NULL AND gpu_mem_util IS NULL "
                        "AND gpu_alloc_retries IS NULL AND gpu_ooms IS NULL") == 1,
          "see DETR_STEPS in %s", path);
    if (db) sqlite3_close(db);
    char why[256] = "";
    ProfNvml *n = prof_nvml_open("0000:00:00.0", why, sizeof(why));
    if (access("/dev/nvidiactl", F_OK) == 0) {
        test_skip("nvml: absent library reported", "this machine has the NVIDIA driver");
    } else {
        CHECK("nvml: without the driver, open fails with the reason", n == NULL && strstr(why, "libnvidia-ml"),
              "why '%s'", why);
    }
    prof_nvml_close(n);
}

int main(void) {
    g_build = getenv("DETR_BUILD") ? getenv("DETR_BUILD") : "build";
    snprintf(g_dir, sizeof(g_dir), "/tmp/test_prof_gpu_XXXXXX");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_short_names();
    test_hooks();
    test_trace_run();
    test_basic_and_schedule();
    test_migration();
    test_nvml();
    char cmd[400], *out, *err;
    snprintf(cmd, sizeof(cmd), "rm -rf %s", g_dir);
    run_capture("/tmp", cmd, &out, &err);
    free(out), free(err);
    return test_finish();
}
