/* test_prof_export.c - `detr-prof export --chrome-trace` end to end (binaries in $DETR_BUILD,
 * default build/), on a database written by a short real `detr-train --profile` run:
 *  - the output parses as JSON (jansson) and has traceEvents and otherData.time_offset_ns = the
 *    run's start;
 *  - every DETR_PHASES row of the run is one "X" event, in start order, with
 *    ts = (start_ns - offset) / 1000 and dur = duration_ns / 1000 (3 decimals), on the tid of its
 *    global_tid; per phase name the counts equal the database's; the trainer thread is named;
 *  - memory counters: one "memory" event per step end with each category's current_bytes;
 *    "loader queue" counters carry DETR_LOADER.queue_depth;
 *  - --steps A:B keeps the ranges of steps A..B only (counts per name as SQL), counters inside
 *    their window; --run picks a run;
 *  - nsys-style CUPTI tables added to a copy of the database: kernels and copies become "X"
 *    events on their device's process and stream's thread (named "stream N"), runtime calls
 *    become slices on the launching thread ("_vNNNN" cut), each launch has a flow pair ("s" on
 *    the runtime thread at its start, "f" with bp "e" at the kernel's start, same id =
 *    correlationId), another process's kernel is left out, a name with quotes and a newline
 *    stays valid JSON, and a ThreadNames "loader" thread is named "loader worker N";
 *  - bad input: missing database, a file that is not a profile, bad --steps, --steps without
 *    data, unknown run, missing --chrome-trace, an unwritable output folder: exit 2 (1 for the
 *    folder) with a message, and no output or temporary file left behind; --help exits 0. */
#include <dirent.h>
#include <ftw.h>
#include <inttypes.h>
#include <math.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <jansson.h>
#include "check.h"
#include "test_util.h"

static char g_tmp[256];
static const char *g_build;
static char g_db[512];

static int rm_entry(const char *p, const struct stat *s, int f, struct FTW *w) {
    (void)s, (void)f, (void)w;
    return remove(p);
}

static int prof(const char *args, char **out, char **err) {
    char cmd[4096];
    snprintf(cmd, sizeof(cmd), "%s/detr-prof %s", g_build, args);
    return run_capture(g_tmp, cmd, out, err);
}

static int export_to(const char *db, const char *json, const char *extra, char **err) {
    char args[2048], *out;
    snprintf(args, sizeof(args), "export %s --chrome-trace %s %s", db, json, extra ? extra : "");
    int rc = prof(args, &out, err);
    free(out);
    return rc;
}

static int64_t sql_int(sqlite3 *db, const char *sql) {
    sqlite3_stmt *st;
    int64_t v = -1;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) return -1;
    if (sqlite3_step(st) == SQLITE_ROW) v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

/* Events of a phase "ph" (and name, and cat when given). */
static int count_events(json_t *events, const char *ph, const char *name, const char *cat) {
    size_t i;
    json_t *e;
    int n = 0;
    json_array_foreach(events, i, e) {
        const char *p = json_string_value(json_object_get(e, "ph"));
        const char *nm = json_string_value(json_object_get(e, "name"));
        const char *c = json_string_value(json_object_get(e, "cat"));
        if (p && !strcmp(p, ph) && (!name || (nm && !strcmp(nm, name))) && (!cat || (c && !strcmp(c, cat)))) n++;
    }
    return n;
}

static int has_thread_name(json_t *events, int64_t pid, int64_t tid, const char *name) {
    size_t i;
    json_t *e;
    json_array_foreach(events, i, e) {
        const char *p = json_string_value(json_object_get(e, "ph"));
        const char *nm = json_string_value(json_object_get(e, "name"));
        if (p && !strcmp(p, "M") && nm && !strcmp(nm, "thread_name") &&
            json_integer_value(json_object_get(e, "pid")) == pid && json_integer_value(json_object_get(e, "tid")) == tid) {
            const char *v = json_string_value(json_object_get(json_object_get(e, "args"), "name"));
            return v && !strcmp(v, name);
        }
    }
    return 0;
}

static double num(json_t *o, const char *key) { return json_number_value(json_object_get(o, key)); }

/* e as compact JSON for a failure message (a static buffer: CHECK evaluates its arguments
 * whether or not the check fails). */
static const char *dump(json_t *e) {
    static char buf[2048];
    if (!e) return "missing";
    size_t n = json_dumpb(e, buf, sizeof(buf) - 1, JSON_COMPACT);
    buf[n < sizeof(buf) ? n : sizeof(buf) - 1] = 0;
    return buf;
}

/* The string at o[key], or "" when it is missing. */
static const char *str(json_t *o, const char *key) {
    const char *v = json_string_value(json_object_get(o, key));
    return v ? v : "";
}

/* Loads out.json; NULL (and a failed check) if it is not valid JSON with a traceEvents array. */
static json_t *load_trace(const char *path, const char *what) {
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    char name[160];
    snprintf(name, sizeof(name), "%s: the output is valid JSON with a traceEvents array", what);
    CHECK(name, root && json_is_array(json_object_get(root, "traceEvents")), "%s line %d: %s", path, je.line, je.text);
    if (root && !json_is_array(json_object_get(root, "traceEvents"))) {
        json_decref(root);
        return NULL;
    }
    return root;
}

/* Every phase row of the run (optionally steps a..b) against the X events of cat "phase", in
 * order: name, ts, dur, pid, tid. */
static void check_phase_events(sqlite3 *db, json_t *events, int64_t offset, int64_t pid, const char *where,
                               const char *what) {
    char sql[1024], name[200];
    snprintf(sql, sizeof(sql), "SELECT s.value, p.start_ns, p.duration_ns, p.global_tid & 16777215 FROM DETR_PHASES p "
                               "JOIN StringIds s ON s.id = p.name_id WHERE p.run_id = 1 %s ORDER BY p.start_ns, p.depth",
             where);
    sqlite3_stmt *st;
    sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    size_t i = 0, n_events = json_array_size(events);
    int rows = 0, mismatches = 0;
    char first_bad[2400] = "";
    while (sqlite3_step(st) == SQLITE_ROW) {
        rows++;
        json_t *e = NULL;
        while (i < n_events) { /* the next phase event */
            json_t *c = json_array_get(events, i++);
            const char *cat = json_string_value(json_object_get(c, "cat"));
            if (cat && !strcmp(cat, "phase")) {
                e = c;
                break;
            }
        }
        const char *want = (const char *)sqlite3_column_text(st, 0);
        double ts = (double)(sqlite3_column_int64(st, 1) - offset) / 1000.0;
        double dur = (double)sqlite3_column_int64(st, 2) / 1000.0;
        int ok = e && !strcmp(json_string_value(json_object_get(e, "name")), want) &&
                 fabs(num(e, "ts") - ts) < 0.0006 && fabs(num(e, "dur") - dur) < 0.0006 &&
                 json_integer_value(json_object_get(e, "pid")) == pid &&
                 json_integer_value(json_object_get(e, "tid")) == sqlite3_column_int64(st, 3);
        if (!ok && !mismatches++)
            snprintf(first_bad, sizeof(first_bad), "row %d %s ts %.3f dur %.3f; event %s", rows, want, ts, dur,
                     dump(e));
    }
    sqlite3_finalize(st);
    snprintf(name, sizeof(name), "%s: every DETR_PHASES row is an X event with ts = (start_ns - offset)/1000, "
                                 "dur = duration_ns/1000, pid, tid", what);
    CHECK(name, rows > 0 && mismatches == 0, "%d rows, %d mismatches, first: %s", rows, mismatches, first_bad);
    snprintf(name, sizeof(name), "%s: no other phase events", what);
    CHECK(name, count_events(events, "X", NULL, "phase") == rows, "%d events, %d rows",
          count_events(events, "X", NULL, "phase"), rows);
    /* per phase name */
    snprintf(sql, sizeof(sql), "SELECT s.value, count(*) FROM DETR_PHASES p JOIN StringIds s ON s.id = p.name_id "
                               "WHERE p.run_id = 1 %s GROUP BY 1", where);
    sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    int names = 0, bad = 0;
    char msg[256] = "";
    while (sqlite3_step(st) == SQLITE_ROW) {
        const char *nm = (const char *)sqlite3_column_text(st, 0);
        int want = sqlite3_column_int(st, 1), got = count_events(events, "X", nm, "phase");
        names++;
        if (want != got && !bad++) snprintf(msg, sizeof(msg), "%s: %d rows, %d events", nm, want, got);
    }
    sqlite3_finalize(st);
    snprintf(name, sizeof(name), "%s: X events per phase name = DETR_PHASES rows", what);
    CHECK(name, names >= 5 && bad == 0, "%d names; %s", names, msg);
}

static void test_full_export(sqlite3 *db) {
    char json[600], *err;
    snprintf(json, sizeof(json), "%s/trace.json", g_tmp);
    int rc = export_to(g_db, json, NULL, &err);
    CHECK("export: exit 0", rc == 0, "rc %d: %s", rc, err);
    free(err);
    json_t *root = load_trace(json, "export");
    if (!root) return;
    json_t *events = json_object_get(root, "traceEvents");
    int64_t offset = sql_int(db, "SELECT start_ns FROM DETR_RUNS WHERE run_id = 1");
    int64_t pid = sql_int(db, "SELECT pid FROM DETR_RUNS WHERE run_id = 1");
    json_t *other = json_object_get(root, "otherData");
    CHECK("export: otherData.time_offset_ns is the run's start_ns",
          json_integer_value(json_object_get(other, "time_offset_ns")) == offset, "%" PRId64 " vs %" PRId64,
          (int64_t)json_integer_value(json_object_get(other, "time_offset_ns")), offset);
    check_phase_events(db, events, offset, pid, "", "export");
    int64_t main_tid = sql_int(db, "SELECT ph.global_tid & 16777215 FROM DETR_PHASES ph JOIN StringIds s ON "
                                   "s.id = ph.name_id WHERE ph.run_id = 1 AND s.value = 'step' LIMIT 1");
    int64_t worker_tid = sql_int(db, "SELECT ph.global_tid & 16777215 FROM DETR_PHASES ph JOIN StringIds s ON "
                                     "s.id = ph.name_id WHERE ph.run_id = 1 AND s.value = 'load_sample' LIMIT 1");
    CHECK("export: loader work is on its own named worker tracks",
          worker_tid > 0 && worker_tid != main_tid &&
              (has_thread_name(events, pid, worker_tid, "loader worker 0") ||
               has_thread_name(events, pid, worker_tid, "loader worker 1") ||
               has_thread_name(events, pid, worker_tid, "loader worker 2")),
          "worker tid %" PRId64, worker_tid);
    CHECK("export: the trainer thread and the process are named", has_thread_name(events, pid, main_tid, "trainer") &&
          count_events(events, "M", "process_name", NULL) == 1, "tid %" PRId64, main_tid);
    /* memory counters: one per step end, current_bytes per category */
    int64_t mem_ts = sql_int(db, "SELECT count(DISTINCT timestamp_ns) FROM DETR_MEMORY WHERE run_id = 1");
    int n_mem = count_events(events, "C", "memory", NULL);
    CHECK("export: one memory counter event per step end", mem_ts > 0 && n_mem == mem_ts, "%d events, %" PRId64
          " timestamps", n_mem, mem_ts);
    size_t i;
    json_t *e;
    int mem_bad = 0, mem_checked = 0;
    sqlite3_stmt *st;
    sqlite3_prepare_v2(db, "SELECT current_bytes FROM DETR_MEMORY WHERE run_id = 1 AND timestamp_ns = ?1 + ?2 "
                           "AND category = ?3", -1, &st, NULL);
    json_array_foreach(events, i, e) {
        const char *nm = json_string_value(json_object_get(e, "name"));
        if (!nm || strcmp(nm, "memory")) continue;
        const char *key;
        json_t *v;
        json_object_foreach(json_object_get(e, "args"), key, v) {
            sqlite3_reset(st);
            sqlite3_bind_int64(st, 1, offset);
            sqlite3_bind_int64(st, 2, (int64_t)llround(num(e, "ts") * 1000.0));
            sqlite3_bind_text(st, 3, key, -1, SQLITE_TRANSIENT);
            mem_checked++;
            if (sqlite3_step(st) != SQLITE_ROW || sqlite3_column_int64(st, 0) != json_integer_value(v)) mem_bad++;
        }
    }
    sqlite3_finalize(st);
    int64_t mem_rows = sql_int(db, "SELECT count(*) FROM DETR_MEMORY WHERE run_id = 1");
    CHECK("export: memory counter values are DETR_MEMORY.current_bytes at the step's end, every category",
          mem_bad == 0 && mem_checked == mem_rows, "%d checked, %d bad, %" PRId64 " rows", mem_checked, mem_bad,
          mem_rows);
    int64_t loader_rows = sql_int(db, "SELECT count(*) FROM DETR_LOADER l JOIN DETR_STEPS s USING (run_id, step) "
                                      "WHERE run_id = 1");
    int64_t depth_sum = sql_int(db, "SELECT sum(queue_depth) FROM DETR_LOADER l JOIN DETR_STEPS s USING (run_id, step) "
                                    "WHERE run_id = 1");
    double got_sum = 0;
    json_array_foreach(events, i, e) {
        const char *nm = json_string_value(json_object_get(e, "name"));
        if (nm && !strcmp(nm, "loader queue")) got_sum += num(json_object_get(e, "args"), "depth");
    }
    CHECK("export: a loader queue-depth counter per batch, values from DETR_LOADER",
          loader_rows > 0 && count_events(events, "C", "loader queue", NULL) == loader_rows &&
          got_sum == (double)depth_sum, "%d events, %" PRId64 " rows, depth sum %.0f vs %" PRId64,
          count_events(events, "C", "loader queue", NULL), loader_rows, got_sum, depth_sum);
    CHECK("export: loader stage times as counters", count_events(events, "C", "loader ms", NULL) == loader_rows,
          "%d", count_events(events, "C", "loader ms", NULL));
    CHECK("export: no GPU events without CUPTI tables", count_events(events, "X", NULL, "kernel") == 0 &&
          count_events(events, "s", NULL, NULL) == 0, "unexpected kernel/flow events");
    json_decref(root);
    /* no temporary file left beside the output */
    DIR *d = opendir(g_tmp);
    struct dirent *de;
    int leftovers = 0;
    while (d && (de = readdir(d)))
        if (strstr(de->d_name, ".tmp")) leftovers++;
    if (d) closedir(d);
    CHECK("export: no temporary file left behind", leftovers == 0, "%d", leftovers);
}

static void test_steps_filter(sqlite3 *db) {
    char json[600], *err;
    snprintf(json, sizeof(json), "%s/steps.json", g_tmp);
    int rc = export_to(g_db, json, "--steps 3:5 --run 1", &err);
    CHECK("export --steps 3:5 --run 1: exit 0", rc == 0, "rc %d: %s", rc, err);
    free(err);
    json_t *root = load_trace(json, "export --steps 3:5");
    if (!root) return;
    json_t *events = json_object_get(root, "traceEvents");
    int64_t offset = sql_int(db, "SELECT start_ns FROM DETR_RUNS WHERE run_id = 1");
    int64_t pid = sql_int(db, "SELECT pid FROM DETR_RUNS WHERE run_id = 1");
    check_phase_events(db, events, offset, pid, "AND p.step BETWEEN 3 AND 5", "export --steps 3:5");
    int64_t w0 = sql_int(db, "SELECT min(start_ns) FROM DETR_PHASES WHERE run_id = 1 AND step BETWEEN 3 AND 5");
    int64_t w1 = sql_int(db, "SELECT max(start_ns + duration_ns) FROM DETR_PHASES WHERE run_id = 1 AND step BETWEEN 3 AND 5");
    int64_t mem_in = sql_int(db, "SELECT count(DISTINCT m.timestamp_ns) FROM DETR_MEMORY m, (SELECT min(start_ns) a, "
                                 "max(start_ns + duration_ns) b FROM DETR_PHASES WHERE run_id = 1 AND step BETWEEN 3 AND 5) w "
                                 "WHERE m.run_id = 1 AND m.timestamp_ns BETWEEN w.a AND w.b");
    size_t i;
    json_t *e;
    int outside = 0;
    json_array_foreach(events, i, e) {
        const char *ph = json_string_value(json_object_get(e, "ph"));
        if (!ph || strcmp(ph, "C")) continue;
        double ts = num(e, "ts");
        if (ts < (w0 - offset) / 1000.0 - 0.001 || ts > (w1 - offset) / 1000.0 + 0.001) outside++;
    }
    CHECK("export --steps 3:5: counters only inside the steps' window, all of those there",
          outside == 0 && count_events(events, "C", "memory", NULL) == mem_in && mem_in >= 2, "%d outside, %d memory "
          "events, %" PRId64 " in window", outside, count_events(events, "C", "memory", NULL), mem_in);
    CHECK("export --steps 3:5: otherData names the range",
          !strcmp(str(json_object_get(root, "otherData"), "steps"), "3:5"),
          "otherData.steps missing");
    json_decref(root);
}

/* Adds nsys-style CUPTI tables with a few rows to a copy of the database. */
static int add_gpu_tables(const char *path, int64_t *pid_out, int64_t *gtid_out, int64_t *t0_out) {
    sqlite3 *db;
    if (sqlite3_open(path, &db) != SQLITE_OK) return -1;
    int64_t pid = sql_int(db, "SELECT pid FROM DETR_RUNS WHERE run_id = 1");
    int64_t gtid = sql_int(db, "SELECT global_tid FROM DETR_PHASES WHERE run_id = 1 LIMIT 1");
    int64_t t0 = sql_int(db, "SELECT start_ns FROM DETR_STEPS WHERE run_id = 1 AND step = 2");
    char sql[4096];
    snprintf(sql, sizeof(sql),
             "CREATE TABLE CUPTI_ACTIVITY_KIND_KERNEL (start INTEGER NOT NULL, end INTEGER NOT NULL, "
             "deviceId INTEGER NOT NULL, contextId INTEGER NOT NULL, streamId INTEGER NOT NULL, correlationId INTEGER, "
             "globalPid INTEGER, demangledName INTEGER NOT NULL, shortName INTEGER NOT NULL, gridX INTEGER);"
             "CREATE TABLE CUPTI_ACTIVITY_KIND_MEMCPY (start INTEGER NOT NULL, end INTEGER NOT NULL, deviceId INTEGER, "
             "contextId INTEGER, streamId INTEGER, correlationId INTEGER, globalPid INTEGER, bytes INTEGER NOT NULL, "
             "copyKind INTEGER NOT NULL);"
             "CREATE TABLE CUPTI_ACTIVITY_KIND_RUNTIME (start INTEGER NOT NULL, end INTEGER NOT NULL, eventClass INTEGER, "
             "globalTid INTEGER, correlationId INTEGER, nameId INTEGER NOT NULL, returnValue INTEGER);"
             "INSERT INTO StringIds VALUES (1001, 'void gemm<float, \"quoted\">(int)\nnext line'), (1002, 'gemm'), "
             "(1003, 'relu_kernel'), (1004, 'cudaLaunchKernel_v7000'), (1005, 'cudaMemcpyAsync_v3020'), "
             "(1006, 'detr-loader-3');"
             /* runtime calls on the trainer thread; kernels on streams 7 and 13 of device 0 */
             "INSERT INTO CUPTI_ACTIVITY_KIND_RUNTIME VALUES (%1$lld + 1000, %1$lld + 6000, 0, %2$lld, 11, 1004, 0), "
             "(%1$lld + 7000, %1$lld + 9000, 0, %2$lld, 12, 1004, 0), (%1$lld + 10000, %1$lld + 12000, 0, %2$lld, 13, 1004, 0), "
             "(%1$lld + 13000, %1$lld + 15000, 0, %2$lld, 14, 1005, 0);"
             "INSERT INTO CUPTI_ACTIVITY_KIND_KERNEL VALUES (%1$lld + 8000, %1$lld + 20000, 0, 1, 7, 11, %3$lld, 1001, 1002, 1), "
             "(%1$lld + 21000, %1$lld + 25500, 0, 1, 13, 12, %3$lld, 1003, 1003, 1), "
             "(%1$lld + 26000, %1$lld + 30000, 0, 1, 7, 13, %3$lld, 1003, 1003, 1), "
             /* another process's kernel at the same time: left out */
             "(%1$lld + 8000, %1$lld + 9000, 0, 1, 7, 11, %4$lld, 1003, 1003, 1);"
             "INSERT INTO CUPTI_ACTIVITY_KIND_MEMCPY VALUES (%1$lld + 16000, %1$lld + 18000, 0, 1, 7, 14, %3$lld, 4096, 1);"
             /* a loader worker thread the database knows, with one range */
             "INSERT INTO ThreadNames VALUES (1006, 0, %5$lld);"
             "INSERT INTO DETR_PHASES VALUES (1, 2, 4, %1$lld + 500, 2000, 0, %5$lld);",
             (long long)t0, (long long)gtid, (long long)(pid << 24), (long long)((pid + 1) << 24),
             (long long)((pid << 24) | 999999));
    char *msg = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK) fprintf(stderr, "add_gpu_tables: %s\n", msg);
    sqlite3_free(msg);
    sqlite3_close(db);
    *pid_out = pid;
    *gtid_out = gtid;
    *t0_out = t0;
    return rc == SQLITE_OK ? 0 : -1;
}

static json_t *find_event(json_t *events, const char *ph, const char *cat, double ts) {
    size_t i;
    json_t *e;
    json_array_foreach(events, i, e) {
        const char *p = json_string_value(json_object_get(e, "ph"));
        const char *c = json_string_value(json_object_get(e, "cat"));
        if (p && !strcmp(p, ph) && (!cat || (c && !strcmp(c, cat))) && fabs(num(e, "ts") - ts) < 0.0006) return e;
    }
    return NULL;
}

static void test_gpu_tables(void) {
    char gpu_db[600], json[600], cmd[1400], *out, *err;
    snprintf(gpu_db, sizeof(gpu_db), "%s/gpu.sqlite", g_tmp);
    snprintf(cmd, sizeof(cmd), "cp %s %s", g_db, gpu_db);
    int64_t pid = 0, gtid = 0, t0 = 0;
    int ok = run_capture(g_tmp, cmd, &out, &err) == 0 && add_gpu_tables(gpu_db, &pid, &gtid, &t0) == 0;
    free(out), free(err);
    CHECK("gpu: CUPTI tables added to a copy of the database", ok, "see stderr");
    if (!ok) return;
    snprintf(json, sizeof(json), "%s/gpu.json", g_tmp);
    int rc = export_to(gpu_db, json, NULL, &err);
    CHECK("gpu: export exit 0", rc == 0, "rc %d: %s", rc, err);
    free(err);
    json_t *root = load_trace(json, "gpu");
    if (!root) return;
    json_t *events = json_object_get(root, "traceEvents");
    sqlite3 *db;
    sqlite3_open_v2(gpu_db, &db, SQLITE_OPEN_READONLY, NULL);
    int64_t offset = sql_int(db, "SELECT start_ns FROM DETR_RUNS WHERE run_id = 1");
    sqlite3_close(db);
    double base = (double)(t0 - offset) / 1000.0; /* µs of t0 */
    CHECK("gpu: 3 kernels of the run's process (the other process's left out), 1 copy",
          count_events(events, "X", NULL, "kernel") == 3 && count_events(events, "X", NULL, "gpu_memcpy") == 1,
          "%d kernels, %d copies", count_events(events, "X", NULL, "kernel"), count_events(events, "X", NULL, "gpu_memcpy"));
    json_t *k1 = find_event(events, "X", "kernel", base + 8.0);
    CHECK("gpu: kernel on device 0's process, stream 7's thread, ts/dur in µs, shortName as name, full name in args",
          k1 && json_integer_value(json_object_get(k1, "pid")) == 0 && json_integer_value(json_object_get(k1, "tid")) == 7 &&
          fabs(num(k1, "dur") - 12.0) < 0.0006 && !strcmp(json_string_value(json_object_get(k1, "name")), "gemm") &&
          !strcmp(str(json_object_get(k1, "args"), "demangled name"), "void gemm<float, \"quoted\">(int)\nnext line"),
          "%s", k1 ? dump(k1) : "no kernel at t0+8us");
    json_t *k2 = find_event(events, "X", "kernel", base + 21.0);
    CHECK("gpu: the second stream has its own track", k2 && json_integer_value(json_object_get(k2, "tid")) == 13,
          "%s", dump(k2));
    CHECK("gpu: stream tracks and the GPU process are named", has_thread_name(events, 0, 7, "stream 7") &&
          has_thread_name(events, 0, 13, "stream 13") && count_events(events, "M", "process_name", NULL) == 2,
          "names missing");
    json_t *cp = find_event(events, "X", "gpu_memcpy", base + 16.0);
    CHECK("gpu: the copy is named by its kind and carries its bytes",
          cp && !strcmp(json_string_value(json_object_get(cp, "name")), "Memcpy HtoD") &&
          num(json_object_get(cp, "args"), "bytes") == 4096, "%s", dump(cp));
    CHECK("gpu: runtime calls are slices on the launching thread, _vNNNN cut",
          count_events(events, "X", "cudaLaunchKernel", "cuda_runtime") == 3 &&
          count_events(events, "X", "cudaMemcpyAsync", "cuda_runtime") == 1, "%d launches",
          count_events(events, "X", "cudaLaunchKernel", "cuda_runtime"));
    /* flows: one s/f pair per launch, same id, s on the trainer thread at the call's start, f bound to the kernel */
    int n_s = count_events(events, "s", NULL, NULL), n_f = count_events(events, "f", NULL, NULL), pairs = 0;
    size_t i;
    json_t *e;
    json_array_foreach(events, i, e) {
        const char *ph = json_string_value(json_object_get(e, "ph"));
        if (!ph || strcmp(ph, "f")) continue;
        json_int_t id = json_integer_value(json_object_get(e, "id"));
        size_t j;
        json_t *s;
        json_array_foreach(events, j, s) {
            const char *p2 = json_string_value(json_object_get(s, "ph"));
            if (!p2 || strcmp(p2, "s") || json_integer_value(json_object_get(s, "id")) != id) continue;
            json_t *launch = find_event(events, "X", "cuda_runtime", num(s, "ts"));
            json_t *target = find_event(events, "X", NULL, num(e, "ts"));
            const char *bp = json_string_value(json_object_get(e, "bp"));
            if (launch && target && bp && !strcmp(bp, "e") &&
                json_integer_value(json_object_get(s, "tid")) == (gtid & 0xFFFFFF) &&
                json_integer_value(json_object_get(s, "pid")) == pid &&
                json_integer_value(json_object_get(e, "tid")) == json_integer_value(json_object_get(target, "tid")) &&
                json_integer_value(json_object_get(json_object_get(launch, "args"), "correlation")) == id)
                pairs++;
        }
    }
    CHECK("gpu: one flow pair per launch (s at the runtime call, f with bp e at the kernel/copy, id = correlationId)",
          n_s == 4 && n_f == 4 && pairs == 4, "%d s, %d f, %d matched pairs", n_s, n_f, pairs);
    CHECK("gpu: a loader thread the database names is 'loader worker 3'",
          has_thread_name(events, pid, 999999, "loader worker 3"), "missing");
    json_decref(root);
}

static void test_bad_input(void) {
    char json[600], args[1400], *out, *err;
    snprintf(json, sizeof(json), "%s/bad.json", g_tmp);
    int rc = export_to("/nonexistent/x.sqlite", json, NULL, &err);
    CHECK("bad: missing database -> exit 2 naming it", rc == 2 && strstr(err, "/nonexistent/x.sqlite"), "rc %d: %s", rc, err);
    free(err);
    char text[600], other[600];
    snprintf(text, sizeof(text), "%s/notes.txt", g_tmp);
    FILE *f = fopen(text, "w");
    fputs("not a database at all\n", f);
    fclose(f);
    rc = export_to(text, json, NULL, &err);
    CHECK("bad: a text file -> exit 2", rc == 2 && strstr(err, "notes.txt"), "rc %d: %s", rc, err);
    free(err);
    snprintf(other, sizeof(other), "%s/other.sqlite", g_tmp);
    sqlite3 *db;
    sqlite3_open(other, &db);
    sqlite3_exec(db, "CREATE TABLE t (x)", NULL, NULL, NULL);
    sqlite3_close(db);
    rc = export_to(other, json, NULL, &err);
    CHECK("bad: a SQLite file that is not a profile -> exit 2 'not a detr-train profile'",
          rc == 2 && strstr(err, "not a detr-train profile"), "rc %d: %s", rc, err);
    free(err);
    const char *bad_steps[] = {"5:3", "x", "3:", "-1:2", "1:2:3", ""};
    for (int i = 0; i < 6; i++) {
        char extra[64], name[128];
        snprintf(extra, sizeof(extra), "--steps '%s'", bad_steps[i]);
        rc = export_to(g_db, json, extra, &err);
        snprintf(name, sizeof(name), "bad: --steps '%s' -> exit 2 with the expected form", bad_steps[i]);
        CHECK(name, rc == 2 && strstr(err, "A:B"), "rc %d: %s", rc, err);
        free(err);
    }
    rc = export_to(g_db, json, "--steps 100000:200000", &err);
    CHECK("bad: --steps with no steps in the run -> exit 2", rc == 2 && strstr(err, "no steps"), "rc %d: %s", rc, err);
    free(err);
    rc = export_to(g_db, json, "--run 99", &err);
    CHECK("bad: unknown --run -> exit 2", rc == 2 && strstr(err, "no run 99"), "rc %d: %s", rc, err);
    free(err);
    snprintf(args, sizeof(args), "export %s", g_db);
    rc = prof(args, &out, &err);
    CHECK("bad: missing --chrome-trace -> exit 2", rc == 2 && strstr(err, "--chrome-trace"), "rc %d: %s", rc, err);
    free(out), free(err);
    struct stat sb;
    CHECK("bad: no output written by the failures", stat(json, &sb) != 0, "%s exists", json);
    rc = export_to(g_db, "/nonexistent-dir/out.json", NULL, &err);
    CHECK("bad: unwritable output folder -> exit 1 naming it", rc == 1 && strstr(err, "/nonexistent-dir/"), "rc %d: %s",
          rc, err);
    free(err);
    rc = prof("export --help", &out, &err);
    CHECK("help: export --help exits 0 with its usage", rc == 0 && strstr(out, "usage: detr-prof export"), "rc %d", rc);
    free(out), free(err);
}

int main(void) {
    g_build = getenv("DETR_BUILD") ? getenv("DETR_BUILD") : "build";
    char bin[512];
    snprintf(bin, sizeof(bin), "%s/detr-prof", g_build);
    if (access(bin, X_OK) != 0) {
        CHECK("detr-prof is built", 0, "%s missing (set DETR_BUILD to the build folder)", bin);
        return test_finish();
    }
    snprintf(g_tmp, sizeof(g_tmp), "/tmp/test_prof_export_XXXXXX");
    if (!mkdtemp(g_tmp)) {
        perror("mkdtemp");
        return 1;
    }
    char cmd[2048], *out, *err;
    snprintf(cmd, sizeof(cmd), "%s/detr-data synth %s/ds --images 24 --val 4 --size 64x64 --classes 3 --max-objects 2",
             g_build, g_tmp);
    int rc = run_capture(g_tmp, cmd, &out, &err);
    free(out), free(err);
    snprintf(g_db, sizeof(g_db), "%s/run/profile.sqlite", g_tmp);
    snprintf(cmd, sizeof(cmd), "%s/detr-train --data %s/ds --threads 1 --workers 1 --batch 4 --epochs 2 --scales 64 "
             "--max-size 64 --resize-choices 48,56,64 --crop 40,48 --val-size 64 --queries 5 --profile --out %s/run",
             g_build, g_tmp, g_tmp);
    if (rc == 0) rc = run_capture(g_tmp, cmd, &out, &err);
    else out = err = NULL;
    CHECK("setup: a profiled detr-train run", rc == 0, "rc %d: %s", rc, err ? err : "detr-data synth failed");
    free(out), free(err);
    sqlite3 *db = NULL;
    if (rc == 0 && sqlite3_open_v2(g_db, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK) {
        test_full_export(db);
        test_steps_filter(db);
        test_gpu_tables();
        test_bad_input();
    }
    sqlite3_close(db);
    nftw(g_tmp, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return test_finish();
}
