/* prof_export.c - detr-prof export: one run of a profile database as Chrome Trace Event JSON
 * (opens in Perfetto and chrome://tracing). docs/prof-export.md describes the layout:
 *  - phases (DETR_PHASES) as complete events ("X") on their thread's track,
 *  - memory per category and the loader's queue depth and worker time as counters ("C"),
 *  - with nsys-style CUPTI tables: kernels and copies per GPU stream, runtime API calls on the
 *    launching thread, and a flow arrow ("s"/"f", id = correlationId) from launch to execution.
 * Timestamps are microseconds since the run's start (written exactly from integer ns, 3
 * decimals); the offset is in "otherData". Events are streamed row by row into a temporary file
 * that is renamed over the output only when complete. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "detr_prof.h"
#include "prof_db.h"

#define TID_MASK ((int64_t)0xFFFFFF) /* nsys globalTid = (pid << 24) | tid */

typedef struct {
    FILE *f;
    int64_t offset_ns; /* subtracted from every timestamp */
    int64_t n_events;
} Trace;

typedef struct {
    int64_t run_id, pid, global_pid, start_ns, end_ns; /* end_ns: INT64_MAX while unknown */
    int has_steps;                                     /* --steps given */
    int64_t step_a, step_b;                            /* the --steps range */
    int64_t win_a, win_b;                              /* time window of the other events */
} ExportScope;

/* ---- JSON output --------------------------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at s, or 0 when it is not one. */
static int utf8_len(const unsigned char *s) {
    int n = s[0] < 0x80 ? 1 : (s[0] >> 5) == 6 ? 2 : (s[0] >> 4) == 14 ? 3 : (s[0] >> 3) == 30 ? 4 : 0;
    if (n <= 1) return n;
    for (int i = 1; i < n; i++)
        if ((s[i] & 0xC0) != 0x80) return 0;
    return n;
}

/* A JSON string literal: quotes, backslashes and control characters escaped, invalid UTF-8
 * replaced by U+FFFD (names come from the database and may hold anything). */
static void put_string(FILE *f, const char *s) {
    fputc('"', f);
    const unsigned char *p = (const unsigned char *)(s ? s : "");
    while (*p) {
        int n = utf8_len(p);
        if (n == 0) {
            fputs("\\ufffd", f);
            p++;
        } else if (n > 1) {
            fwrite(p, 1, (size_t)n, f);
            p += n;
        } else {
            if (*p == '"' || *p == '\\') fprintf(f, "\\%c", *p);
            else if (*p < 0x20) fprintf(f, "\\u%04x", *p);
            else fputc(*p, f);
            p++;
        }
    }
    fputc('"', f);
}

/* ns as microseconds with exactly 3 decimals, from integer arithmetic (no rounding drift). */
static void put_us(FILE *f, int64_t ns) {
    if (ns < 0) {
        fputc('-', f);
        ns = -ns;
    }
    fprintf(f, "%" PRId64 ".%03d", ns / 1000, (int)(ns % 1000));
}

/* Opens one event object: {"ph":"X","pid":..,"tid":..,"ts":.. ; the caller adds the rest. */
static void event_begin(Trace *t, const char *ph, int64_t pid, int64_t tid, int64_t ts_ns) {
    fputs(t->n_events++ ? ",\n" : "\n", t->f);
    fprintf(t->f, "{\"ph\":\"%s\",\"pid\":%" PRId64 ",\"tid\":%" PRId64 ",\"ts\":", ph, pid, tid);
    put_us(t->f, ts_ns - t->offset_ns);
}

static void emit_meta(Trace *t, const char *what, int64_t pid, int64_t tid, const char *key,
                      const char *name) {
    event_begin(t, "M", pid, tid, t->offset_ns);
    fprintf(t->f, ",\"name\":\"%s\",\"args\":{\"%s\":", what, key);
    put_string(t->f, name);
    fputs("}}", t->f);
}

static void emit_sort_index(Trace *t, const char *what, int64_t pid, int64_t tid, int index) {
    event_begin(t, "M", pid, tid, t->offset_ns);
    fprintf(t->f, ",\"name\":\"%s\",\"args\":{\"sort_index\":%d}}", what, index);
}

/* A complete event up to its args: the caller writes the inside of "args":{ and closes "}}". */
static void complete_open(Trace *t, const char *name, const char *cat, int64_t pid, int64_t tid,
                          int64_t start_ns, int64_t dur_ns) {
    event_begin(t, "X", pid, tid, start_ns);
    fputs(",\"dur\":", t->f);
    put_us(t->f, dur_ns > 0 ? dur_ns : 0);
    fputs(",\"name\":", t->f);
    put_string(t->f, name);
    fprintf(t->f, ",\"cat\":\"%s\",\"args\":{", cat);
}

/* A complete event; args_json is the inside of the args object (numbers only). */
static void emit_complete(Trace *t, const char *name, const char *cat, int64_t pid, int64_t tid,
                          int64_t start_ns, int64_t dur_ns, const char *args_json) {
    complete_open(t, name, cat, pid, tid, start_ns, dur_ns);
    fprintf(t->f, "%s}}", args_json);
}

/* ---- database helpers ---------------------------------------------------------------------- */

static int table_exists(sqlite3 *db, const char *name) {
    sqlite3_stmt *st;
    int yes = 0;
    if (sqlite3_prepare_v2(db, "SELECT 1 FROM sqlite_master WHERE type IN ('table','view') AND name = ?",
                           -1, &st, NULL) != SQLITE_OK)
        return 0;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    yes = sqlite3_step(st) == SQLITE_ROW;
    sqlite3_finalize(st);
    return yes;
}

static int column_exists(sqlite3 *db, const char *table, const char *column) {
    char sql[160];
    snprintf(sql, sizeof(sql), "SELECT 1 FROM pragma_table_info('%s') WHERE name = ?", table);
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) return 0;
    sqlite3_bind_text(st, 1, column, -1, SQLITE_STATIC);
    int yes = sqlite3_step(st) == SQLITE_ROW;
    sqlite3_finalize(st);
    return yes;
}

static sqlite3_stmt *prepare(sqlite3 *db, const char *sql, char *err, size_t errlen) {
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "cannot query the database: %s", sqlite3_errmsg(db));
        return NULL;
    }
    return st;
}

/* Steps a statement to its end; SQLITE_DONE is success. */
static int finish_rows(sqlite3 *db, sqlite3_stmt *st, int rc, char *err, size_t errlen) {
    if (rc != SQLITE_DONE) snprintf(err, errlen, "reading the database failed: %s", sqlite3_errmsg(db));
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? 0 : -1;
}

static int load_scope(sqlite3 *db, ExportScope *sc, char *err, size_t errlen) {
    sqlite3_stmt *st = prepare(db, "SELECT pid, global_pid, start_ns, end_ns FROM DETR_RUNS WHERE run_id = ?",
                               err, errlen);
    if (!st) return -1;
    sqlite3_bind_int64(st, 1, sc->run_id);
    if (sqlite3_step(st) != SQLITE_ROW) {
        snprintf(err, errlen, "run %" PRId64 " not found", sc->run_id);
        sqlite3_finalize(st);
        return -1;
    }
    sc->pid = sqlite3_column_int64(st, 0);
    sc->global_pid = sqlite3_column_type(st, 1) == SQLITE_NULL ? sc->pid << 24 : sqlite3_column_int64(st, 1);
    sc->start_ns = sqlite3_column_int64(st, 2);
    sc->end_ns = sqlite3_column_type(st, 3) == SQLITE_NULL ? INT64_MAX : sqlite3_column_int64(st, 3);
    sqlite3_finalize(st);
    sc->win_a = sc->start_ns;
    sc->win_b = sc->end_ns;
    if (!sc->has_steps) return 0;
    /* the window of steps A..B: their step records, else their phase ranges */
    st = prepare(db, "SELECT min(a), max(b) FROM (SELECT start_ns AS a, end_ns AS b FROM DETR_STEPS "
                     "WHERE run_id = ?1 AND step BETWEEN ?2 AND ?3 UNION ALL SELECT start_ns, "
                     "start_ns + duration_ns FROM DETR_PHASES WHERE run_id = ?1 AND step BETWEEN ?2 AND ?3)",
                 err, errlen);
    if (!st) return -1;
    sqlite3_bind_int64(st, 1, sc->run_id);
    sqlite3_bind_int64(st, 2, sc->step_a);
    sqlite3_bind_int64(st, 3, sc->step_b);
    int found = sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL;
    if (found) {
        sc->win_a = sqlite3_column_int64(st, 0);
        sc->win_b = sqlite3_column_int64(st, 1);
    }
    sqlite3_finalize(st);
    if (!found) {
        snprintf(err, errlen, "run %" PRId64 " has no steps in --steps %" PRId64 ":%" PRId64
                 " (see its steps with detr-prof summary)", sc->run_id, sc->step_a, sc->step_b);
        return -1;
    }
    return 0;
}

/* ---- CPU threads ---------------------------------------------------------------------------- */

/* The trainer's thread: the one that holds the outermost "step" ranges (else the thread that
 * opened the run, from ThreadNames). */
static int64_t main_thread(sqlite3 *db, const ExportScope *sc) {
    int64_t gtid = -1;
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, "SELECT p.global_tid FROM DETR_PHASES p JOIN StringIds s ON s.id = p.name_id "
                               "WHERE p.run_id = ? AND s.value = 'step' AND p.depth = 0 GROUP BY 1 "
                               "ORDER BY count(*) DESC LIMIT 1", -1, &st, NULL) == SQLITE_OK) {
        sqlite3_bind_int64(st, 1, sc->run_id);
        if (sqlite3_step(st) == SQLITE_ROW) gtid = sqlite3_column_int64(st, 0);
        sqlite3_finalize(st);
    }
    if (gtid >= 0) return gtid;
    if (sqlite3_prepare_v2(db, "SELECT min(globalTid) FROM ThreadNames WHERE (globalTid >> 24) = ?", -1, &st,
                           NULL) == SQLITE_OK) {
        sqlite3_bind_int64(st, 1, sc->pid);
        if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL)
            gtid = sqlite3_column_int64(st, 0);
        sqlite3_finalize(st);
    }
    return gtid;
}

/* A loader thread's name as the database knows it ("loader 3", "detr-loader-3"): its number, or
 * -1 when the name is not a loader's. */
static int loader_worker_number(const char *name) {
    if (!name || !strstr(name, "load")) return -1;
    const char *d = name + strcspn(name, "0123456789");
    return *d ? atoi(d) : 0;
}

/* Names every CPU thread of the run that has events: "trainer", "loader worker N", the name in
 * ThreadNames, or "thread TID". */
static int emit_thread_names(sqlite3 *db, Trace *t, const ExportScope *sc, int has_runtime, char *err,
                             size_t errlen) {
    int64_t main_gtid = main_thread(db, sc);
    char sql[1024];
    snprintf(sql, sizeof(sql),
             "WITH threads(g) AS (SELECT DISTINCT global_tid FROM DETR_PHASES WHERE run_id = ?1 "
             "UNION SELECT globalTid FROM ThreadNames WHERE (globalTid >> 24) = ?2 %s) "
             "SELECT g, (SELECT s.value FROM ThreadNames n JOIN StringIds s ON s.id = n.nameId "
             "WHERE n.globalTid = g LIMIT 1) FROM threads WHERE g IS NOT NULL ORDER BY g",
             has_runtime ? "UNION SELECT DISTINCT globalTid FROM CUPTI_ACTIVITY_KIND_RUNTIME "
                           "WHERE (globalTid >> 24) = ?2 AND start BETWEEN ?3 AND ?4" : "");
    sqlite3_stmt *st = prepare(db, sql, err, errlen);
    if (!st) return -1;
    sqlite3_bind_int64(st, 1, sc->run_id);
    sqlite3_bind_int64(st, 2, sc->pid);
    if (has_runtime) {
        sqlite3_bind_int64(st, 3, sc->win_a);
        sqlite3_bind_int64(st, 4, sc->win_b);
    }
    int rc, next_worker = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t gtid = sqlite3_column_int64(st, 0);
        const char *known = (const char *)sqlite3_column_text(st, 1);
        char name[160];
        int worker = loader_worker_number(known);
        if (worker >= 0 && !strpbrk(known, "0123456789")) worker = next_worker++; /* unnumbered: count them */
        if (gtid == main_gtid) snprintf(name, sizeof(name), "trainer");
        else if (worker >= 0) snprintf(name, sizeof(name), "loader worker %d", worker);
        else if (known) snprintf(name, sizeof(name), "%s", known);
        else snprintf(name, sizeof(name), "thread %" PRId64, gtid & TID_MASK);
        emit_meta(t, "thread_name", sc->pid, gtid & TID_MASK, "name", name);
        emit_sort_index(t, "thread_sort_index", sc->pid, gtid & TID_MASK, gtid == main_gtid ? 0 : 1);
    }
    return finish_rows(db, st, rc, err, errlen);
}

/* ---- phases and counters -------------------------------------------------------------------- */

static int emit_phases(sqlite3 *db, Trace *t, const ExportScope *sc, char *err, size_t errlen) {
    sqlite3_stmt *st = prepare(db, "SELECT coalesce(s.value, '?'), p.start_ns, p.duration_ns, p.step, p.depth, "
                                   "p.global_tid FROM DETR_PHASES p LEFT JOIN StringIds s ON s.id = p.name_id "
                                   "WHERE p.run_id = ?1 AND (?2 = 0 OR p.step BETWEEN ?3 AND ?4) "
                                   "ORDER BY p.start_ns, p.depth", err, errlen);
    if (!st) return -1;
    sqlite3_bind_int64(st, 1, sc->run_id);
    sqlite3_bind_int(st, 2, sc->has_steps);
    sqlite3_bind_int64(st, 3, sc->step_a);
    sqlite3_bind_int64(st, 4, sc->step_b);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        char args[96];
        if (sqlite3_column_type(st, 3) == SQLITE_NULL)
            snprintf(args, sizeof(args), "\"depth\":%d", sqlite3_column_int(st, 4));
        else
            snprintf(args, sizeof(args), "\"step\":%" PRId64 ",\"depth\":%d", (int64_t)sqlite3_column_int64(st, 3),
                     sqlite3_column_int(st, 4));
        emit_complete(t, (const char *)sqlite3_column_text(st, 0), "phase", sc->pid,
                      sqlite3_column_int64(st, 5) & TID_MASK, sqlite3_column_int64(st, 1),
                      sqlite3_column_int64(st, 2), args);
    }
    return finish_rows(db, st, rc, err, errlen);
}

/* Memory per category: one "memory" counter event per step end, one key (track) per category. */
static int emit_memory(sqlite3 *db, Trace *t, const ExportScope *sc, char *err, size_t errlen) {
    sqlite3_stmt *st = prepare(db, "SELECT timestamp_ns, category, current_bytes FROM DETR_MEMORY WHERE run_id = ? "
                                   "AND timestamp_ns BETWEEN ? AND ? AND current_bytes IS NOT NULL "
                                   "ORDER BY timestamp_ns, category", err, errlen);
    if (!st) return -1;
    sqlite3_bind_int64(st, 1, sc->run_id);
    sqlite3_bind_int64(st, 2, sc->win_a);
    sqlite3_bind_int64(st, 3, sc->win_b);
    int rc, open = 0;
    int64_t open_ts = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t ts = sqlite3_column_int64(st, 0);
        if (!open || ts != open_ts) {
            if (open) fputs("}}", t->f);
            event_begin(t, "C", sc->pid, 0, ts);
            fputs(",\"name\":\"memory\",\"args\":{", t->f);
            open = 1;
            open_ts = ts;
        } else {
            fputc(',', t->f);
        }
        put_string(t->f, (const char *)sqlite3_column_text(st, 1));
        fprintf(t->f, ":%" PRId64, (int64_t)sqlite3_column_int64(st, 2));
    }
    if (open) fputs("}}", t->f);
    return finish_rows(db, st, rc, err, errlen);
}

/* Loader: queue depth when the loop asked, and the batch's worker time per stage (ms), at the
 * step's start (DETR_LOADER has no timestamp of its own). */
static int emit_loader(sqlite3 *db, Trace *t, const ExportScope *sc, char *err, size_t errlen) {
    sqlite3_stmt *st = prepare(db, "SELECT s.start_ns, l.queue_depth, l.read_ns, l.decode_ns, l.augment_ns, "
                                   "l.collate_ns, l.wait_ns FROM DETR_LOADER l JOIN DETR_STEPS s ON "
                                   "s.run_id = l.run_id AND s.step = l.step WHERE l.run_id = ? AND "
                                   "s.start_ns BETWEEN ? AND ? ORDER BY s.start_ns", err, errlen);
    if (!st) return -1;
    sqlite3_bind_int64(st, 1, sc->run_id);
    sqlite3_bind_int64(st, 2, sc->win_a);
    sqlite3_bind_int64(st, 3, sc->win_b);
    static const char *const stage[] = {"read", "decode", "augment", "collate", "wait"};
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t ts = sqlite3_column_int64(st, 0);
        if (sqlite3_column_type(st, 1) != SQLITE_NULL) {
            event_begin(t, "C", sc->pid, 0, ts);
            fprintf(t->f, ",\"name\":\"loader queue\",\"args\":{\"depth\":%d}}", sqlite3_column_int(st, 1));
        }
        int n = 0;
        for (int i = 0; i < 5; i++) {
            if (sqlite3_column_type(st, 2 + i) == SQLITE_NULL) continue;
            if (n++ == 0) {
                event_begin(t, "C", sc->pid, 0, ts);
                fputs(",\"name\":\"loader ms\",\"args\":{", t->f);
            } else {
                fputc(',', t->f);
            }
            fprintf(t->f, "\"%s\":%.6f", stage[i], sqlite3_column_int64(st, 2 + i) / 1e6);
        }
        if (n) fputs("}}", t->f);
    }
    return finish_rows(db, st, rc, err, errlen);
}

/* ---- GPU activity (nsys-style CUPTI tables) ------------------------------------------------- */

static const char *memcpy_label(int kind) {
    static const char *const labels[] = {"Unknown", "HtoD", "DtoH", "HtoA", "AtoH", "AtoA", "AtoD",
                                         "DtoA", "DtoD", "HtoH", "PtoP", "Unified HtoD", "Unified DtoH",
                                         "Unified DtoD"};
    return kind >= 0 && kind < (int)(sizeof(labels) / sizeof(labels[0])) ? labels[kind] : "Unknown";
}

/* Runtime API calls as slices on the launching thread; the "_vNNNN" suffix nsys keeps is cut. */
static int emit_runtime(sqlite3 *db, Trace *t, const ExportScope *sc, char *err, size_t errlen) {
    sqlite3_stmt *st = prepare(db, "SELECT r.start, r.\"end\", r.globalTid, r.correlationId, s.value FROM "
                                   "CUPTI_ACTIVITY_KIND_RUNTIME r LEFT JOIN StringIds s ON s.id = r.nameId "
                                   "WHERE (r.globalTid >> 24) = ? AND r.start BETWEEN ? AND ? ORDER BY r.start",
                               err, errlen);
    if (!st) return -1;
    sqlite3_bind_int64(st, 1, sc->pid);
    sqlite3_bind_int64(st, 2, sc->win_a);
    sqlite3_bind_int64(st, 3, sc->win_b);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        char name[256], args[64];
        const char *v = (const char *)sqlite3_column_text(st, 4);
        snprintf(name, sizeof(name), "%s", v ? v : "cuda runtime call");
        char *suffix = strstr(name, "_v");
        if (suffix && suffix[2] && strspn(suffix + 2, "0123456789") == strlen(suffix + 2)) *suffix = 0;
        snprintf(args, sizeof(args), "\"correlation\":%" PRId64, (int64_t)sqlite3_column_int64(st, 3));
        emit_complete(t, name, "cuda_runtime", sc->pid, sqlite3_column_int64(st, 2) & TID_MASK,
                      sqlite3_column_int64(st, 0), sqlite3_column_int64(st, 1) - sqlite3_column_int64(st, 0),
                      args);
    }
    return finish_rows(db, st, rc, err, errlen);
}

/* Flow arrow from the runtime call (start, on its thread) to the GPU activity (bound to it). */
static void emit_flow(Trace *t, const ExportScope *sc, int64_t corr, int64_t api_gtid, int64_t api_start,
                      int64_t dev, int64_t stream, int64_t gpu_start) {
    event_begin(t, "s", sc->pid, api_gtid & TID_MASK, api_start);
    fprintf(t->f, ",\"id\":%" PRId64 ",\"cat\":\"ac2g\",\"name\":\"launch\"}", corr);
    event_begin(t, "f", dev, stream, gpu_start);
    fprintf(t->f, ",\"id\":%" PRId64 ",\"cat\":\"ac2g\",\"name\":\"launch\",\"bp\":\"e\"}", corr);
}

/* Kernels (is_kernel) or copies of the run's process in the window, each on its device's process
 * and its stream's thread, with the flow from its launch when the runtime row is exported too. */
static int emit_gpu_activity(sqlite3 *db, Trace *t, const ExportScope *sc, int is_kernel, int has_runtime,
                             char *err, size_t errlen) {
    const char *table = is_kernel ? "CUPTI_ACTIVITY_KIND_KERNEL" : "CUPTI_ACTIVITY_KIND_MEMCPY";
    char name_expr[320], pid_filter[96], join[320], sql[2048];
    if (is_kernel) {
        int has_short = column_exists(db, table, "shortName"), has_dem = column_exists(db, table, "demangledName");
        snprintf(name_expr, sizeof(name_expr), "coalesce(%s, %s, 'kernel'), %s",
                 has_short ? "(SELECT value FROM StringIds WHERE id = a.shortName)" : "NULL",
                 has_dem ? "(SELECT value FROM StringIds WHERE id = a.demangledName)" : "NULL",
                 has_dem ? "(SELECT value FROM StringIds WHERE id = a.demangledName)" : "NULL");
    } else {
        snprintf(name_expr, sizeof(name_expr), "%s, %s", column_exists(db, table, "copyKind") ? "a.copyKind" : "0",
                 column_exists(db, table, "bytes") ? "a.bytes" : "NULL");
    }
    snprintf(pid_filter, sizeof(pid_filter), "%s",
             column_exists(db, table, "globalPid") ? "AND (a.globalPid IS NULL OR a.globalPid = ?1)" : "");
    snprintf(join, sizeof(join), "%s",
             has_runtime ? "LEFT JOIN CUPTI_ACTIVITY_KIND_RUNTIME r ON r.correlationId = a.correlationId "
                           "AND (r.globalTid >> 24) = ?4 AND r.start BETWEEN ?2 AND ?3" : "");
    snprintf(sql, sizeof(sql),
             "SELECT a.start, a.\"end\", a.deviceId, a.streamId, a.correlationId, %s, %s FROM %s a %s "
             "WHERE a.start BETWEEN ?2 AND ?3 %s ORDER BY a.start",
             has_runtime ? "r.start, r.globalTid" : "NULL, NULL", name_expr, table, join, pid_filter);
    sqlite3_stmt *st = prepare(db, sql, err, errlen);
    if (!st) return -1;
    sqlite3_bind_int64(st, 1, sc->global_pid);
    sqlite3_bind_int64(st, 2, sc->win_a);
    sqlite3_bind_int64(st, 3, sc->win_b);
    sqlite3_bind_int64(st, 4, sc->pid);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t start = sqlite3_column_int64(st, 0), end = sqlite3_column_int64(st, 1);
        int64_t dev = sqlite3_column_int64(st, 2), stream = sqlite3_column_int64(st, 3);
        int64_t corr = sqlite3_column_int64(st, 4);
        char name[512], args[256];
        int n = snprintf(args, sizeof(args), "\"device\":%" PRId64 ",\"stream\":%" PRId64 ",\"correlation\":%" PRId64,
                         dev, stream, corr);
        if (is_kernel) {
            snprintf(name, sizeof(name), "%s", (const char *)sqlite3_column_text(st, 7));
        } else {
            int kind = sqlite3_column_int(st, 7);
            snprintf(name, sizeof(name), "Memcpy %s", memcpy_label(kind));
            if (sqlite3_column_type(st, 8) != SQLITE_NULL) {
                int64_t bytes = sqlite3_column_int64(st, 8);
                snprintf(args + n, sizeof(args) - (size_t)n, ",\"bytes\":%" PRId64 ",\"GB/s\":%.3f", bytes,
                         end > start ? (double)bytes / (double)(end - start) : 0.0);
            }
        }
        complete_open(t, name, is_kernel ? "kernel" : "gpu_memcpy", dev, stream, start, end - start);
        if (is_kernel && sqlite3_column_type(st, 8) != SQLITE_NULL) {
            fputs("\"demangled name\":", t->f);
            put_string(t->f, (const char *)sqlite3_column_text(st, 8));
            fputc(',', t->f);
        }
        fprintf(t->f, "%s}}", args);
        if (has_runtime && sqlite3_column_type(st, 5) != SQLITE_NULL)
            emit_flow(t, sc, corr, sqlite3_column_int64(st, 6), sqlite3_column_int64(st, 5), dev, stream, start);
    }
    return finish_rows(db, st, rc, err, errlen);
}

/* Process and thread names of the GPU tracks: "GPU <id>[ <name>]", "stream <id>". */
static int emit_gpu_tracks(sqlite3 *db, Trace *t, const ExportScope *sc, int has_kernel, int has_memcpy,
                           char *err, size_t errlen) {
    char sql[1024];
    int has_info = table_exists(db, "TARGET_INFO_GPU");
    snprintf(sql, sizeof(sql), "WITH s(d, st) AS (%s%s%s) SELECT DISTINCT d, st, %s FROM s ORDER BY d, st",
             has_kernel ? "SELECT deviceId, streamId FROM CUPTI_ACTIVITY_KIND_KERNEL WHERE start BETWEEN ?1 AND ?2" : "",
             has_kernel && has_memcpy ? " UNION " : "",
             has_memcpy ? "SELECT deviceId, streamId FROM CUPTI_ACTIVITY_KIND_MEMCPY WHERE start BETWEEN ?1 AND ?2" : "",
             has_info ? "(SELECT name FROM TARGET_INFO_GPU WHERE id = d AND vmId = ?3 LIMIT 1)" : "NULL");
    sqlite3_stmt *st = prepare(db, sql, err, errlen);
    if (!st) return -1;
    sqlite3_bind_int64(st, 1, sc->win_a);
    sqlite3_bind_int64(st, 2, sc->win_b);
    if (has_info) sqlite3_bind_int64(st, 3, sc->run_id);
    int rc;
    int64_t last_dev = INT64_MIN;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t dev = sqlite3_column_int64(st, 0), stream = sqlite3_column_int64(st, 1);
        char name[256];
        if (dev != last_dev) {
            const char *gpu = (const char *)sqlite3_column_text(st, 2);
            snprintf(name, sizeof(name), "GPU %" PRId64 "%s%s", dev, gpu ? " " : "", gpu ? gpu : "");
            emit_meta(t, "process_name", dev, 0, "name", name);
            emit_sort_index(t, "process_sort_index", dev, 0, 1 + (int)dev);
            last_dev = dev;
        }
        snprintf(name, sizeof(name), "stream %" PRId64, stream);
        emit_meta(t, "thread_name", dev, stream, "name", name);
    }
    return finish_rows(db, st, rc, err, errlen);
}

/* ---- the command ---------------------------------------------------------------------------- */

static int write_trace(sqlite3 *db, FILE *f, const ExportScope *sc, const char *db_path, char *err,
                       size_t errlen) {
    Trace t = {f, sc->start_ns, 0};
    int has_kernel = table_exists(db, "CUPTI_ACTIVITY_KIND_KERNEL");
    int has_memcpy = table_exists(db, "CUPTI_ACTIVITY_KIND_MEMCPY");
    int has_runtime = table_exists(db, "CUPTI_ACTIVITY_KIND_RUNTIME");
    char pname[96];
    snprintf(pname, sizeof(pname), "detr-train run %" PRId64, sc->run_id);
    fputs("{\"traceEvents\":[", f);
    emit_meta(&t, "process_name", sc->pid, 0, "name", pname);
    emit_sort_index(&t, "process_sort_index", sc->pid, 0, 0);
    if (emit_thread_names(db, &t, sc, has_runtime, err, errlen) || emit_phases(db, &t, sc, err, errlen) ||
        emit_memory(db, &t, sc, err, errlen) || emit_loader(db, &t, sc, err, errlen))
        return -1;
    if ((has_kernel || has_memcpy) && emit_gpu_tracks(db, &t, sc, has_kernel, has_memcpy, err, errlen)) return -1;
    if (has_runtime && emit_runtime(db, &t, sc, err, errlen)) return -1;
    if (has_kernel && emit_gpu_activity(db, &t, sc, 1, has_runtime, err, errlen)) return -1;
    if (has_memcpy && emit_gpu_activity(db, &t, sc, 0, has_runtime, err, errlen)) return -1;
    fputs("\n],\"displayTimeUnit\":\"ms\",\"otherData\":{\"producer\":\"detr-prof export\",\"database\":", f);
    put_string(f, db_path);
    fprintf(f, ",\"run_id\":%" PRId64 ",\"time_offset_ns\":%" PRId64
               ",\"time_unit\":\"ts and dur are microseconds since time_offset_ns (Unix-epoch ns, the run's start)\"",
            sc->run_id, sc->start_ns);
    if (sc->has_steps) fprintf(f, ",\"steps\":\"%" PRId64 ":%" PRId64 "\"", sc->step_a, sc->step_b);
    fprintf(f, ",\"events\":%" PRId64 "}}\n", t.n_events);
    return 0;
}

/* Writes the trace to a temporary file beside out and renames it over out when complete. */
static int export_atomically(sqlite3 *db, const char *out, const ExportScope *sc, const char *db_path,
                             char *err, size_t errlen) {
    size_t n = strlen(out) + 16;
    char *tmp = malloc(n);
    if (!tmp) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    snprintf(tmp, n, "%s.tmpXXXXXX", out);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        snprintf(err, errlen, "cannot create %s: %s (does the folder exist and is it writable?)", tmp,
                 strerror(errno));
        free(tmp);
        return -1;
    }
    mode_t mask = umask(0);
    umask(mask);
    (void)fchmod(fd, 0666 & ~mask); /* mkstemp's 0600 would make the trace private; best effort */
    FILE *f = fdopen(fd, "w");
    if (!f) {
        snprintf(err, errlen, "cannot write %s: %s", tmp, strerror(errno));
        close(fd);
        unlink(tmp);
        free(tmp);
        return -1;
    }
    int rc = write_trace(db, f, sc, db_path, err, errlen);
    if (rc == 0 && (fflush(f) != 0 || ferror(f) || fsync(fileno(f)) != 0)) {
        snprintf(err, errlen, "cannot write %s: %s", tmp, strerror(errno ? errno : EIO));
        rc = -1;
    }
    if (fclose(f) != 0 && rc == 0) {
        snprintf(err, errlen, "cannot write %s: %s", tmp, strerror(errno));
        rc = -1;
    }
    if (rc == 0 && rename(tmp, out) != 0) {
        snprintf(err, errlen, "cannot rename %s to %s: %s", tmp, out, strerror(errno));
        rc = -1;
    }
    if (rc != 0) unlink(tmp);
    free(tmp);
    return rc;
}

static void usage(FILE *f) {
    fprintf(f, "usage: detr-prof export RUN.db --chrome-trace OUT.json [--run ID] [--steps A:B]\n"
               "Writes one run of a profile database as Chrome Trace Event JSON; open it in\n"
               "https://ui.perfetto.dev or chrome://tracing.\n\n"
               "  --chrome-trace OUT.json  the output file (written atomically)\n"
               "  --run ID                 the run to export (default: the newest)\n"
               "  --steps A:B              only steps A..B (inclusive): their phase ranges, and the\n"
               "                           other events inside their time window\n\n"
               "Timestamps are microseconds since the run's start (otherData.time_offset_ns).\n"
               "Details: docs/prof-export.md. Exit codes: 0 ok, 1 failure, 2 bad usage or input.\n");
}

/* Parses "A:B" (inclusive, 0 <= A <= B) or a single step "A". */
static int parse_steps(const char *s, int64_t *a, int64_t *b) {
    char *end;
    errno = 0;
    long long x = strtoll(s, &end, 10);
    if (end == s || errno || x < 0) return -1;
    long long y = x;
    if (*end == ':') {
        const char *s2 = end + 1;
        y = strtoll(s2, &end, 10);
        if (end == s2 || errno || y < x) return -1;
    }
    if (*end) return -1;
    *a = x;
    *b = y;
    return 0;
}

static int parse_run_id(const char *s, int64_t *id) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (end == s || *end || errno || v <= 0) return -1;
    *id = v;
    return 0;
}

int prof_cmd_export(int argc, char **argv) {
    const char *db_path = NULL, *out = NULL;
    ExportScope sc = {0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int has_value = i + 1 < argc;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(a, "--chrome-trace") == 0 && has_value) {
            out = argv[++i];
        } else if (strcmp(a, "--run") == 0 && has_value) {
            if (parse_run_id(argv[++i], &sc.run_id) != 0) {
                fprintf(stderr, "detr-prof export: --run '%s': expected a run id (a positive integer)\n", argv[i]);
                return 2;
            }
        } else if (strcmp(a, "--steps") == 0 && has_value) {
            if (parse_steps(argv[++i], &sc.step_a, &sc.step_b) != 0) {
                fprintf(stderr, "detr-prof export: --steps '%s': expected A:B with 0 <= A <= B (e.g. 10:20)\n",
                        argv[i]);
                return 2;
            }
            sc.has_steps = 1;
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "detr-prof export: unknown option or missing value: %s\n\n", a);
            usage(stderr);
            return 2;
        } else if (!db_path) {
            db_path = a;
        } else {
            fprintf(stderr, "detr-prof export: one database only (got '%s' and '%s')\n", db_path, a);
            return 2;
        }
    }
    if (!db_path || !out) {
        fprintf(stderr, "detr-prof export: %s\n\n",
                !db_path ? "missing the database RUN.db" : "missing --chrome-trace OUT.json");
        usage(stderr);
        return 2;
    }
    char err[512];
    sqlite3 *db = profdb_open_ro(db_path, err, sizeof(err));
    if (!db) {
        fprintf(stderr, "detr-prof export: %s\n", err);
        return 2;
    }
    int rc = 0;
    if (!sc.run_id) sc.run_id = profdb_latest_run(db);
    if (sc.run_id <= 0) {
        fprintf(stderr, "detr-prof export: %s holds no run\n", db_path);
        rc = 2;
    } else if (!profdb_run_exists(db, sc.run_id)) {
        fprintf(stderr, "detr-prof export: %s has no run %" PRId64 " (newest: %" PRId64 ")\n", db_path, sc.run_id,
                profdb_latest_run(db));
        rc = 2;
    } else if (load_scope(db, &sc, err, sizeof(err)) != 0) {
        fprintf(stderr, "detr-prof export: %s: %s\n", db_path, err);
        rc = 2;
    } else if (export_atomically(db, out, &sc, db_path, err, sizeof(err)) != 0) {
        fprintf(stderr, "detr-prof export: %s\n", err);
        rc = 1;
    }
    sqlite3_close(db);
    return rc;
}
