/* prof_sweep_db.c - the sweep's side of the profile database: the DETR_SWEEPS and
 * DETR_SWEEP_TRIALS tables (docs/prof-sweep.md), finding a trial's run, its metrics from the
 * run's DETR_STEPS / DETR_MEMORY rows, and the trials a later sweep may reuse. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "prof.h"
#include "prof_db.h"
#include "prof_internal.h"
#include "prof_sweep_internal.h"

static const char *const SWEEP_DDL =
    "CREATE TABLE IF NOT EXISTS DETR_SWEEPS (sweep_id INTEGER PRIMARY KEY, start_ns INTEGER NOT NULL, "
    "end_ns INTEGER, command_line TEXT, git_rev TEXT, mem_limit_bytes INTEGER, margin REAL, "
    "target_batch INTEGER, status TEXT NOT NULL /* running|done|interrupted */, "
    "recommendation_json TEXT /* {\"fastest\":{trial_id,batch,amp,accum,workers,images_per_s}, "
    "\"target\":{...}|null, \"warnings\":[text...], \"notes\":[text...]} */);"
    "CREATE TABLE IF NOT EXISTS DETR_SWEEP_TRIALS (trial_id INTEGER PRIMARY KEY, sweep_id INTEGER "
    "NOT NULL REFERENCES DETR_SWEEPS(sweep_id), run_id INTEGER /* DETR_RUNS.run_id of the child, "
    "NULL if it never opened the db */, batch INTEGER NOT NULL, amp TEXT NOT NULL, accum INTEGER "
    "NOT NULL, workers INTEGER NOT NULL, phase TEXT /* grid|auto-double|auto-bisect */, status "
    "TEXT NOT NULL /* ok|oom|error|timeout */, exit_code INTEGER, message TEXT /* last lines of "
    "the child's stderr when not ok */, images_per_s REAL, step_p50_ns INTEGER, step_p90_ns "
    "INTEGER, step_p99_ns INTEGER, peak_bytes INTEGER, peak_json TEXT /* {\"parameters\":bytes,"
    "...} per category */, loader_wait_fraction REAL, mfu REAL, padded_fraction REAL, "
    "reused_from INTEGER /* trial_id reused instead of running */, config_key TEXT /* canonical "
    "string of the child's options + git rev, for reuse */, recommended INTEGER NOT NULL DEFAULT "
    "0, start_ns INTEGER, end_ns INTEGER);"
    "CREATE INDEX IF NOT EXISTS DETR_idx_sweep_trials ON DETR_SWEEP_TRIALS(sweep_id);";

sqlite3 *sweep_db_open(const char *path, char *err, size_t errlen) {
    sqlite3 *db = NULL;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "cannot open the database %s: %s; HINT: choose a writable path with --db",
                 path, db ? sqlite3_errmsg(db) : "out of memory");
        sqlite3_close(db);
        return NULL;
    }
    sqlite3_busy_timeout(db, 10000);
    if (sqlite3_db_readonly(db, "main") == 1) {
        snprintf(err, errlen, "the database %s is read-only; HINT: choose a writable path with --db", path);
        sqlite3_close(db);
        return NULL;
    }
    char *msg = NULL;
    char inner[1024];
    /* The profile schema first: detr-train refuses a file whose only tables are ours. */
    if (sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, &msg) != SQLITE_OK) goto sql_error;
    if (prof_schema_check_or_create(db, path, inner, sizeof(inner)) != 0) {
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
        snprintf(err, errlen, "%s", inner);
        sqlite3_close(db);
        return NULL;
    }
    if (sqlite3_exec(db, SWEEP_DDL, NULL, NULL, &msg) != SQLITE_OK ||
        sqlite3_exec(db, "COMMIT", NULL, NULL, &msg) != SQLITE_OK) {
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
        goto sql_error;
    }
    sqlite3_exec(db, "PRAGMA journal_mode = WAL", NULL, NULL, NULL); /* as detr-train writes it */
    return db;
sql_error:
    snprintf(err, errlen, "cannot write the database %s: %s; HINT: choose a writable path with --db",
             path, msg ? msg : sqlite3_errmsg(db));
    sqlite3_free(msg);
    sqlite3_close(db);
    return NULL;
}

static void bind_text_or_null(sqlite3_stmt *s, int i, const char *v) {
    if (v) sqlite3_bind_text(s, i, v, -1, SQLITE_TRANSIENT);
    else sqlite3_bind_null(s, i);
}
static void bind_int_or_null(sqlite3_stmt *s, int i, int64_t v) {
    if (v >= 0) sqlite3_bind_int64(s, i, v);
    else sqlite3_bind_null(s, i);
}
static void bind_real_or_null(sqlite3_stmt *s, int i, double v) {
    if (isfinite(v)) sqlite3_bind_double(s, i, v);
    else sqlite3_bind_null(s, i);
}

int64_t sweep_db_begin(sqlite3 *db, const char *command_line, const char *git_rev,
                       int64_t mem_limit, double margin, int target_batch, char *err, size_t errlen) {
    sqlite3_stmt *s;
    if (sqlite3_prepare_v2(db, "INSERT INTO DETR_SWEEPS (start_ns, command_line, git_rev, "
                           "mem_limit_bytes, margin, target_batch, status) VALUES (?,?,?,?,?,?,'running')",
                           -1, &s, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "cannot record the sweep: %s", sqlite3_errmsg(db));
        return -1;
    }
    sqlite3_bind_int64(s, 1, prof_now_ns());
    bind_text_or_null(s, 2, command_line);
    bind_text_or_null(s, 3, git_rev);
    if (mem_limit > 0) sqlite3_bind_int64(s, 4, mem_limit);
    else sqlite3_bind_null(s, 4);
    sqlite3_bind_double(s, 5, margin);
    if (target_batch > 0) sqlite3_bind_int(s, 6, target_batch);
    else sqlite3_bind_null(s, 6);
    int rc = sqlite3_step(s);
    sqlite3_finalize(s);
    if (rc != SQLITE_DONE) {
        snprintf(err, errlen, "cannot record the sweep: %s", sqlite3_errmsg(db));
        return -1;
    }
    return sqlite3_last_insert_rowid(db);
}

int64_t sweep_db_find_run(sqlite3 *db, int pid, int64_t since_ns) {
    sqlite3_stmt *s;
    if (sqlite3_prepare_v2(db, "SELECT run_id FROM DETR_RUNS WHERE pid = ? AND start_ns >= ? "
                           "ORDER BY run_id DESC LIMIT 1", -1, &s, NULL) != SQLITE_OK)
        return -1;
    sqlite3_bind_int(s, 1, pid);
    sqlite3_bind_int64(s, 2, since_ns);
    int64_t id = sqlite3_step(s) == SQLITE_ROW ? sqlite3_column_int64(s, 0) : -1;
    sqlite3_finalize(s);
    return id;
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Nearest-rank percentile of sorted values. */
static int64_t percentile(const int64_t *v, int n, double p) {
    int k = (int)ceil(p / 100.0 * n);
    if (k < 1) k = 1;
    if (k > n) k = n;
    return v[k - 1];
}

/* Per category: max(peak_bytes) over the run. peak_bytes is the trainer's accounted total: its
 * "total" category when recorded, else the sum of the category peaks (an upper bound, since the
 * categories may peak at different moments); the process RSS is not part of it. */
static void memory_metrics(sqlite3 *db, int64_t run_id, SweepTrial *t) {
    sqlite3_stmt *s;
    if (sqlite3_prepare_v2(db, "SELECT category, max(peak_bytes) FROM DETR_MEMORY WHERE run_id = ? "
                           "GROUP BY category ORDER BY category", -1, &s, NULL) != SQLITE_OK)
        return;
    sqlite3_bind_int64(s, 1, run_id);
    json_t *o = json_object();
    int64_t sum = 0, total = -1;
    int n = 0;
    while (sqlite3_step(s) == SQLITE_ROW) {
        const char *cat = (const char *)sqlite3_column_text(s, 0);
        if (!cat || sqlite3_column_type(s, 1) == SQLITE_NULL) continue;
        int64_t v = sqlite3_column_int64(s, 1);
        json_object_set_new(o, cat, json_integer(v));
        if (strcmp(cat, "total") == 0) total = v;
        else if (strcmp(cat, "process_rss") != 0) sum += v, n++;
    }
    sqlite3_finalize(s);
    t->peak_bytes = total >= 0 ? total : n ? sum : -1;
    free(t->peak_json);
    t->peak_json = json_object_size(o) ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
}

int sweep_db_metrics(sqlite3 *db, int64_t run_id, int warmup, SweepTrial *t) {
    memory_metrics(db, run_id, t);
    sqlite3_stmt *s;
    if (sqlite3_prepare_v2(db, "SELECT wall_ns, data_wait_ns, images, mfu, padded_fraction FROM "
                           "DETR_STEPS WHERE run_id = ? ORDER BY step LIMIT -1 OFFSET ?", -1, &s,
                           NULL) != SQLITE_OK)
        return -1;
    sqlite3_bind_int64(s, 1, run_id);
    sqlite3_bind_int(s, 2, warmup);
    int cap = 64, n = 0, n_mfu = 0, n_pad = 0;
    int64_t *walls = malloc(cap * sizeof(int64_t));
    double sum_wall = 0, sum_wait = 0, sum_images = 0, sum_mfu = 0, sum_pad = 0;
    while (walls && sqlite3_step(s) == SQLITE_ROW) {
        if (sqlite3_column_type(s, 0) == SQLITE_NULL) continue;
        if (n == cap) {
            int64_t *grown = realloc(walls, 2 * cap * sizeof(int64_t));
            if (!grown) break;
            walls = grown, cap *= 2;
        }
        walls[n++] = sqlite3_column_int64(s, 0);
        sum_wall += (double)sqlite3_column_int64(s, 0);
        sum_wait += (double)sqlite3_column_int64(s, 1); /* NULL reads as 0 */
        sum_images += (double)sqlite3_column_int64(s, 2);
        if (sqlite3_column_type(s, 3) != SQLITE_NULL) sum_mfu += sqlite3_column_double(s, 3), n_mfu++;
        if (sqlite3_column_type(s, 4) != SQLITE_NULL) sum_pad += sqlite3_column_double(s, 4), n_pad++;
    }
    sqlite3_finalize(s);
    if (n == 0 || sum_wall <= 0) {
        free(walls);
        return -1;
    }
    qsort(walls, n, sizeof(int64_t), cmp_i64);
    t->images_per_s = sum_images / (sum_wall * 1e-9);
    t->step_p50_ns = percentile(walls, n, 50);
    t->step_p90_ns = percentile(walls, n, 90);
    t->step_p99_ns = percentile(walls, n, 99);
    t->loader_wait_fraction = sum_wait / sum_wall;
    t->mfu = n_mfu ? sum_mfu / n_mfu : NAN;
    t->padded_fraction = n_pad ? sum_pad / n_pad : NAN;
    free(walls);
    return 0;
}

static char *dup_column(sqlite3_stmt *s, int i) {
    const char *v = (const char *)sqlite3_column_text(s, i);
    return v ? strdup(v) : NULL;
}

int sweep_db_find_reusable(sqlite3 *db, const char *config_key, SweepTrial *t) {
    sqlite3_stmt *s;
    if (sqlite3_prepare_v2(db, "SELECT trial_id, run_id, status, exit_code, message FROM "
                           "DETR_SWEEP_TRIALS WHERE config_key = ? AND status IN ('ok','oom') AND "
                           "reused_from IS NULL ORDER BY trial_id DESC LIMIT 1", -1, &s, NULL) != SQLITE_OK)
        return 0;
    sqlite3_bind_text(s, 1, config_key, -1, SQLITE_TRANSIENT);
    int found = sqlite3_step(s) == SQLITE_ROW;
    if (found) {
        t->reused_from = sqlite3_column_int64(s, 0);
        t->run_id = sqlite3_column_type(s, 1) == SQLITE_NULL ? -1 : sqlite3_column_int64(s, 1);
        snprintf(t->status, sizeof(t->status), "%s", (const char *)sqlite3_column_text(s, 2));
        t->exit_code = sqlite3_column_type(s, 3) == SQLITE_NULL ? -1 : sqlite3_column_int(s, 3);
        free(t->message);
        t->message = dup_column(s, 4);
    }
    sqlite3_finalize(s);
    /* an ok trial whose run has gone (rows deleted) cannot give metrics: run it again */
    if (found && strcmp(t->status, "ok") == 0 && (t->run_id < 0 || !profdb_run_exists(db, t->run_id)))
        found = 0;
    return found;
}

int sweep_db_insert_trial(sqlite3 *db, int64_t sweep_id, SweepTrial *t, char *err, size_t errlen) {
    sqlite3_stmt *s;
    if (sqlite3_prepare_v2(db,
                           "INSERT INTO DETR_SWEEP_TRIALS (sweep_id, run_id, batch, amp, accum, workers, "
                           "phase, status, exit_code, message, images_per_s, step_p50_ns, step_p90_ns, "
                           "step_p99_ns, peak_bytes, peak_json, loader_wait_fraction, mfu, "
                           "padded_fraction, reused_from, config_key, start_ns, end_ns) "
                           "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                           -1, &s, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "cannot record the trial: %s", sqlite3_errmsg(db));
        return -1;
    }
    sqlite3_bind_int64(s, 1, sweep_id);
    bind_int_or_null(s, 2, t->run_id);
    sqlite3_bind_int(s, 3, t->batch);
    sqlite3_bind_text(s, 4, t->amp, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int(s, 5, t->accum);
    sqlite3_bind_int(s, 6, t->workers);
    bind_text_or_null(s, 7, t->phase);
    sqlite3_bind_text(s, 8, t->status, -1, SQLITE_TRANSIENT);
    bind_int_or_null(s, 9, t->exit_code);
    bind_text_or_null(s, 10, t->message);
    bind_real_or_null(s, 11, t->images_per_s);
    bind_int_or_null(s, 12, t->step_p50_ns);
    bind_int_or_null(s, 13, t->step_p90_ns);
    bind_int_or_null(s, 14, t->step_p99_ns);
    bind_int_or_null(s, 15, t->peak_bytes);
    bind_text_or_null(s, 16, t->peak_json);
    bind_real_or_null(s, 17, t->loader_wait_fraction);
    bind_real_or_null(s, 18, t->mfu);
    bind_real_or_null(s, 19, t->padded_fraction);
    bind_int_or_null(s, 20, t->reused_from);
    bind_text_or_null(s, 21, t->config_key);
    bind_int_or_null(s, 22, t->start_ns);
    bind_int_or_null(s, 23, t->end_ns);
    int rc = sqlite3_step(s);
    sqlite3_finalize(s);
    if (rc != SQLITE_DONE) {
        snprintf(err, errlen, "cannot record the trial: %s", sqlite3_errmsg(db));
        return -1;
    }
    t->trial_id = sqlite3_last_insert_rowid(db);
    return 0;
}

int sweep_db_finish(sqlite3 *db, int64_t sweep_id, const char *status, const char *rec_json,
                    const char *git_rev, int64_t recommended_trial, char *err, size_t errlen) {
    sqlite3_stmt *s;
    int rc = SQLITE_ERROR;
    if (sqlite3_prepare_v2(db, "UPDATE DETR_SWEEPS SET end_ns = ?, status = ?, recommendation_json = ?, "
                           "git_rev = coalesce(?, git_rev) WHERE sweep_id = ?", -1, &s, NULL) == SQLITE_OK) {
        sqlite3_bind_int64(s, 1, prof_now_ns());
        sqlite3_bind_text(s, 2, status, -1, SQLITE_TRANSIENT);
        bind_text_or_null(s, 3, rec_json);
        bind_text_or_null(s, 4, git_rev);
        sqlite3_bind_int64(s, 5, sweep_id);
        rc = sqlite3_step(s);
        sqlite3_finalize(s);
    }
    if (rc == SQLITE_DONE && recommended_trial > 0 &&
        sqlite3_prepare_v2(db, "UPDATE DETR_SWEEP_TRIALS SET recommended = 1 WHERE trial_id = ?", -1,
                           &s, NULL) == SQLITE_OK) {
        sqlite3_bind_int64(s, 1, recommended_trial);
        rc = sqlite3_step(s);
        sqlite3_finalize(s);
    }
    if (rc != SQLITE_DONE) {
        snprintf(err, errlen, "cannot record the sweep's result: %s", sqlite3_errmsg(db));
        return -1;
    }
    return 0;
}

char *sweep_db_run_revision(sqlite3 *db, int64_t run_id) {
    sqlite3_stmt *s;
    if (sqlite3_prepare_v2(db, "SELECT git_revision FROM DETR_RUNS WHERE run_id = ?", -1, &s, NULL) !=
        SQLITE_OK)
        return NULL;
    sqlite3_bind_int64(s, 1, run_id);
    char *rev = sqlite3_step(s) == SQLITE_ROW ? dup_column(s, 0) : NULL;
    sqlite3_finalize(s);
    return rev;
}
