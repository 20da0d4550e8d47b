/* prof_schema.c - the database layout (version PROF_SCHEMA_VERSION), its creation and version
 * check, and the rows written once per run. docs/profile-schema.md describes every column.
 *
 * Two families of tables:
 *  - Nsight Systems-compatible tables, with nsys's exact table and column names and units (ns),
 *    so that queries written for `nsys export --type sqlite` files (e.g. the nvtx_sum report)
 *    run on ours: StringIds, NVTX_EVENTS, ENUM_NSYS_EVENT_TYPE, META_DATA_EXPORT,
 *    TARGET_INFO_SYSTEM_ENV, TARGET_INFO_SESSION_START_TIME, ANALYSIS_DETAILS, PROCESSES,
 *    ThreadNames, and, created lazily (GPU runs only, as nsys creates a table only when it has
 *    data): TARGET_INFO_GPU, the CUDA activity tables CUPTI_ACTIVITY_KIND_{KERNEL,MEMCPY,MEMSET,
 *    RUNTIME,SYNCHRONIZATION} and ENUM_CUDA_MEMCPY_OPER, ENUM_CUDA_MEM_KIND, ENUM_CUPTI_SYNC_TYPE.
 *  - Our own tables, prefixed DETR_, with a run_id in every row.
 *
 * Versions: schema_v1 is the first layout; each later version is a migration step that brings
 * the previous one up to date. A new file gets v1 and then every step, so a new file and a
 * migrated one are the same. */
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "prof_internal.h"

static const char *const schema_v1[] = {
    /* nsys-compatible */
    "CREATE TABLE StringIds (id INTEGER NOT NULL PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE META_DATA_EXPORT (name TEXT NOT NULL, value TEXT)",
    "CREATE TABLE ENUM_NSYS_EVENT_TYPE (id INTEGER NOT NULL PRIMARY KEY, name TEXT NOT NULL, "
    "label TEXT NOT NULL)",
    "CREATE TABLE NVTX_EVENTS (start INTEGER NOT NULL, \"end\" INTEGER, eventType INTEGER NOT NULL, "
    "rangeId INTEGER, category INTEGER, color INTEGER, text TEXT, globalTid INTEGER, "
    "endGlobalTid INTEGER, textId INTEGER REFERENCES StringIds(id), domainId INTEGER, "
    "uint64Value INTEGER, int64Value INTEGER, doubleValue REAL, uint32Value INTEGER, "
    "int32Value INTEGER, floatValue REAL, jsonTextId INTEGER, jsonText TEXT, binaryData BLOB)",
    "CREATE TABLE TARGET_INFO_SYSTEM_ENV (globalVid INTEGER NOT NULL, devStateName TEXT, "
    "name TEXT NOT NULL, nameEnum INTEGER, value TEXT NOT NULL)",
    "CREATE TABLE TARGET_INFO_SESSION_START_TIME (utcEpochNs INTEGER NOT NULL, utcTime TEXT NOT NULL, "
    "localTime TEXT NOT NULL)",
    "CREATE TABLE ANALYSIS_DETAILS (globalVid INTEGER NOT NULL, duration INTEGER NOT NULL, "
    "startTime INTEGER NOT NULL, stopTime INTEGER NOT NULL)",
    "CREATE TABLE PROCESSES (globalPid INTEGER, pid INTEGER, name TEXT)",
    "CREATE TABLE ThreadNames (nameId INTEGER NOT NULL REFERENCES StringIds(id), priority INTEGER, "
    "globalTid INTEGER)",
    /* ours */
    "CREATE TABLE DETR_RUNS (run_id INTEGER PRIMARY KEY AUTOINCREMENT, start_ns INTEGER NOT NULL, "
    "end_ns INTEGER, status TEXT NOT NULL, exit_code INTEGER, level TEXT NOT NULL, device TEXT, "
    "command_line TEXT, git_revision TEXT, hostname TEXT, cpu_model TEXT, cpu_cores INTEGER, "
    "gpu TEXT, library_versions TEXT, config_json TEXT, peak_flops REAL, pid INTEGER, "
    "global_pid INTEGER, schema_version INTEGER NOT NULL, "
    "records_written INTEGER NOT NULL DEFAULT 0, dropped_records INTEGER NOT NULL DEFAULT 0, "
    "dropped_steps INTEGER NOT NULL DEFAULT 0, dropped_ranges INTEGER NOT NULL DEFAULT 0, "
    "write_failed_records INTEGER NOT NULL DEFAULT 0, range_errors INTEGER NOT NULL DEFAULT 0, "
    "writer_cpu_ns INTEGER NOT NULL DEFAULT 0, writer_error TEXT)",
    "CREATE TABLE DETR_STEPS (run_id INTEGER NOT NULL REFERENCES DETR_RUNS(run_id), "
    "step INTEGER NOT NULL, epoch INTEGER, start_ns INTEGER NOT NULL, end_ns INTEGER NOT NULL, "
    "wall_ns INTEGER NOT NULL, data_wait_ns INTEGER, h2d_ns INTEGER, images INTEGER, loss REAL, "
    "lr REAL, lr_backbone REAL, grad_norm REAL, images_per_s REAL, flops REAL, mfu REAL, "
    "padded_fraction REAL, losses_json TEXT)",
    /* every loss term of a step is one key of DETR_STEPS.losses_json; the view gives them one row
     * each (a row per term in a table cost the writer twice as much per step) */
    "CREATE VIEW DETR_LOSSES AS SELECT s.run_id AS run_id, s.step AS step, j.key AS name, "
    "CAST(j.value AS REAL) AS value FROM DETR_STEPS AS s, json_each(s.losses_json) AS j",
    "CREATE TABLE DETR_PHASES (run_id INTEGER NOT NULL REFERENCES DETR_RUNS(run_id), step INTEGER, "
    "name_id INTEGER NOT NULL REFERENCES StringIds(id), start_ns INTEGER NOT NULL, "
    "duration_ns INTEGER NOT NULL, depth INTEGER NOT NULL, global_tid INTEGER NOT NULL)",
    "CREATE TABLE DETR_MEMORY (run_id INTEGER NOT NULL REFERENCES DETR_RUNS(run_id), "
    "step INTEGER NOT NULL, timestamp_ns INTEGER NOT NULL, category TEXT NOT NULL, "
    "current_bytes INTEGER, peak_bytes INTEGER)",
    "CREATE TABLE DETR_LOADER (run_id INTEGER NOT NULL REFERENCES DETR_RUNS(run_id), step INTEGER, "
    "wait_ns INTEGER, read_ns INTEGER, decode_ns INTEGER, augment_ns INTEGER, collate_ns INTEGER, "
    "bytes_read INTEGER, queue_depth INTEGER, padded_fraction REAL, skipped INTEGER, "
    "dropped_boxes INTEGER)",
    "CREATE TABLE DETR_EVAL (eval_id INTEGER PRIMARY KEY, "
    "run_id INTEGER NOT NULL REFERENCES DETR_RUNS(run_id), epoch INTEGER, step INTEGER, "
    "timestamp_ns INTEGER NOT NULL, duration_ns INTEGER, images INTEGER, ap REAL, ap50 REAL, "
    "ap75 REAL, ap_small REAL, ap_medium REAL, ap_large REAL, ar1 REAL, ar10 REAL, ar100 REAL, "
    "ar_small REAL, ar_medium REAL, ar_large REAL)",
    "CREATE TABLE DETR_EVAL_CATEGORIES (eval_id INTEGER NOT NULL REFERENCES DETR_EVAL(eval_id), "
    "run_id INTEGER NOT NULL, category_id INTEGER NOT NULL, ap REAL)",
    /* nsys creates no index; these serve the report's per-run queries and string interning */
    "CREATE INDEX DETR_idx_stringids_value ON StringIds(value)",
    "CREATE INDEX DETR_idx_steps ON DETR_STEPS(run_id, step)",
    "CREATE INDEX DETR_idx_phases ON DETR_PHASES(run_id, step)",
    "CREATE INDEX DETR_idx_memory ON DETR_MEMORY(run_id, step)",
    "CREATE INDEX DETR_idx_loader ON DETR_LOADER(run_id, step)",
    "CREATE INDEX DETR_idx_eval_categories ON DETR_EVAL_CATEGORIES(eval_id)",
    /* fixed rows */
    "INSERT INTO ENUM_NSYS_EVENT_TYPE VALUES (34, 'NvtxMark', 'NVTX Mark'), "
    "(59, 'NvtxPushPopRange', 'NVTX PushPop Range'), "
    "(60, 'NvtxStartEndRange', 'NVTX StartEnd Range'), "
    "(75, 'NvtxDomainCreate', 'NVTX Domain Create')",
    /* EXPORT_SCHEMA_VERSION: the nsys export layout whose columns we mirror (2024.6 dump);
     * EXPORT_PRODUCT_VERSION names our producer, not an nsys release. */
    "INSERT INTO META_DATA_EXPORT VALUES ('EXPORT_SCHEMA_VERSION', '3.16.1'), "
    "('EXPORT_PRODUCT_VERSION', 'detr-train profiler'), ('DETR_SCHEMA_VERSION', '1')",
};

/* TARGET_INFO_GPU: nsys's column names for the facts a CUDA device query gives. vmId carries
 * the run id (see docs). */
static const char *const gpu_table_sql =
    "CREATE TABLE IF NOT EXISTS TARGET_INFO_GPU (vmId INTEGER NOT NULL, id INTEGER NOT NULL, "
    "name TEXT, busLocation TEXT, uuid TEXT, chipName TEXT, totalMemory INTEGER, "
    "memoryBandwidth INTEGER, clockRate INTEGER, smCount INTEGER, l2CacheSize INTEGER, "
    "computeMajor INTEGER, computeMinor INTEGER, smMajor INTEGER, smMinor INTEGER, "
    "cuDevice INTEGER, maxThreadsPerBlock INTEGER, maxWarpsPerSm INTEGER, maxBlocksPerSm INTEGER, "
    "maxRegistersPerSm INTEGER, maxRegistersPerBlock INTEGER, maxShmemPerSm INTEGER, "
    "maxShmemPerBlock INTEGER, maxShmemPerBlockOptin INTEGER, threadsPerWarp INTEGER, "
    "asyncEngines INTEGER, isDiscrete INTEGER)";

const char *const prof_gpu_insert_sql =
    "INSERT INTO TARGET_INFO_GPU (vmId, id, name, busLocation, uuid, chipName, totalMemory, "
    "memoryBandwidth, clockRate, smCount, l2CacheSize, computeMajor, computeMinor, smMajor, "
    "smMinor, cuDevice, maxThreadsPerBlock, maxWarpsPerSm, maxBlocksPerSm, maxRegistersPerSm, "
    "maxRegistersPerBlock, maxShmemPerSm, maxShmemPerBlock, maxShmemPerBlockOptin, "
    "threadsPerWarp, asyncEngines, isDiscrete) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,"
    "?,?,?,?,?)";

int prof_schema_create_gpu_table(sqlite3 *db) {
    return sqlite3_exec(db, gpu_table_sql, NULL, NULL, NULL) == SQLITE_OK ? 0 : -1;
}

static int query_int(sqlite3 *db, const char *sql, int64_t *out) {
    sqlite3_stmt *s;
    if (sqlite3_prepare_v2(db, sql, -1, &s, NULL) != SQLITE_OK) return -1;
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) *out = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    return rc == SQLITE_ROW ? 0 : -1;
}

/* Version 2: GPU activity (docs/gpu-profiling.md). The nsys CUPTI tables are created lazily
 * (prof_schema_create_cupti_tables); ours exist in every file so that queries need no check. */
static const char *const migrate_v1_to_v2[] = {
    "ALTER TABLE DETR_RUNS ADD COLUMN dropped_gpu_records INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE DETR_RUNS ADD COLUMN cupti_dropped_records INTEGER NOT NULL DEFAULT 0",
    /* CUPTI correlation id -> the step and phase pushed as its CUSTOM0 external id */
    "CREATE TABLE DETR_GPU_CORRELATION (run_id INTEGER NOT NULL REFERENCES DETR_RUNS(run_id), "
    "correlationId INTEGER NOT NULL, externalKind INTEGER NOT NULL, externalId INTEGER NOT NULL, "
    "step INTEGER NOT NULL, name_id INTEGER NOT NULL REFERENCES StringIds(id))",
    "CREATE INDEX DETR_idx_gpu_correlation ON DETR_GPU_CORRELATION(correlationId)",
    /* per step and phase: kernel time, copy and memset bytes/time (--profile=basic keeps only
     * these); step -1 = outside any step */
    "CREATE TABLE DETR_GPU_STEPS (run_id INTEGER NOT NULL REFERENCES DETR_RUNS(run_id), "
    "step INTEGER NOT NULL, phase_id INTEGER NOT NULL REFERENCES StringIds(id), "
    "activity TEXT NOT NULL, copy_kind INTEGER NOT NULL, count INTEGER NOT NULL, "
    "total_ns INTEGER NOT NULL, bytes INTEGER NOT NULL, "
    "PRIMARY KEY (run_id, step, phase_id, activity, copy_kind))",
    "UPDATE META_DATA_EXPORT SET value = '2' WHERE name = 'DETR_SCHEMA_VERSION'",
    "PRAGMA user_version = 2",
};

/* Version 3: mixed precision (fp16 runs scale the loss with GradScaler's rule and skip the
 * update of a step whose gradients overflowed), the GPU's utilisation per step (NVML) and the
 * caching allocator's retry and out-of-memory counts. */
static const char *const migrate_v2_to_v3[] = {
    "ALTER TABLE DETR_STEPS ADD COLUMN loss_scale REAL",
    "ALTER TABLE DETR_STEPS ADD COLUMN skipped INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE DETR_STEPS ADD COLUMN gpu_util REAL",
    "ALTER TABLE DETR_STEPS ADD COLUMN gpu_mem_util REAL",
    "ALTER TABLE DETR_STEPS ADD COLUMN gpu_alloc_retries INTEGER",
    "ALTER TABLE DETR_STEPS ADD COLUMN gpu_ooms INTEGER",
    "UPDATE META_DATA_EXPORT SET value = '3' WHERE name = 'DETR_SCHEMA_VERSION'",
    "PRAGMA user_version = 3",
};

static const struct {
    const char *const *sql;
    size_t n;
} migrations[] = {
    /* [i] brings version i + 1 to version i + 2 */
    {migrate_v1_to_v2, sizeof(migrate_v1_to_v2) / sizeof(migrate_v1_to_v2[0])},
    {migrate_v2_to_v3, sizeof(migrate_v2_to_v3) / sizeof(migrate_v2_to_v3[0])},
};

static int exec_all(sqlite3 *db, const char *const *sql, size_t n, const char *what, const char *path,
                    char *err, size_t errlen) {
    for (size_t i = 0; i < n; i++) {
        char *msg = NULL;
        if (sqlite3_exec(db, sql[i], NULL, NULL, &msg) != SQLITE_OK) {
            snprintf(err, errlen, "profile database %s: cannot %s: %s", path, what,
                     msg ? msg : sqlite3_errmsg(db));
            sqlite3_free(msg);
            return -1;
        }
    }
    return 0;
}

/* From version `from` (>= 1) to PROF_SCHEMA_VERSION, inside the caller's transaction. */
static int migrate(sqlite3 *db, int64_t from, const char *path, char *err, size_t errlen) {
    _Static_assert(sizeof(migrations) / sizeof(migrations[0]) == PROF_SCHEMA_VERSION - 1,
                   "one migration step per schema version");
    for (int64_t v = from; v < PROF_SCHEMA_VERSION; v++) {
        char what[96];
        snprintf(what, sizeof(what), "bring the schema from version %lld to %lld", (long long)v,
                 (long long)v + 1);
        if (exec_all(db, migrations[v - 1].sql, migrations[v - 1].n, what, path, err, errlen) != 0)
            return -1;
    }
    return 0;
}

static int create_schema(sqlite3 *db, const char *path, char *err, size_t errlen) {
    if (exec_all(db, schema_v1, sizeof(schema_v1) / sizeof(schema_v1[0]), "create the schema", path,
                 err, errlen) != 0)
        return -1;
    return migrate(db, 1, path, err, errlen);
}

/* The nsys CUDA activity tables (profiling.md §1.2; 2024.6 column names) and the ENUM tables their
 * reports join (§1.4). NOT NULL where the dump has it and a few more that we always fill. */
static const char *const cupti_tables_sql[] = {
    "CREATE TABLE IF NOT EXISTS CUPTI_ACTIVITY_KIND_KERNEL (start INTEGER NOT NULL, \"end\" INTEGER NOT NULL, "
    "deviceId INTEGER NOT NULL, contextId INTEGER NOT NULL, greenContextId INTEGER, streamId INTEGER NOT NULL, "
    "correlationId INTEGER, globalPid INTEGER, demangledName INTEGER NOT NULL REFERENCES StringIds(id), "
    "shortName INTEGER NOT NULL REFERENCES StringIds(id), mangledName INTEGER REFERENCES StringIds(id), "
    "launchType INTEGER, cacheConfig INTEGER, registersPerThread INTEGER NOT NULL, gridX INTEGER NOT NULL, "
    "gridY INTEGER NOT NULL, gridZ INTEGER NOT NULL, blockX INTEGER NOT NULL, blockY INTEGER NOT NULL, "
    "blockZ INTEGER NOT NULL, staticSharedMemory INTEGER NOT NULL, dynamicSharedMemory INTEGER NOT NULL, "
    "localMemoryPerThread INTEGER NOT NULL, localMemoryTotal INTEGER NOT NULL, gridId INTEGER NOT NULL, "
    "sharedMemoryExecuted INTEGER NOT NULL, graphNodeId INTEGER, sharedMemoryLimitConfig INTEGER)",
    "CREATE TABLE IF NOT EXISTS CUPTI_ACTIVITY_KIND_MEMCPY (start INTEGER NOT NULL, \"end\" INTEGER NOT NULL, "
    "deviceId INTEGER NOT NULL, contextId INTEGER NOT NULL, greenContextId INTEGER, streamId INTEGER NOT NULL, "
    "correlationId INTEGER, globalPid INTEGER, bytes INTEGER NOT NULL, copyKind INTEGER NOT NULL, "
    "deprecatedSrcId INTEGER, srcKind INTEGER, dstKind INTEGER, srcDeviceId INTEGER, srcContextId INTEGER, "
    "dstDeviceId INTEGER, dstContextId INTEGER, migrationCause INTEGER, graphNodeId INTEGER, "
    "virtualAddress INTEGER)",
    "CREATE TABLE IF NOT EXISTS CUPTI_ACTIVITY_KIND_MEMSET (start INTEGER NOT NULL, \"end\" INTEGER NOT NULL, "
    "deviceId INTEGER NOT NULL, contextId INTEGER NOT NULL, greenContextId INTEGER, streamId INTEGER NOT NULL, "
    "correlationId INTEGER, globalPid INTEGER, value INTEGER NOT NULL, bytes INTEGER NOT NULL, "
    "graphNodeId INTEGER, memKind INTEGER)",
    "CREATE TABLE IF NOT EXISTS CUPTI_ACTIVITY_KIND_RUNTIME (start INTEGER NOT NULL, \"end\" INTEGER NOT NULL, "
    "eventClass INTEGER NOT NULL, globalTid INTEGER, correlationId INTEGER, "
    "nameId INTEGER NOT NULL REFERENCES StringIds(id), returnValue INTEGER NOT NULL, callchainId INTEGER)",
    "CREATE TABLE IF NOT EXISTS CUPTI_ACTIVITY_KIND_SYNCHRONIZATION (start INTEGER NOT NULL, "
    "\"end\" INTEGER NOT NULL, deviceId INTEGER NOT NULL, contextId INTEGER NOT NULL, greenContextId INTEGER, "
    "streamId INTEGER NOT NULL, correlationId INTEGER, globalPid INTEGER, syncType INTEGER NOT NULL, "
    "eventId INTEGER)",
    "CREATE INDEX IF NOT EXISTS DETR_idx_kernel_correlation ON CUPTI_ACTIVITY_KIND_KERNEL(correlationId)",
    "CREATE INDEX IF NOT EXISTS DETR_idx_runtime_correlation ON CUPTI_ACTIVITY_KIND_RUNTIME(correlationId)",
    "CREATE TABLE IF NOT EXISTS ENUM_CUDA_MEMCPY_OPER (id INTEGER NOT NULL PRIMARY KEY, name TEXT NOT NULL, "
    "label TEXT NOT NULL)",
    "INSERT OR IGNORE INTO ENUM_CUDA_MEMCPY_OPER VALUES (0, 'CUDA_MEMCPY_KIND_UNKNOWN', 'Unknown'), "
    "(1, 'CUDA_MEMCPY_KIND_HTOD', 'Host-to-Device'), (2, 'CUDA_MEMCPY_KIND_DTOH', 'Device-to-Host'), "
    "(3, 'CUDA_MEMCPY_KIND_HTOA', 'Host-to-Array'), (4, 'CUDA_MEMCPY_KIND_ATOH', 'Array-to-Host'), "
    "(5, 'CUDA_MEMCPY_KIND_ATOA', 'Array-to-Array'), (6, 'CUDA_MEMCPY_KIND_ATOD', 'Array-to-Device'), "
    "(7, 'CUDA_MEMCPY_KIND_DTOA', 'Device-to-Array'), (8, 'CUDA_MEMCPY_KIND_DTOD', 'Device-to-Device'), "
    "(9, 'CUDA_MEMCPY_KIND_HTOH', 'Host-to-Host'), (10, 'CUDA_MEMCPY_KIND_PTOP', 'Peer-to-Peer'), "
    "(11, 'CUDA_MEMCPY_KIND_UVM_HTOD', 'Unified Host-to-Device'), "
    "(12, 'CUDA_MEMCPY_KIND_UVM_DTOH', 'Unified Device-to-Host'), "
    "(13, 'CUDA_MEMCPY_KIND_UVM_DTOD', 'Unified Device-to-Device')",
    "CREATE TABLE IF NOT EXISTS ENUM_CUDA_MEM_KIND (id INTEGER NOT NULL PRIMARY KEY, name TEXT NOT NULL, "
    "label TEXT NOT NULL)",
    "INSERT OR IGNORE INTO ENUM_CUDA_MEM_KIND VALUES (0, 'CUDA_MEMOPR_MEMORY_KIND_PAGEABLE', 'Pageable'), "
    "(1, 'CUDA_MEMOPR_MEMORY_KIND_PINNED', 'Pinned'), (2, 'CUDA_MEMOPR_MEMORY_KIND_DEVICE', 'Device'), "
    "(3, 'CUDA_MEMOPR_MEMORY_KIND_ARRAY', 'Array'), (4, 'CUDA_MEMOPR_MEMORY_KIND_MANAGED', 'Managed'), "
    "(5, 'CUDA_MEMOPR_MEMORY_KIND_DEVICE_STATIC', 'Device Static'), "
    "(6, 'CUDA_MEMOPR_MEMORY_KIND_MANAGED_STATIC', 'Managed Static'), "
    "(7, 'CUDA_MEMOPR_MEMORY_KIND_UNKNOWN', 'Unknown')",
    "CREATE TABLE IF NOT EXISTS ENUM_CUPTI_SYNC_TYPE (id INTEGER NOT NULL PRIMARY KEY, name TEXT NOT NULL, "
    "label TEXT NOT NULL)",
    "INSERT OR IGNORE INTO ENUM_CUPTI_SYNC_TYPE VALUES (0, 'CUPTI_ACTIVITY_SYNCHRONIZATION_TYPE_UNKNOWN', "
    "'Unknown'), (1, 'CUPTI_ACTIVITY_SYNCHRONIZATION_TYPE_EVENT_SYNCHRONIZE', 'Event sync'), "
    "(2, 'CUPTI_ACTIVITY_SYNCHRONIZATION_TYPE_STREAM_WAIT_EVENT', 'Stream wait sync'), "
    "(3, 'CUPTI_ACTIVITY_SYNCHRONIZATION_TYPE_STREAM_SYNCHRONIZE', 'Stream sync'), "
    "(4, 'CUPTI_ACTIVITY_SYNCHRONIZATION_TYPE_CONTEXT_SYNCHRONIZE', 'Context sync')",
};

int prof_schema_create_cupti_tables(sqlite3 *db) {
    for (size_t i = 0; i < sizeof(cupti_tables_sql) / sizeof(cupti_tables_sql[0]); i++)
        if (sqlite3_exec(db, cupti_tables_sql[i], NULL, NULL, NULL) != SQLITE_OK) return -1;
    return 0;
}

int prof_schema_check_or_create(sqlite3 *db, const char *path, char *err, size_t errlen) {
    int64_t version = 0, n_tables = 0, has_runs = 0;
    if (query_int(db, "PRAGMA user_version", &version) != 0 ||
        query_int(db, "SELECT count(*) FROM sqlite_master", &n_tables) != 0) {
        snprintf(err, errlen, "profile database %s: cannot read it: %s; HINT: is it a SQLite "
                 "file? choose another path with --db", path, sqlite3_errmsg(db));
        return -1;
    }
    if (version == 0 && n_tables == 0) return create_schema(db, path, err, errlen);
    if (version == 0) {
        snprintf(err, errlen, "profile database %s: the file holds other tables and no detr "
                 "schema version (PRAGMA user_version = 0), so it is not a detr profile; "
                 "HINT: choose another path with --db", path);
        return -1;
    }
    if (version > PROF_SCHEMA_VERSION) {
        snprintf(err, errlen, "profile database %s: written by a newer detr-train (schema "
                 "version %lld; this build writes version %d and cannot add runs to newer "
                 "files); HINT: use a newer build, or another path with --db", path,
                 (long long)version, PROF_SCHEMA_VERSION);
        return -1;
    }
    if (query_int(db, "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND "
                      "name = 'DETR_RUNS'", &has_runs) != 0 || !has_runs) {
        snprintf(err, errlen, "profile database %s: schema version %lld but no DETR_RUNS table: "
                 "the file is damaged or not a detr profile; HINT: choose another path with --db",
                 path, (long long)version);
        return -1;
    }
    /* an older version: its migration steps run in the transaction that adds the run
     * (docs/profile-schema.md, "Versioning") */
    return version < PROF_SCHEMA_VERSION ? migrate(db, version, path, err, errlen) : 0;
}

/* Binds text or NULL. */
static void bind_text(sqlite3_stmt *s, int i, const char *v) {
    if (v) sqlite3_bind_text(s, i, v, -1, SQLITE_TRANSIENT);
    else sqlite3_bind_null(s, i);
}

static int exec_bound(sqlite3 *db, const char *sql, const char *what, const char *path,
                      char *err, size_t errlen, void (*bind)(sqlite3_stmt *, const void *),
                      const void *ctx) {
    sqlite3_stmt *s;
    int rc = sqlite3_prepare_v2(db, sql, -1, &s, NULL);
    if (rc == SQLITE_OK) {
        bind(s, ctx);
        rc = sqlite3_step(s);
    }
    if (rc != SQLITE_DONE) {
        snprintf(err, errlen, "profile database %s: cannot write %s: %s", path, what,
                 sqlite3_errmsg(db));
        sqlite3_finalize(s);
        return -1;
    }
    sqlite3_finalize(s);
    return 0;
}

typedef struct {
    const Prof *p;
    const ProfRunInfo *info;
    int64_t start_ns;
    const char *hostname, *cpu_model;
    int cores;
} RunCtx;

static void bind_run(sqlite3_stmt *s, const void *vctx) {
    const RunCtx *c = vctx;
    const ProfRunInfo *in = c->info;
    sqlite3_bind_int64(s, 1, c->start_ns);
    sqlite3_bind_text(s, 2, c->p->opt.level == PROF_TRACE ? "trace" : "basic", -1, SQLITE_STATIC);
    bind_text(s, 3, in->device);
    bind_text(s, 4, in->command_line);
    bind_text(s, 5, in->git_revision);
    bind_text(s, 6, c->hostname);
    bind_text(s, 7, c->cpu_model);
    sqlite3_bind_int(s, 8, c->cores);
    bind_text(s, 9, in->gpu);
    bind_text(s, 10, in->library_versions);
    bind_text(s, 11, in->config_json);
    if (in->peak_flops > 0) sqlite3_bind_double(s, 12, in->peak_flops);
    else sqlite3_bind_null(s, 12);
    sqlite3_bind_int64(s, 13, c->p->pid);
    sqlite3_bind_int64(s, 14, c->p->global_pid);
    sqlite3_bind_int(s, 15, PROF_SCHEMA_VERSION);
}

typedef struct {
    int64_t vid;
    const char *name, *value;
} EnvRow;

static void bind_env(sqlite3_stmt *s, const void *vctx) {
    const EnvRow *e = vctx;
    sqlite3_bind_int64(s, 1, e->vid);
    sqlite3_bind_text(s, 2, e->name, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 3, e->value, -1, SQLITE_TRANSIENT);
}

static int insert_system_env(Prof *p, const RunCtx *c, char *err, size_t errlen) {
    char cores[32], arch[64];
    snprintf(cores, sizeof(cores), "%d", c->cores);
    prof_os_arch(arch, sizeof(arch));
    const EnvRow rows[] = {{p->run_id, "Hostname", c->hostname},
                           {p->run_id, "CpuCores", cores},
                           {p->run_id, "CpuArchitecture", arch}};
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++)
        if (exec_bound(p->db, "INSERT INTO TARGET_INFO_SYSTEM_ENV (globalVid, name, value) "
                              "VALUES (?, ?, ?)", "TARGET_INFO_SYSTEM_ENV", p->path, err, errlen,
                       bind_env, &rows[i]) != 0)
            return -1;
    return 0;
}

typedef struct {
    const Prof *p;
    int64_t start_ns, name_id, domain_name_id, global_tid;
    const char *utc, *local, *process_name;
} RunRowsCtx;

static void bind_session(sqlite3_stmt *s, const void *v) {
    const RunRowsCtx *c = v;
    sqlite3_bind_int64(s, 1, c->start_ns);
    sqlite3_bind_text(s, 2, c->utc, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(s, 3, c->local, -1, SQLITE_TRANSIENT);
}

static void bind_analysis(sqlite3_stmt *s, const void *v) {
    const RunRowsCtx *c = v;
    sqlite3_bind_int64(s, 1, c->p->run_id);
    sqlite3_bind_int64(s, 2, c->start_ns);
    sqlite3_bind_int64(s, 3, c->start_ns);
}

static void bind_process(sqlite3_stmt *s, const void *v) {
    const RunRowsCtx *c = v;
    sqlite3_bind_int64(s, 1, c->p->global_pid);
    sqlite3_bind_int64(s, 2, c->p->pid);
    sqlite3_bind_text(s, 3, c->process_name, -1, SQLITE_TRANSIENT);
}

static void bind_thread(sqlite3_stmt *s, const void *v) {
    const RunRowsCtx *c = v;
    sqlite3_bind_int64(s, 1, c->name_id);
    sqlite3_bind_int64(s, 2, c->global_tid);
}

static void bind_domain(sqlite3_stmt *s, const void *v) {
    const RunRowsCtx *c = v;
    sqlite3_bind_int64(s, 1, c->start_ns);
    sqlite3_bind_int(s, 2, PROF_NVTX_DOMAIN_CREATE);
    sqlite3_bind_text(s, 3, PROF_NVTX_DOMAIN_NAME, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 4, c->global_tid);
    sqlite3_bind_int64(s, 5, c->domain_name_id);
    sqlite3_bind_int(s, 6, PROF_NVTX_DOMAIN_ID);
    sqlite3_bind_int64(s, 7, c->p->global_pid);
}

static void format_times(int64_t ns, char *utc, char *local, size_t n) {
    time_t t = (time_t)(ns / 1000000000);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(utc, n, "%Y-%m-%dT%H:%M:%SZ", &tm);
    localtime_r(&t, &tm);
    strftime(local, n, "%Y-%m-%dT%H:%M:%S%z", &tm);
}

static void process_name(char *out, size_t n) {
    FILE *f = fopen("/proc/self/comm", "r");
    out[0] = 0;
    if (f) {
        if (fgets(out, (int)n, f)) out[strcspn(out, "\n")] = 0;
        fclose(f);
    }
}

/* Process, thread, session and NVTX-domain rows of the run. */
static int insert_nsys_run_rows(Prof *p, int64_t start_ns, char *err, size_t errlen) {
    char utc[64], local[64], pname[64], tname[64];
    format_times(start_ns, utc, local, sizeof(utc));
    process_name(pname, sizeof(pname));
    if (pthread_getname_np(pthread_self(), tname, sizeof(tname)) != 0 || !tname[0])
        snprintf(tname, sizeof(tname), "%s", pname);
    RunRowsCtx c = {p, start_ns, prof_intern_string(p, tname),
                    prof_intern_string(p, PROF_NVTX_DOMAIN_NAME), prof_global_tid(),
                    utc, local, pname};
    if (c.name_id < 0 || c.domain_name_id < 0) {
        snprintf(err, errlen, "profile database %s: cannot write StringIds: %s", p->path,
                 sqlite3_errmsg(p->db));
        return -1;
    }
    if (exec_bound(p->db, "INSERT INTO TARGET_INFO_SESSION_START_TIME VALUES (?, ?, ?)",
                   "TARGET_INFO_SESSION_START_TIME", p->path, err, errlen, bind_session, &c) ||
        exec_bound(p->db, "INSERT INTO ANALYSIS_DETAILS VALUES (?, 0, ?, ?)", "ANALYSIS_DETAILS",
                   p->path, err, errlen, bind_analysis, &c) ||
        exec_bound(p->db, "INSERT INTO PROCESSES SELECT ?1, ?2, ?3 WHERE NOT EXISTS "
                          "(SELECT 1 FROM PROCESSES WHERE globalPid = ?1 AND name = ?3)",
                   "PROCESSES", p->path, err, errlen, bind_process, &c) ||
        exec_bound(p->db, "INSERT INTO ThreadNames SELECT ?1, 0, ?2 WHERE NOT EXISTS "
                          "(SELECT 1 FROM ThreadNames WHERE globalTid = ?2 AND nameId = ?1)",
                   "ThreadNames", p->path, err, errlen, bind_thread, &c))
        return -1;
    /* One domain-create row per process: nsys reports join ranges to domains on domainId and
     * the process bits of globalTid, so a second row for the same process would count every
     * range twice. */
    return exec_bound(p->db, "INSERT INTO NVTX_EVENTS (start, eventType, text, globalTid, textId, "
                             "domainId) SELECT ?1, ?2, ?3, ?4, ?5, ?6 WHERE NOT EXISTS (SELECT 1 "
                             "FROM NVTX_EVENTS WHERE eventType = ?2 AND domainId = ?6 AND "
                             "(globalTid & 0x0000FFFFFF000000) = ?7)",
                      "NVTX_EVENTS", p->path, err, errlen, bind_domain, &c);
}

int prof_schema_insert_run(Prof *p, const ProfRunInfo *info, int64_t start_ns, char *err,
                           size_t errlen) {
    char host[256] = "", cpu[256] = "";
    if (info->hostname) snprintf(host, sizeof(host), "%s", info->hostname);
    else if (gethostname(host, sizeof(host) - 1) != 0) host[0] = 0;
    if (info->cpu_model) snprintf(cpu, sizeof(cpu), "%s", info->cpu_model);
    else prof_cpu_model(cpu, sizeof(cpu));
    int cores = info->cpu_cores > 0 ? info->cpu_cores : (int)sysconf(_SC_NPROCESSORS_ONLN);
    RunCtx c = {p, info, start_ns, host, cpu, cores};
    if (exec_bound(p->db, "INSERT INTO DETR_RUNS (start_ns, status, level, device, command_line, "
                          "git_revision, hostname, cpu_model, cpu_cores, gpu, library_versions, "
                          "config_json, peak_flops, pid, global_pid, schema_version) VALUES "
                          "(?1, 'running', ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, "
                          "?14, ?15)", "DETR_RUNS", p->path, err, errlen, bind_run, &c) != 0)
        return -1;
    p->run_id = sqlite3_last_insert_rowid(p->db);
    if (insert_system_env(p, &c, err, errlen) != 0) return -1;
    return insert_nsys_run_rows(p, start_ns, err, errlen);
}
