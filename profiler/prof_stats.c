/* prof_stats.c - loading one run's metrics from a profile database (see prof_stats.h and
 * docs/prof-summary.md for the definitions). */
#include "prof_stats.h"
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "prof_db.h"

int run_stats_default_warmup(int n_steps) {
    int tenth = n_steps / 10;
    return tenth < 2 ? tenth : 2;
}

static char *dup_column(sqlite3_stmt *st, int i) {
    const unsigned char *v = sqlite3_column_text(st, i);
    return v ? strdup((const char *)v) : NULL;
}

static sqlite3_stmt *prepare_run(sqlite3 *db, const char *sql, int64_t run_id, char *err, size_t errlen) {
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "cannot query the database: %s", sqlite3_errmsg(db));
        return NULL;
    }
    sqlite3_bind_int64(st, 1, run_id);
    return st;
}

static int done(sqlite3 *db, sqlite3_stmt *st, int rc, char *err, size_t errlen) {
    if (rc != SQLITE_DONE && rc != SQLITE_ROW)
        snprintf(err, errlen, "reading the database failed: %s", sqlite3_errmsg(db));
    sqlite3_finalize(st);
    return rc == SQLITE_DONE || rc == SQLITE_ROW ? 0 : -1;
}

static double col_or(sqlite3_stmt *st, int i, double unknown) {
    return sqlite3_column_type(st, i) == SQLITE_NULL ? unknown : sqlite3_column_double(st, i);
}

static int load_header(sqlite3 *db, RunStats *s, char *err, size_t errlen) {
    sqlite3_stmt *st = prepare_run(db, "SELECT start_ns, end_ns, status, exit_code, command_line, git_revision, "
                                       "hostname, cpu_model, cpu_cores, device, gpu, level, records_written, "
                                       "dropped_records, dropped_steps, dropped_ranges, write_failed_records, "
                                       "range_errors, writer_cpu_ns, writer_error FROM DETR_RUNS WHERE run_id = ?",
                                   s->run_id, err, errlen);
    if (!st) return -1;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        s->start_ns = sqlite3_column_int64(st, 0);
        s->end_ns = sqlite3_column_int64(st, 1);
        s->status = dup_column(st, 2);
        s->has_exit_code = sqlite3_column_type(st, 3) != SQLITE_NULL;
        s->exit_code = sqlite3_column_int(st, 3);
        s->command_line = dup_column(st, 4);
        s->git_revision = dup_column(st, 5);
        s->hostname = dup_column(st, 6);
        s->cpu_model = dup_column(st, 7);
        s->cpu_cores = sqlite3_column_int(st, 8);
        s->device = dup_column(st, 9);
        s->gpu = dup_column(st, 10);
        s->level = dup_column(st, 11);
        s->records_written = sqlite3_column_int64(st, 12);
        s->dropped_records = sqlite3_column_int64(st, 13);
        s->dropped_steps = sqlite3_column_int64(st, 14);
        s->dropped_ranges = sqlite3_column_int64(st, 15);
        s->write_failed_records = sqlite3_column_int64(st, 16);
        s->range_errors = sqlite3_column_int64(st, 17);
        s->writer_cpu_ns = sqlite3_column_int64(st, 18);
        s->writer_error = dup_column(st, 19);
    } else if (rc == SQLITE_DONE) {
        snprintf(err, errlen, "run %" PRId64 " not found", s->run_id);
        sqlite3_finalize(st);
        return -1;
    }
    return done(db, st, rc, err, errlen);
}

/* Step windows of the measured steps, for attributing phase ranges. */
typedef struct {
    int64_t start, end;
} Window;

static int load_steps(sqlite3 *db, RunStats *s, int warmup, Window **windows, int64_t *first_step, char *err,
                      size_t errlen) {
    sqlite3_stmt *st = prepare_run(db, "SELECT count(*) FROM DETR_STEPS WHERE run_id = ?", s->run_id, err, errlen);
    if (!st) return -1;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) s->n_steps_total = sqlite3_column_int(st, 0);
    if (done(db, st, rc, err, errlen)) return -1;
    s->warmup = warmup < 0 ? run_stats_default_warmup(s->n_steps_total) : warmup;
    if (s->warmup > s->n_steps_total) s->warmup = s->n_steps_total;
    int n = s->n_steps_total - s->warmup;
    s->wall_ns = calloc((size_t)n + 1, sizeof(double));
    s->images = calloc((size_t)n + 1, sizeof(double));
    s->wait_ns = calloc((size_t)n + 1, sizeof(double));
    *windows = calloc((size_t)n + 1, sizeof(Window));
    if (!s->wall_ns || !s->images || !s->wait_ns || !*windows) {
        snprintf(err, errlen, "out of memory for %d steps", n);
        return -1;
    }
    st = prepare_run(db, "SELECT step, wall_ns, images, data_wait_ns, start_ns, end_ns FROM DETR_STEPS "
                         "WHERE run_id = ? ORDER BY step, start_ns", s->run_id, err, errlen);
    if (!st) return -1;
    int row = 0;
    *first_step = INT64_MAX;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (row++ < s->warmup) continue;
        if (s->n_steps >= n) break; /* a run still writing may have added steps since the count */
        int k = s->n_steps++;
        if (k == 0) *first_step = sqlite3_column_int64(st, 0);
        s->wall_ns[k] = sqlite3_column_double(st, 1);
        s->images[k] = col_or(st, 2, 0);
        s->wait_ns[k] = col_or(st, 3, 0);
        (*windows)[k] = (Window){sqlite3_column_int64(st, 4), sqlite3_column_int64(st, 5)};
    }
    return done(db, st, rc, err, errlen);
}

static int phase_index(RunStats *s, const char *name) {
    for (int i = 0; i < s->n_phases; i++)
        if (strcmp(s->phases[i].name, name) == 0) return i;
    PhaseStat *grown = realloc(s->phases, (size_t)(s->n_phases + 1) * sizeof(PhaseStat));
    if (!grown) return -1;
    s->phases = grown;
    PhaseStat *p = &s->phases[s->n_phases];
    memset(p, 0, sizeof(*p));
    snprintf(p->name, sizeof(p->name), "%s", name);
    p->per_step_ns = calloc((size_t)s->n_steps + 1, sizeof(double));
    if (!p->per_step_ns) return -1;
    return s->n_phases++;
}

static int compare_phase_total(const void *a, const void *b) {
    double x = ((const PhaseStat *)a)->total_ns, y = ((const PhaseStat *)b)->total_ns;
    return x < y ? 1 : x > y ? -1 : strcmp(((const PhaseStat *)a)->name, ((const PhaseStat *)b)->name);
}

/* Exclusive time per phase name and measured step. Ranges of the trainer's thread (the one that
 * holds the "step" ranges) are attributed to the step window that contains their start; within
 * a window each range's duration is subtracted from its parent (the nearest enclosing range of
 * lower depth), so the names' exclusive times add up to the step's wall time. */
#define MAX_DEPTH 128
typedef struct {
    int phase, depth;
    int64_t end;
} OpenRange;

static int load_phases(sqlite3 *db, RunStats *s, const Window *w, char *err, size_t errlen) {
    if (s->n_steps == 0) return 0;
    sqlite3_stmt *st = prepare_run(
        db,
        "WITH main(g) AS (SELECT p.global_tid FROM DETR_PHASES p JOIN StringIds n ON n.id = p.name_id "
        "WHERE p.run_id = ?1 AND n.value = 'step' AND p.depth = 0 GROUP BY 1 ORDER BY count(*) DESC LIMIT 1) "
        "SELECT coalesce(n.value, '?'), p.start_ns, p.duration_ns, p.depth FROM DETR_PHASES p "
        "LEFT JOIN StringIds n ON n.id = p.name_id WHERE p.run_id = ?1 AND p.global_tid = (SELECT g FROM main) "
        "AND p.start_ns BETWEEN ?2 AND ?3 ORDER BY p.start_ns, p.depth",
        s->run_id, err, errlen);
    if (!st) return -1;
    sqlite3_bind_int64(st, 2, w[0].start);
    sqlite3_bind_int64(st, 3, w[s->n_steps - 1].end);
    OpenRange stack[MAX_DEPTH];
    int top = 0, k = 0, rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t start = sqlite3_column_int64(st, 1), dur = sqlite3_column_int64(st, 2);
        int depth = sqlite3_column_int(st, 3);
        int k0 = k;
        while (k < s->n_steps && start > w[k].end) k++;
        if (k != k0) top = 0;
        if (k >= s->n_steps) break;
        if (start < w[k].start) continue; /* between steps (evaluation, checkpoint, ...) */
        int ph = phase_index(s, (const char *)sqlite3_column_text(st, 0));
        if (ph < 0) {
            sqlite3_finalize(st);
            snprintf(err, errlen, "out of memory for phase names");
            return -1;
        }
        while (top > 0 && (stack[top - 1].depth >= depth || stack[top - 1].end <= start)) top--;
        s->phases[ph].count++;
        s->phases[ph].per_step_ns[k] += (double)dur;
        if (top > 0) s->phases[stack[top - 1].phase].per_step_ns[k] -= (double)dur;
        if (top < MAX_DEPTH) stack[top++] = (OpenRange){ph, depth, start + dur};
    }
    if (done(db, st, rc, err, errlen)) return -1;
    for (int i = 0; i < s->n_phases; i++)
        for (int j = 0; j < s->n_steps; j++) s->phases[i].total_ns += s->phases[i].per_step_ns[j];
    qsort(s->phases, (size_t)s->n_phases, sizeof(PhaseStat), compare_phase_total);
    return 0;
}

static int load_memory(sqlite3 *db, RunStats *s, char *err, size_t errlen) {
    sqlite3_stmt *st = prepare_run(db, "SELECT category, max(peak_bytes), max(current_bytes) FROM DETR_MEMORY "
                                       "WHERE run_id = ? GROUP BY category ORDER BY max(peak_bytes) DESC, category",
                                   s->run_id, err, errlen);
    if (!st) return -1;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        MemoryStat *grown = realloc(s->memory, (size_t)(s->n_memory + 1) * sizeof(MemoryStat));
        if (!grown) {
            sqlite3_finalize(st);
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        s->memory = grown;
        MemoryStat *m = &s->memory[s->n_memory++];
        snprintf(m->category, sizeof(m->category), "%s", (const char *)sqlite3_column_text(st, 0));
        m->peak_bytes = sqlite3_column_type(st, 1) == SQLITE_NULL ? -1 : sqlite3_column_int64(st, 1);
        m->max_current_bytes = sqlite3_column_type(st, 2) == SQLITE_NULL ? -1 : sqlite3_column_int64(st, 2);
    }
    return done(db, st, rc, err, errlen);
}

static int load_loader(sqlite3 *db, RunStats *s, int64_t first_step, char *err, size_t errlen) {
    sqlite3_stmt *st = prepare_run(db, "SELECT count(*), coalesce(sum(queue_depth = 0), 0), avg(wait_ns) / 1e6, "
                                       "avg(read_ns) / 1e6, avg(decode_ns) / 1e6, avg(augment_ns) / 1e6, "
                                       "avg(collate_ns) / 1e6, coalesce(sum(skipped), 0), "
                                       "coalesce(sum(dropped_boxes), 0), coalesce(sum(bytes_read), 0) "
                                       "FROM DETR_LOADER WHERE run_id = ?1 AND step >= ?2",
                                   s->run_id, err, errlen);
    if (!st) return -1;
    sqlite3_bind_int64(st, 2, first_step);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        s->loader_batches = sqlite3_column_int(st, 0);
        s->loader_starved = sqlite3_column_int(st, 1);
        s->loader_wait_ms = col_or(st, 2, NAN);
        s->loader_read_ms = col_or(st, 3, NAN);
        s->loader_decode_ms = col_or(st, 4, NAN);
        s->loader_augment_ms = col_or(st, 5, NAN);
        s->loader_collate_ms = col_or(st, 6, NAN);
        s->loader_skipped = sqlite3_column_int64(st, 7);
        s->loader_dropped_boxes = sqlite3_column_int64(st, 8);
        s->loader_bytes_read = sqlite3_column_int64(st, 9);
    }
    return done(db, st, rc, err, errlen);
}

static int load_eval(sqlite3 *db, RunStats *s, char *err, size_t errlen) {
    sqlite3_stmt *st = prepare_run(db, "SELECT (SELECT count(*) FROM DETR_EVAL WHERE run_id = ?1), epoch, step, ap, "
                                       "ap50 FROM DETR_EVAL WHERE run_id = ?1 ORDER BY eval_id DESC LIMIT 1",
                                   s->run_id, err, errlen);
    if (!st) return -1;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        s->n_evals = sqlite3_column_int(st, 0);
        s->eval_epoch = sqlite3_column_int(st, 1);
        s->eval_step = sqlite3_column_int64(st, 2);
        s->eval_ap = col_or(st, 3, NAN);
        s->eval_ap50 = col_or(st, 4, NAN);
    }
    return done(db, st, rc, err, errlen);
}

static int load_loss_scaling(sqlite3 *db, RunStats *s, char *err, size_t errlen) {
    sqlite3_stmt *st = prepare_run(db, "SELECT count(loss_scale), total(skipped), (SELECT loss_scale FROM DETR_STEPS "
                                       "WHERE run_id = ?1 ORDER BY step DESC LIMIT 1) FROM DETR_STEPS WHERE run_id = ?1 "
                                       "AND loss_scale IS NOT NULL",
                                   s->run_id, err, errlen);
    if (!st) return -1;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        s->loss_scaled_steps = sqlite3_column_int(st, 0);
        s->skipped_updates = sqlite3_column_int64(st, 1);
        s->last_loss_scale = col_or(st, 2, NAN);
    }
    return done(db, st, rc, err, errlen);
}

int run_stats_load(sqlite3 *db, int64_t run_id, int warmup, RunStats *s, char *err, size_t errlen) {
    memset(s, 0, sizeof(*s));
    s->run_id = run_id;
    s->eval_ap = s->eval_ap50 = NAN;
    s->last_loss_scale = NAN;
    Window *windows = NULL;
    int64_t first_step = INT64_MAX;
    int rc = -1;
    if (load_header(db, s, err, errlen) == 0 && load_steps(db, s, warmup, &windows, &first_step, err, errlen) == 0 &&
        load_phases(db, s, windows, err, errlen) == 0 && load_memory(db, s, err, errlen) == 0 &&
        load_loader(db, s, first_step, err, errlen) == 0 && load_eval(db, s, err, errlen) == 0 &&
        load_loss_scaling(db, s, err, errlen) == 0) {
        static const int p50 = 50, p90 = 90, p99 = 99;
        s->images_per_s = stats_metric(s, stats_fn_images_per_s, NULL);
        s->p50_ms = stats_metric(s, stats_fn_step_ms_pctl, &p50);
        s->p90_ms = stats_metric(s, stats_fn_step_ms_pctl, &p90);
        s->p99_ms = stats_metric(s, stats_fn_step_ms_pctl, &p99);
        s->mean_ms = stats_metric(s, stats_fn_step_ms_mean, NULL);
        s->wait_fraction = stats_metric(s, stats_fn_wait_pct, NULL) / 100.0;
        s->min_ms = s->max_ms = NAN;
        for (int i = 0; i < s->n_steps; i++) {
            double ms = s->wall_ns[i] / 1e6;
            if (i == 0 || ms < s->min_ms) s->min_ms = ms;
            if (i == 0 || ms > s->max_ms) s->max_ms = ms;
        }
        rc = 0;
    }
    free(windows);
    return rc;
}

void run_stats_free(RunStats *s) {
    free(s->status);
    free(s->command_line);
    free(s->git_revision);
    free(s->hostname);
    free(s->cpu_model);
    free(s->device);
    free(s->gpu);
    free(s->level);
    free(s->writer_error);
    free(s->wall_ns);
    free(s->images);
    free(s->wait_ns);
    for (int i = 0; i < s->n_phases; i++) free(s->phases[i].per_step_ns);
    free(s->phases);
    free(s->memory);
    memset(s, 0, sizeof(*s));
}

int stats_parse_run_id(const char *s, int64_t *id) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (end == s || *end || errno || v <= 0) return -1;
    *id = v;
    return 0;
}

int stats_parse_count(const char *s) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    return end == s || *end || errno || v < 0 || v > 1000000000 ? -1 : (int)v;
}

sqlite3 *stats_open_run(const char *cmd, const char *db_path, int64_t *run_id) {
    char err[512];
    sqlite3 *db = profdb_open_ro(db_path, err, sizeof(err));
    if (!db) {
        fprintf(stderr, "detr-prof %s: %s\n", cmd, err);
        return NULL;
    }
    int64_t latest = profdb_latest_run(db);
    if (latest <= 0) {
        fprintf(stderr, "detr-prof %s: %s holds no run\n", cmd, db_path);
    } else if (*run_id > 0 && !profdb_run_exists(db, *run_id)) {
        fprintf(stderr, "detr-prof %s: %s has no run %" PRId64 " (newest: %" PRId64 ")\n", cmd, db_path, *run_id,
                latest);
    } else {
        if (*run_id <= 0) *run_id = latest;
        return db;
    }
    sqlite3_close(db);
    return NULL;
}
