/* prof_report_data.c - the report's JSON document (runs, series downsampled in SQL, sweeps, GPU
 * activity when present) and the self-contained HTML page around it. Layout of the document:
 * docs/prof-report.md. */
#include "prof_report_data.h"
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "assets.h"

#define REPORT_FORMAT_VERSION 1
#define DEFAULT_MAX_POINTS 1000
#define TOP_KERNELS 20

/* Phases of a step in the order the trainer runs them (prof.h's ProfPhase); the breakdown lists
 * these first, any other depth-1 range after them. */
static const char *const PHASE_ORDER[] = {"data_wait", "h2d",     "backbone", "encoder",
                                          "decoder",   "heads",   "matcher",  "loss",
                                          "backward",  "allreduce", "clip",   "optimizer"};
#define N_PHASE_ORDER (sizeof(PHASE_ORDER) / sizeof(PHASE_ORDER[0]))

/* One run's query context: ?1 = run id, ?2 = first step, ?3 = bucket width (steps), ?4/?5 = the
 * run's time window, ?6 = its pid (for GPU tables). The first error sticks. */
typedef struct {
    sqlite3 *db;
    int64_t run_id, first_step, width, t0, t1, pid;
    int64_t last_step;
    json_t *summary; /* the run's summary, completed by the parts that compute headline numbers */
    char *err;
    size_t errlen;
    int failed;
} Ctx;

static void fail(Ctx *c, const char *what) {
    if (c->failed) return;
    c->failed = 1;
    snprintf(c->err, c->errlen, "profile database: %s: %s", what, sqlite3_errmsg(c->db));
}

static sqlite3_stmt *prepare(Ctx *c, const char *sql) {
    sqlite3_stmt *st = NULL;
    if (c->failed) return NULL;
    if (sqlite3_prepare_v2(c->db, sql, -1, &st, NULL) != SQLITE_OK) {
        fail(c, "query failed");
        return NULL;
    }
    int n = sqlite3_bind_parameter_count(st);
    int64_t params[] = {c->run_id, c->first_step, c->width, c->t0, c->t1, c->pid};
    for (int i = 1; i <= n && i <= 6; i++) sqlite3_bind_int64(st, i, params[i - 1]);
    return st;
}

/* A JSON string of s; bytes that are not valid UTF-8 become '?' (jansson refuses them). */
static json_t *jstr(const char *s) {
    json_t *j = json_string(s);
    if (j) return j;
    char *copy = strdup(s);
    if (!copy) return json_null();
    for (char *p = copy; *p; p++)
        if ((unsigned char)*p >= 0x80) *p = '?';
    j = json_string(copy);
    free(copy);
    return j ? j : json_null();
}

/* The column as JSON: NULL, NaN and infinities are null (unknown). */
static json_t *column_json(sqlite3_stmt *st, int i) {
    switch (sqlite3_column_type(st, i)) {
    case SQLITE_INTEGER: return json_integer(sqlite3_column_int64(st, i));
    case SQLITE_FLOAT: {
        double v = sqlite3_column_double(st, i);
        return isfinite(v) ? json_real(v) : json_null();
    }
    case SQLITE_TEXT: return jstr((const char *)sqlite3_column_text(st, i));
    default: return json_null();
    }
}

static int table_exists(sqlite3 *db, const char *name) {
    sqlite3_stmt *st;
    int found = 0;
    if (sqlite3_prepare_v2(db, "SELECT 1 FROM sqlite_master WHERE type IN ('table','view') AND name = ?1",
                           -1, &st, NULL) != SQLITE_OK)
        return 0;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    found = sqlite3_step(st) == SQLITE_ROW;
    sqlite3_finalize(st);
    return found;
}

static int column_exists(sqlite3 *db, const char *table, const char *column) {
    char sql[200];
    snprintf(sql, sizeof(sql), "SELECT 1 FROM pragma_table_info('%s') WHERE name = ?1", table);
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) return 0;
    sqlite3_bind_text(st, 1, column, -1, SQLITE_STATIC);
    int found = sqlite3_step(st) == SQLITE_ROW;
    sqlite3_finalize(st);
    return found;
}

/* The row as an object {column: value}; a column named X_json is stored as X, parsed when it
 * holds valid JSON (else as its text). */
static json_t *row_object(sqlite3_stmt *st) {
    json_t *o = json_object();
    for (int i = 0; i < sqlite3_column_count(st); i++) {
        const char *name = sqlite3_column_name(st, i);
        size_t len = strlen(name);
        if (len > 5 && strcmp(name + len - 5, "_json") == 0) {
            char key[128];
            snprintf(key, sizeof(key), "%.*s", (int)(len - 5), name);
            json_t *parsed = sqlite3_column_type(st, i) == SQLITE_TEXT
                ? json_loads((const char *)sqlite3_column_text(st, i), JSON_DECODE_ANY, NULL) : NULL;
            json_object_set_new(o, key, parsed ? parsed : column_json(st, i));
            continue;
        }
        json_object_set_new(o, name, column_json(st, i));
    }
    return o;
}

static json_t *query_rows(Ctx *c, const char *sql) {
    sqlite3_stmt *st = prepare(c, sql);
    if (!st) return NULL;
    json_t *rows = json_array();
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) json_array_append_new(rows, row_object(st));
    if (rc != SQLITE_DONE) fail(c, "reading rows");
    sqlite3_finalize(st);
    return rows;
}

/* The first row of sql as an object, or null when there is none. */
static json_t *query_row(Ctx *c, const char *sql) {
    json_t *rows = query_rows(c, sql);
    if (!rows) return NULL;
    json_t *row = json_array_size(rows) ? json_incref(json_array_get(rows, 0)) : json_null();
    json_decref(rows);
    return row;
}

/* Column-wise result: {column: [value per row]} (compact for long series). */
static json_t *query_columns(Ctx *c, const char *sql) {
    sqlite3_stmt *st = prepare(c, sql);
    if (!st) return NULL;
    int n = sqlite3_column_count(st);
    json_t *o = json_object();
    json_t **cols = calloc((size_t)n, sizeof(*cols));
    for (int i = 0; i < n; i++) {
        cols[i] = json_array();
        json_object_set_new(o, sqlite3_column_name(st, i), cols[i]);
    }
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        for (int i = 0; i < n; i++) json_array_append_new(cols[i], column_json(st, i));
    if (rc != SQLITE_DONE) fail(c, "reading a series");
    free(cols);
    sqlite3_finalize(st);
    return o;
}

/* The bucket a step falls in, named by its first step (?2 = first step, ?3 = width). */
#define BUCKET(col) "(?2 + ((" col " - ?2) / ?3) * ?3)"

static json_t *run_steps(Ctx *c, int64_t n_steps) {
    (void)n_steps;
    return query_columns(c,
        "SELECT " BUCKET("step") " AS step, count(*) AS n, max(epoch) AS epoch, "
        "sum(images) * 1e9 / nullif(sum(wall_ns), 0) AS images_per_s, "
        "avg(wall_ns) / 1e6 AS wall_ms, min(wall_ns) / 1e6 AS wall_ms_min, max(wall_ns) / 1e6 AS wall_ms_max, "
        "avg(data_wait_ns) / 1e6 AS data_wait_ms, max(data_wait_ns) / 1e6 AS data_wait_ms_max, "
        "avg(h2d_ns) / 1e6 AS h2d_ms, avg(loss) AS loss, avg(lr) AS lr, avg(lr_backbone) AS lr_backbone, "
        "avg(grad_norm) AS grad_norm, max(grad_norm) AS grad_norm_max, avg(mfu) AS mfu, "
        "avg(padded_fraction) AS padded_fraction, min(loss_scale) AS loss_scale, "
        "sum(skipped) AS skipped_updates, avg(gpu_util) AS gpu_util, avg(gpu_mem_util) AS gpu_mem_util "
        "FROM DETR_STEPS WHERE run_id = ?1 GROUP BY 1 ORDER BY 1");
}

static json_t *run_loader(Ctx *c, int64_t n_steps) {
    (void)n_steps;
    return query_columns(c,
        "SELECT " BUCKET("step") " AS step, avg(wait_ns) / 1e6 AS wait_ms, max(wait_ns) / 1e6 AS wait_ms_max, "
        "avg(queue_depth) AS queue_depth, min(queue_depth) AS queue_depth_min, "
        "avg(read_ns) / 1e6 AS read_ms, avg(decode_ns) / 1e6 AS decode_ms, "
        "avg(augment_ns) / 1e6 AS augment_ms, avg(collate_ns) / 1e6 AS collate_ms, "
        "avg(bytes_read) AS bytes_read, avg(padded_fraction) AS padded_fraction, "
        "sum(skipped) AS skipped, sum(dropped_boxes) AS dropped_boxes "
        "FROM DETR_LOADER WHERE run_id = ?1 AND step IS NOT NULL GROUP BY 1 ORDER BY 1");
}

/* ---- series of (step, name, value) rows, bucketed in one streamed scan ----
 * GROUP BY bucket, name over millions of rows (12 phases, 7 memory categories or 30 loss terms
 * per step) makes SQLite sort every row; one unordered scan accumulated per bucket here is 3-5x
 * faster and gives the same numbers. The SQL still does the selection; no step ever reaches the
 * page undownsampled. */

#define GRID_MAX_NAMES 48 /* more distinct names (free-text ranges) fold into "(more)" */

typedef enum { GRID_MEAN, GRID_MAX } GridMode;

typedef struct {
    GridMode mode;
    int64_t first, width;
    int n_buckets, n_names;
    char *names[GRID_MAX_NAMES];
    int64_t ids[GRID_MAX_NAMES]; /* StringIds id when names come by id */
    double *val[GRID_MAX_NAMES];
    int64_t *cnt[GRID_MAX_NAMES];
    int64_t *bucket_weight; /* when set, a bucket's value is sum / weight (e.g. steps in the bucket) */
    int last;               /* index of the last name found: rows often repeat it */
} Grid;

static void grid_init(Grid *g, GridMode mode, const Ctx *c, int n_buckets) {
    memset(g, 0, sizeof(*g));
    g->mode = mode, g->first = c->first_step, g->width = c->width, g->n_buckets = n_buckets;
}

static void grid_free(Grid *g) {
    for (int i = 0; i < g->n_names; i++) free(g->names[i]), free(g->val[i]), free(g->cnt[i]);
}

static int grid_add_name(Grid *g, const char *name, int64_t id) {
    if (g->n_names == GRID_MAX_NAMES) return GRID_MAX_NAMES - 1;
    int i = g->n_names;
    g->names[i] = strdup(i == GRID_MAX_NAMES - 1 ? "(more)" : name);
    g->ids[i] = id;
    g->val[i] = calloc((size_t)g->n_buckets, sizeof(double));
    g->cnt[i] = calloc((size_t)g->n_buckets, sizeof(int64_t));
    if (!g->names[i] || !g->val[i] || !g->cnt[i]) {
        free(g->names[i]), free(g->val[i]), free(g->cnt[i]);
        return -1;
    }
    g->n_names++;
    return i;
}

static int grid_name(Grid *g, const char *name) {
    if (g->last < g->n_names && strcmp(g->names[g->last], name) == 0) return g->last;
    for (int i = 0; i < g->n_names; i++)
        if (strcmp(g->names[i], name) == 0) return g->last = i;
    int i = grid_add_name(g, name, -1);
    return i >= 0 ? (g->last = i) : -1;
}

static void grid_add(Grid *g, int name, int64_t step, double v) {
    if (name < 0) return;
    int64_t b = (step - g->first) / g->width;
    if (b < 0 || b >= g->n_buckets) return;
    if (g->mode == GRID_MAX) {
        if (!g->cnt[name][b] || v > g->val[name][b]) g->val[name][b] = v;
    } else {
        g->val[name][b] += v;
    }
    g->cnt[name][b]++;
}

static double grid_value(const Grid *g, int name, int b) {
    if (g->mode == GRID_MAX) return g->val[name][b];
    if (g->bucket_weight) return g->bucket_weight[b] ? g->val[name][b] / (double)g->bucket_weight[b] : 0;
    return g->val[name][b] / (double)g->cnt[name][b];
}

/* {"step": [first step of each bucket with data], "names": [...], "values": {name: [...]}} with
 * null where a name has no row in a bucket; names in `order` come first, in that order. */
static json_t *grid_json(const Grid *g, const char *const *order, size_t n_order, int integers) {
    json_t *steps = json_array(), *values = json_object(), *names = json_array();
    int used[GRID_MAX_NAMES] = {0}, seq[GRID_MAX_NAMES], n_seq = 0;
    for (size_t k = 0; k < n_order; k++)
        for (int i = 0; i < g->n_names; i++)
            if (!used[i] && strcmp(g->names[i], order[k]) == 0) used[i] = 1, seq[n_seq++] = i;
    for (int i = 0; i < g->n_names; i++)
        if (!used[i]) seq[n_seq++] = i;
    json_t *arrs[GRID_MAX_NAMES];
    for (int k = 0; k < n_seq; k++) {
        arrs[k] = json_array();
        json_object_set_new(values, g->names[seq[k]], arrs[k]);
        json_array_append_new(names, jstr(g->names[seq[k]]));
    }
    for (int b = 0; b < g->n_buckets; b++) {
        int any = 0;
        for (int i = 0; i < g->n_names && !any; i++) any = g->cnt[i][b] > 0;
        if (!any) continue;
        json_array_append_new(steps, json_integer(g->first + (int64_t)b * g->width));
        for (int k = 0; k < n_seq; k++) {
            int i = seq[k];
            if (!g->cnt[i][b]) {
                json_array_append_new(arrs[k], json_null());
                continue;
            }
            double v = grid_value(g, i, b);
            json_array_append_new(arrs[k], integers ? json_integer((json_int_t)llround(v)) : json_real(v));
        }
    }
    return json_pack("{s:o, s:o, s:o}", "step", steps, "names", names, "values", values);
}

/* The run's steps: their spans (to tell a step's phases from an evaluation's, recorded under the
 * same step number) and per-bucket counts and wall time. */
typedef struct {
    int64_t n, *step, *start, *end;
    int n_buckets;
    int64_t *bucket_steps, *bucket_wall;
} StepSpans;

static void spans_free(StepSpans *s) {
    free(s->step), free(s->start), free(s->end), free(s->bucket_steps), free(s->bucket_wall);
}

static int spans_load(Ctx *c, StepSpans *s, int64_t n_steps) {
    memset(s, 0, sizeof(*s));
    s->n_buckets = n_steps > 0 ? (int)((json_int_t)(c->last_step - c->first_step) / c->width + 1) : 0;
    size_t n = (size_t)(n_steps > 0 ? n_steps : 1), nb = (size_t)(s->n_buckets > 0 ? s->n_buckets : 1);
    s->step = malloc(n * sizeof(int64_t)), s->start = malloc(n * sizeof(int64_t)), s->end = malloc(n * sizeof(int64_t));
    s->bucket_steps = calloc(nb, sizeof(int64_t)), s->bucket_wall = calloc(nb, sizeof(int64_t));
    if (!s->step || !s->start || !s->end || !s->bucket_steps || !s->bucket_wall) {
        snprintf(c->err, c->errlen, "out of memory reading the steps");
        c->failed = 1;
        return -1;
    }
    sqlite3_stmt *st = prepare(c, "SELECT step, start_ns, end_ns, wall_ns FROM DETR_STEPS WHERE run_id = ?1 ORDER BY step");
    if (!st) return -1;
    while (sqlite3_step(st) == SQLITE_ROW && s->n < n_steps) {
        int64_t step = sqlite3_column_int64(st, 0), b = (step - c->first_step) / c->width;
        s->step[s->n] = step, s->start[s->n] = sqlite3_column_int64(st, 1), s->end[s->n] = sqlite3_column_int64(st, 2);
        s->n++;
        if (b >= 0 && b < s->n_buckets) s->bucket_steps[b]++, s->bucket_wall[b] += sqlite3_column_int64(st, 3);
    }
    sqlite3_finalize(st);
    return 0;
}

/* Index of step in the sorted spans, or -1. */
static int64_t spans_find(const StepSpans *s, int64_t step) {
    int64_t lo = 0, hi = s->n - 1;
    while (lo <= hi) {
        int64_t mid = (lo + hi) / 2;
        if (s->step[mid] == step) return mid;
        if (s->step[mid] < step) lo = mid + 1;
        else hi = mid - 1;
    }
    return -1;
}

/* StringIds.value of id (into buf), or "#id" when it is missing. */
static const char *string_of_id(Ctx *c, int64_t id, char *buf, size_t n) {
    snprintf(buf, n, "#%lld", (long long)id);
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(c->db, "SELECT value FROM StringIds WHERE id = ?1", -1, &st, NULL) == SQLITE_OK) {
        sqlite3_bind_int64(st, 1, id);
        if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0))
            snprintf(buf, n, "%s", (const char *)sqlite3_column_text(st, 0));
    }
    sqlite3_finalize(st);
    return buf;
}

/* Mean ms per step of each depth-1 range that starts inside its step's span (an evaluation's
 * forward phases carry the step current at the time but lie outside it), plus "other": the step
 * time no phase covers. "mean": each phase's mean ms per step over the whole run. */
static json_t *run_phases(Ctx *c, int64_t n_steps) {
    StepSpans sp;
    Grid g;
    if (spans_load(c, &sp, n_steps) != 0) {
        spans_free(&sp);
        return NULL;
    }
    grid_init(&g, GRID_MEAN, c, sp.n_buckets);
    char name[256];
    g.bucket_weight = sp.bucket_steps;
    sqlite3_stmt *st = prepare(c,
        "SELECT step, name_id, start_ns, duration_ns FROM DETR_PHASES "
        "WHERE run_id = ?1 AND depth = 1 AND step IS NOT NULL");
    int rc = SQLITE_DONE;
    while (st && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t step = sqlite3_column_int64(st, 0), id = sqlite3_column_int64(st, 1), start = sqlite3_column_int64(st, 2);
        int64_t k = spans_find(&sp, step);
        if (k < 0 || start < sp.start[k] || start >= sp.end[k]) continue;
        int i = g.last < g.n_names && g.ids[g.last] == id ? g.last : -1;
        for (int j = 0; j < g.n_names && i < 0; j++)
            if (g.ids[j] == id) i = j;
        if (i < 0) i = grid_add_name(&g, string_of_id(c, id, name, sizeof(name)), id);
        g.last = i >= 0 ? i : 0;
        grid_add(&g, i, step, (double)sqlite3_column_int64(st, 3) / 1e6);
    }
    if (st && rc != SQLITE_DONE) fail(c, "reading DETR_PHASES");
    sqlite3_finalize(st);
    json_t *out = NULL;
    if (!c->failed) {
        int other = grid_add_name(&g, "other", -2);
        for (int b = 0; b < sp.n_buckets && other >= 0; b++) {
            if (!sp.bucket_steps[b]) continue;
            double covered = 0;
            for (int i = 0; i < other; i++) covered += g.val[i][b];
            double rest = (double)sp.bucket_wall[b] / 1e6 - covered;
            g.val[other][b] = rest > 0 ? rest : 0;
            g.cnt[other][b] = 1;
        }
        const char *order[N_PHASE_ORDER];
        for (size_t i = 0; i < N_PHASE_ORDER; i++) order[i] = PHASE_ORDER[i];
        out = grid_json(&g, order, N_PHASE_ORDER, 0);
        /* "other" last, after any free-text names */
        json_t *names = json_object_get(out, "names");
        for (size_t i = 0; i + 1 < json_array_size(names); i++)
            if (strcmp(json_string_value(json_array_get(names, i)), "other") == 0) {
                json_array_remove(names, i);
                json_array_append_new(names, json_string("other"));
                break;
            }
        json_t *mean = json_object();
        for (int i = 0; i < g.n_names; i++) {
            double sum = 0;
            for (int b = 0; b < sp.n_buckets; b++) sum += g.val[i][b];
            json_object_set_new(mean, g.names[i], json_real(sp.n ? sum / (double)sp.n : 0));
        }
        json_object_set_new(out, "mean", mean);
    }
    grid_free(&g);
    spans_free(&sp);
    return out;
}

/* Current bytes per category (the bucket's maximum: a spike must stay visible) and each
 * category's peak; the headline peaks go into the summary. */
static json_t *run_memory(Ctx *c, int64_t n_steps) {
    Grid g;
    int n_buckets = n_steps > 0 ? (int)((c->last_step - c->first_step) / c->width + 1) : 0;
    grid_init(&g, GRID_MAX, c, n_buckets);
    double peak[GRID_MAX_NAMES] = {0};
    sqlite3_stmt *st = prepare(c, "SELECT step, category, current_bytes, peak_bytes FROM DETR_MEMORY WHERE run_id = ?1");
    int rc = SQLITE_DONE;
    while (st && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *cat = (const char *)sqlite3_column_text(st, 1);
        int i = grid_name(&g, cat ? cat : "?");
        if (i < 0) continue;
        if (sqlite3_column_type(st, 2) != SQLITE_NULL)
            grid_add(&g, i, sqlite3_column_int64(st, 0), (double)sqlite3_column_int64(st, 2));
        double p = (double)sqlite3_column_int64(st, 3);
        if (p > peak[i]) peak[i] = p;
    }
    if (st && rc != SQLITE_DONE) fail(c, "reading DETR_MEMORY");
    sqlite3_finalize(st);
    json_t *out = NULL;
    if (!c->failed) {
        out = grid_json(&g, NULL, 0, 1);
        json_t *peaks = json_object();
        double tracked = 0, rss = -1, total = -1;
        for (int i = 0; i < g.n_names; i++) {
            json_object_set_new(peaks, g.names[i], json_integer((json_int_t)peak[i]));
            if (strcmp(g.names[i], "process_rss") == 0) rss = peak[i];
            else if (strcmp(g.names[i], "total") == 0) total = peak[i];
            else tracked += peak[i];
        }
        json_object_set_new(out, "peaks", peaks);
        if (c->summary && g.n_names) {
            json_object_set_new(c->summary, "peak_tracked_bytes", json_integer((json_int_t)tracked));
            json_object_set_new(c->summary, "peak_total_bytes", total >= 0 ? json_integer((json_int_t)total) : json_null());
            json_object_set_new(c->summary, "peak_rss_bytes", rss >= 0 ? json_integer((json_int_t)rss) : json_null());
        }
    }
    grid_free(&g);
    return out;
}

/* Loss terms (DETR_LOSSES: the keys of losses_json), the bucket's mean; main terms first. */
static json_t *run_losses(Ctx *c, int64_t n_steps) {
    static const char *const order[] = {"loss_ce", "loss_bbox", "loss_giou", "class_error", "cardinality_error"};
    Grid g;
    int n_buckets = n_steps > 0 ? (int)((c->last_step - c->first_step) / c->width + 1) : 0;
    grid_init(&g, GRID_MEAN, c, n_buckets);
    sqlite3_stmt *st = prepare(c, "SELECT step, name, value FROM DETR_LOSSES WHERE run_id = ?1");
    int rc = SQLITE_DONE;
    while (st && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (sqlite3_column_type(st, 2) == SQLITE_NULL) continue;
        double v = sqlite3_column_double(st, 2);
        const char *name = (const char *)sqlite3_column_text(st, 1);
        if (name && isfinite(v)) grid_add(&g, grid_name(&g, name), sqlite3_column_int64(st, 0), v);
    }
    if (st && rc != SQLITE_DONE) fail(c, "reading DETR_LOSSES");
    sqlite3_finalize(st);
    json_t *out = c->failed ? NULL : grid_json(&g, order, sizeof(order) / sizeof(order[0]), 0);
    grid_free(&g);
    return out;
}

static json_t *run_eval(Ctx *c, int64_t n_steps) {
    (void)n_steps;
    json_t *e = query_columns(c,
        "SELECT step, epoch, ap, ap50, ap75, ap_small, ap_medium, ap_large, ar1, ar10, ar100, "
        "duration_ns / 1e6 AS duration_ms, images FROM DETR_EVAL WHERE run_id = ?1 "
        "AND eval_id IN (SELECT max(eval_id) FROM DETR_EVAL WHERE run_id = ?1 "
        "                GROUP BY " BUCKET("coalesce(step, 0)") ") ORDER BY eval_id");
    if (!e) return NULL;
    json_t *cats = query_rows(c,
        "SELECT category_id, ap FROM DETR_EVAL_CATEGORIES WHERE eval_id = "
        "(SELECT max(eval_id) FROM DETR_EVAL WHERE run_id = ?1) ORDER BY category_id");
    if (cats) json_object_set_new(e, "last_categories", cats);
    return e;
}

/* Headline numbers. Warm-up (the first min(10, steps/5) steps) is left out of throughput, step
 * percentiles and MFU. */
static json_t *run_summary(Ctx *c, int64_t n_steps) {
    json_t *s = query_row(c,
        "SELECT run_id, start_ns, end_ns, status, exit_code, level, device, command_line, git_revision, "
        "hostname, cpu_model, cpu_cores, gpu, library_versions, config_json, peak_flops, pid, "
        "schema_version, records_written, dropped_records, dropped_steps, dropped_ranges, "
        "write_failed_records, range_errors, writer_cpu_ns, writer_error "
        "FROM DETR_RUNS WHERE run_id = ?1");
    if (!s || !json_is_object(s)) return s;
    int64_t warm = n_steps / 5 < 10 ? n_steps / 5 : 10;
    json_object_set_new(s, "warmup_steps", json_integer(warm));
    char sql[1200];
    snprintf(sql, sizeof(sql),
             "SELECT count(*) AS measured_steps, sum(images) AS measured_images, "
             "(SELECT sum(images) FROM DETR_STEPS WHERE run_id = ?1) AS images, "
             "(SELECT min(step) FROM DETR_STEPS WHERE run_id = ?1) AS first_step, "
             "(SELECT max(step) FROM DETR_STEPS WHERE run_id = ?1) AS last_step, "
             "(SELECT max(end_ns) - min(start_ns) FROM DETR_STEPS WHERE run_id = ?1) AS steps_span_ns, "
             "(SELECT sum(skipped) FROM DETR_STEPS WHERE run_id = ?1 AND loss_scale IS NOT NULL) AS skipped_updates, "
             "(SELECT loss_scale FROM DETR_STEPS WHERE run_id = ?1 ORDER BY step DESC LIMIT 1) AS last_loss_scale, "
             "sum(images) * 1e9 / nullif(sum(wall_ns), 0) AS images_per_s, "
             "avg(wall_ns) / 1e6 AS step_ms_mean, "
             "sum(flops) * 1e9 / nullif(sum(wall_ns), 0) / "
             "  nullif((SELECT peak_flops FROM DETR_RUNS WHERE run_id = ?1), 0) AS mfu, "
             "1.0 * sum(data_wait_ns) / nullif(sum(wall_ns), 0) AS data_wait_fraction "
             "FROM DETR_STEPS WHERE run_id = ?1 AND step >= ?2 + %lld",
             (long long)warm);
    json_t *agg = query_row(c, sql);
    if (agg && json_is_object(agg)) json_object_update(s, agg);
    json_decref(agg);
    json_object_set_new(s, "steps", json_integer(n_steps));
    /* p50/p90/p99 (nearest rank) from one sorted pass */
    const double quantiles[] = {0.5, 0.9, 0.99};
    const char *keys[] = {"step_ms_p50", "step_ms_p90", "step_ms_p99"};
    int64_t measured = n_steps - warm, rank[3];
    for (int i = 0; i < 3; i++) rank[i] = (int64_t)(quantiles[i] * (double)(measured - 1) + 0.5);
    snprintf(sql, sizeof(sql), "SELECT wall_ns / 1e6 FROM DETR_STEPS WHERE run_id = ?1 AND step >= ?2 + %lld ORDER BY wall_ns",
             (long long)warm);
    sqlite3_stmt *st = measured > 0 ? prepare(c, sql) : NULL;
    for (int64_t k = 0; st && sqlite3_step(st) == SQLITE_ROW && k <= rank[2]; k++)
        for (int i = 0; i < 3; i++)
            if (k == rank[i]) json_object_set_new(s, keys[i], column_json(st, 0));
    sqlite3_finalize(st);
    json_t *mem = query_row(c,
        "SELECT (SELECT ap FROM DETR_EVAL WHERE run_id = ?1 ORDER BY eval_id DESC LIMIT 1) AS last_ap, "
        "(SELECT max(ap) FROM DETR_EVAL WHERE run_id = ?1) AS best_ap");
    if (mem && json_is_object(mem)) json_object_update(s, mem);
    json_decref(mem);
    return s;
}

/* Interval union of the kernels (per device) clipped to the steps' window [t0, t1): the time at
 * least one kernel ran (TensorBoard's "GPU Utilization" numerator). */
static json_t *gpu_busy(Ctx *c, const char *window, int64_t w0, int64_t w1) {
    char sql[600];
    snprintf(sql, sizeof(sql),
             "SELECT deviceId, start, \"end\" FROM CUPTI_ACTIVITY_KIND_KERNEL k WHERE %s "
             "ORDER BY deviceId, start", window);
    sqlite3_stmt *st = prepare(c, sql);
    if (!st) return NULL;
    json_t *devices = json_array();
    int64_t dev = 0, cur_s = 0, cur_e = 0, busy = 0, total = 0;
    int have_dev = 0, have_iv = 0;
    int rc;
    for (;;) {
        rc = sqlite3_step(st);
        int row = rc == SQLITE_ROW;
        int64_t d = row ? sqlite3_column_int64(st, 0) : 0;
        if (have_dev && (!row || d != dev)) {
            if (have_iv) busy += cur_e - cur_s;
            json_array_append_new(devices, json_pack("{s:I, s:I}", "device", (json_int_t)dev, "busy_ns", (json_int_t)busy));
            total += busy;
            busy = 0;
            have_iv = 0;
        }
        if (!row) break;
        dev = d;
        have_dev = 1;
        int64_t s = sqlite3_column_int64(st, 1), e = sqlite3_column_int64(st, 2);
        if (s < w0) s = w0;
        if (e > w1) e = w1;
        if (e <= s) continue;
        if (have_iv && s <= cur_e) {
            if (e > cur_e) cur_e = e;
        } else {
            if (have_iv) busy += cur_e - cur_s;
            cur_s = s, cur_e = e, have_iv = 1;
        }
    }
    if (rc != SQLITE_DONE) fail(c, "reading CUPTI_ACTIVITY_KIND_KERNEL");
    sqlite3_finalize(st);
    size_t n_dev = json_array_size(devices);
    double window_ns = (double)(w1 - w0);
    return json_pack("{s:o, s:I, s:I, s:o}", "devices", devices, "busy_ns", (json_int_t)total,
                     "window_ns", (json_int_t)(w1 - w0), "busy_fraction",
                     n_dev && window_ns > 0 ? json_real((double)total / n_dev / window_ns) : json_null());
}

/* Kernels, memcpy and memset of the run, from nsys-style CUPTI tables when the file has them
 * (rows in the run's time window and, when the table has globalPid, of the run's process). */
static json_t *run_gpu(Ctx *c, int64_t n_steps) {
    (void)n_steps;
    static const char *const tables[] = {"CUPTI_ACTIVITY_KIND_KERNEL", "CUPTI_ACTIVITY_KIND_MEMCPY",
                                         "CUPTI_ACTIVITY_KIND_MEMSET"};
    int has[3], any = 0;
    for (int i = 0; i < 3; i++) any |= has[i] = table_exists(c->db, tables[i]);
    if (!any) return json_null();
    json_t *g = json_object();
    char window[3][300];
    for (int i = 0; i < 3; i++)
        snprintf(window[i], sizeof(window[i]), "start >= ?4 AND start <= ?5%s",
                 has[i] && column_exists(c->db, tables[i], "globalPid")
                     ? " AND (globalPid IS NULL OR ((globalPid >> 24) & 16777215) = ?6)" : "");
    char sql[1600];
    if (has[0]) {
        snprintf(sql, sizeof(sql),
                 "WITH k AS (SELECT * FROM CUPTI_ACTIVITY_KIND_KERNEL WHERE %s), "
                 "t AS (SELECT sum(\"end\" - start) AS total FROM k) "
                 "SELECT coalesce(sd.value, ss.value, '?') AS name, coalesce(ss.value, sd.value, '?') AS short_name, "
                 "count(*) AS count, sum(k.\"end\" - k.start) AS total_ns, avg(k.\"end\" - k.start) AS avg_ns, "
                 "min(k.\"end\" - k.start) AS min_ns, max(k.\"end\" - k.start) AS max_ns, "
                 "1.0 * sum(k.\"end\" - k.start) / nullif((SELECT total FROM t), 0) AS fraction "
                 "FROM k LEFT JOIN StringIds sd ON sd.id = k.demangledName "
                 "LEFT JOIN StringIds ss ON ss.id = k.shortName "
                 "GROUP BY k.demangledName ORDER BY total_ns DESC LIMIT %d",
                 window[0], TOP_KERNELS);
        json_object_set_new(g, "kernels", query_rows(c, sql));
        snprintf(sql, sizeof(sql),
                 "SELECT count(*) AS count, sum(\"end\" - start) AS total_ns, count(DISTINCT demangledName) AS distinct_names "
                 "FROM CUPTI_ACTIVITY_KIND_KERNEL WHERE %s", window[0]);
        json_object_set_new(g, "kernel_totals", query_row(c, sql));
        json_t *span = query_row(c, "SELECT min(start_ns) AS t0, max(end_ns) AS t1 FROM DETR_STEPS WHERE run_id = ?1");
        json_t *t0 = span ? json_object_get(span, "t0") : NULL, *t1 = span ? json_object_get(span, "t1") : NULL;
        if (json_is_integer(t0) && json_is_integer(t1))
            json_object_set_new(g, "busy", gpu_busy(c, window[0], json_integer_value(t0), json_integer_value(t1)));
        json_decref(span);
    }
    if (has[1]) {
        /* labels of ENUM_CUDA_MEMCPY_OPER (profiling.md §1.4) when the file lacks the table */
        const char *labels = table_exists(c->db, "ENUM_CUDA_MEMCPY_OPER")
            ? "SELECT id, label FROM ENUM_CUDA_MEMCPY_OPER"
            : "VALUES (0,'Unknown'),(1,'Host-to-Device'),(2,'Device-to-Host'),(3,'Host-to-Array'),"
              "(4,'Array-to-Host'),(5,'Array-to-Array'),(6,'Array-to-Device'),(7,'Device-to-Array'),"
              "(8,'Device-to-Device'),(9,'Host-to-Host'),(10,'Peer-to-Peer'),(11,'Unified Host-to-Device'),"
              "(12,'Unified Device-to-Host'),(13,'Unified Device-to-Device')";
        snprintf(sql, sizeof(sql),
                 "WITH labels(id, label) AS (%s) "
                 "SELECT m.copyKind AS copy_kind, coalesce(l.label, 'kind ' || m.copyKind) AS kind, "
                 "count(*) AS count, sum(m.bytes) AS bytes, sum(m.\"end\" - m.start) AS total_ns, "
                 "sum(m.bytes) * 1e9 / nullif(sum(m.\"end\" - m.start), 0) AS bytes_per_s "
                 "FROM CUPTI_ACTIVITY_KIND_MEMCPY m LEFT JOIN labels l ON l.id = m.copyKind "
                 "WHERE %s GROUP BY m.copyKind ORDER BY total_ns DESC",
                 labels, window[1]);
        json_object_set_new(g, "memcpy", query_rows(c, sql));
    }
    if (has[2]) {
        snprintf(sql, sizeof(sql),
                 "SELECT count(*) AS count, sum(bytes) AS bytes, sum(\"end\" - start) AS total_ns "
                 "FROM CUPTI_ACTIVITY_KIND_MEMSET WHERE %s", window[2]);
        json_object_set_new(g, "memset", query_row(c, sql));
    }
    return g;
}

static json_t *run_document(Ctx *c, int max_points) {
    json_t *range = query_row(c, "SELECT count(*) AS n, min(step) AS lo, max(step) AS hi, "
                                 "(SELECT start_ns FROM DETR_RUNS WHERE run_id = ?1) AS t0, "
                                 "(SELECT coalesce(end_ns, 9223372036854775807) FROM DETR_RUNS WHERE run_id = ?1) AS t1, "
                                 "(SELECT pid FROM DETR_RUNS WHERE run_id = ?1) AS pid "
                                 "FROM DETR_STEPS WHERE run_id = ?1");
    if (!range) return NULL;
    int64_t n = json_integer_value(json_object_get(range, "n"));
    int64_t lo = json_integer_value(json_object_get(range, "lo")), hi = json_integer_value(json_object_get(range, "hi"));
    c->first_step = lo;
    c->last_step = hi;
    c->width = n > 0 ? (hi - lo + max_points) / max_points : 1; /* ceil((hi - lo + 1) / max_points) */
    if (c->width < 1) c->width = 1;
    c->t0 = json_integer_value(json_object_get(range, "t0"));
    c->t1 = json_integer_value(json_object_get(range, "t1"));
    c->pid = json_integer_value(json_object_get(range, "pid"));
    json_decref(range);

    json_t *r = json_object();
    json_object_set_new(r, "run_id", json_integer(c->run_id));
    json_object_set_new(r, "bucket_steps", json_integer(c->width));
    struct {
        const char *key;
        json_t *(*build)(Ctx *, int64_t);
    } parts[] = {{"steps", run_steps}, {"phases", run_phases}, {"memory", run_memory}, {"loader", run_loader},
                 {"losses", run_losses}, {"eval", run_eval}, {"gpu", run_gpu}};
    c->summary = run_summary(c, n);
    json_object_set_new(r, "summary", c->summary ? c->summary : json_null());
    for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]) && !c->failed; i++) {
        json_t *part = parts[i].build(c, n);
        json_object_set_new(r, parts[i].key, part ? part : json_null());
    }
    if (c->failed) {
        json_decref(r);
        return NULL;
    }
    return r;
}

static json_t *sweeps_document(Ctx *c) {
    if (!table_exists(c->db, "DETR_SWEEPS") || !table_exists(c->db, "DETR_SWEEP_TRIALS")) return json_array();
    json_t *sweeps = query_rows(c, "SELECT * FROM DETR_SWEEPS ORDER BY sweep_id");
    if (!sweeps) return NULL;
    size_t i;
    json_t *sw;
    json_array_foreach(sweeps, i, sw) {
        sqlite3_stmt *st = prepare(c, "SELECT * FROM DETR_SWEEP_TRIALS WHERE sweep_id = ?1 ORDER BY trial_id");
        if (!st) break;
        sqlite3_bind_int64(st, 1, json_integer_value(json_object_get(sw, "sweep_id")));
        json_t *trials = json_array();
        while (sqlite3_step(st) == SQLITE_ROW) json_array_append_new(trials, row_object(st));
        sqlite3_finalize(st);
        json_object_set_new(sw, "trials", trials);
    }
    return sweeps;
}

char *report_data_json(sqlite3 *db, const int64_t *run_ids, int n_runs, int max_points, char *err,
                       size_t errlen) {
    if (max_points <= 0) max_points = DEFAULT_MAX_POINTS;
    Ctx c = {.db = db, .err = err, .errlen = errlen};
    int64_t newest = -1;
    if (n_runs <= 0) {
        sqlite3_stmt *st;
        if (sqlite3_prepare_v2(db, "SELECT max(run_id) FROM DETR_RUNS", -1, &st, NULL) != SQLITE_OK) {
            fail(&c, "reading DETR_RUNS");
            return NULL;
        }
        if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL)
            newest = sqlite3_column_int64(st, 0);
        sqlite3_finalize(st);
        if (newest < 0) {
            snprintf(err, errlen, "profile database holds no run yet (DETR_RUNS is empty)");
            return NULL;
        }
        run_ids = &newest;
        n_runs = 1;
    }
    /* all reads in one transaction: one consistent snapshot while a run writes (WAL); the
     * caller's own transaction, if any, is left alone */
    int own_txn = sqlite3_get_autocommit(db) && sqlite3_exec(db, "BEGIN", NULL, NULL, NULL) == SQLITE_OK;
    json_t *doc = json_object(), *runs = json_array();
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    const char *file = sqlite3_db_filename(db, "main");
    json_object_set_new(doc, "format", json_string("detr-prof-report"));
    json_object_set_new(doc, "version", json_integer(REPORT_FORMAT_VERSION));
    json_object_set_new(doc, "generated_ns", json_integer((json_int_t)now.tv_sec * 1000000000 + now.tv_nsec));
    json_object_set_new(doc, "database", file && *file ? jstr(file) : json_null());
    json_object_set_new(doc, "max_points", json_integer(max_points));
    json_object_set_new(doc, "runs", runs);
    for (int i = 0; i < n_runs && !c.failed; i++) {
        c.run_id = run_ids[i];
        sqlite3_stmt *st = prepare(&c, "SELECT 1 FROM DETR_RUNS WHERE run_id = ?1");
        int exists = st && sqlite3_step(st) == SQLITE_ROW;
        sqlite3_finalize(st);
        if (c.failed) break;
        if (!exists) {
            snprintf(err, errlen, "run %lld is not in the database (see DETR_RUNS; detr-prof summary lists runs)",
                     (long long)run_ids[i]);
            c.failed = 1;
            break;
        }
        json_t *r = run_document(&c, max_points);
        if (r) json_array_append_new(runs, r);
    }
    if (!c.failed) {
        c.run_id = 0;
        json_t *sweeps = sweeps_document(&c);
        if (sweeps) json_object_set_new(doc, "sweeps", sweeps);
    }
    if (own_txn) sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
    char *out = NULL;
    if (!c.failed) {
        out = json_dumps(doc, JSON_COMPACT | JSON_REAL_PRECISION(9));
        if (!out) snprintf(err, errlen, "out of memory while writing the report's JSON");
    }
    json_decref(doc);
    return out;
}

/* ---- the page ---- */

typedef struct {
    char *s;
    size_t len, cap;
    int oom;
} Buf;

static void buf_add(Buf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 1 << 16;
        while (cap < b->len + n + 1) cap *= 2;
        char *p = realloc(b->s, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->s = p, b->cap = cap;
    }
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = 0;
}

/* Appends text for inlining inside <script>: "</" becomes "<\/" (a valid escape in JS strings,
 * regular expressions and JSON) and "<!--" becomes "<\!--", so nothing can close the element or
 * switch the HTML parser's script state. */
static void buf_add_script(Buf *b, const char *s) {
    const char *run = s;
    for (const char *p = s; *p; p++) {
        if (p[0] == '<' && (p[1] == '/' || (p[1] == '!' && p[2] == '-' && p[3] == '-'))) {
            buf_add(b, run, (size_t)(p + 1 - run));
            buf_add(b, "\\", 1);
            run = p + 1;
        }
    }
    buf_add(b, run, strlen(run));
}

/* In JSON, "<" only occurs inside strings, where \u003c is the same character. */
static void buf_add_json(Buf *b, const char *s) {
    const char *run = s;
    for (const char *p = s; *p; p++)
        if (*p == '<') {
            buf_add(b, run, (size_t)(p - run));
            buf_add(b, "\\u003c", 6);
            run = p + 1;
        }
    buf_add(b, run, strlen(run));
}

char *report_html(const char *data_json, const char *extra_js, char *err, size_t errlen) {
    const char *names[] = {"reports/report.html", "reports/report.css", "vendor/echarts.min.js", "reports/report.js"};
    const Asset *a[4];
    for (int i = 0; i < 4; i++)
        if (!(a[i] = asset_find(names[i]))) {
            snprintf(err, errlen, "asset %s is missing from this build (rebuild detr-prof: make)", names[i]);
            return NULL;
        }
    /* the template's markers, each replaced once, in the order they appear */
    static const char *const markers[] = {"/*@STYLE@*/", "/*@DATA@*/", "/*@ECHARTS@*/", "/*@REPORT_JS@*/",
                                          "/*@EXTRA_JS@*/"};
    Buf b = {0};
    const char *tpl = (const char *)a[0]->data;
    for (int m = 0; m < 5; m++) {
        const char *at = strstr(tpl, markers[m]);
        if (!at) {
            snprintf(err, errlen, "reports/report.html lacks the marker %s", markers[m]);
            free(b.s);
            return NULL;
        }
        buf_add(&b, tpl, (size_t)(at - tpl));
        switch (m) {
        case 0: buf_add_script(&b, (const char *)a[1]->data); break; /* "</" cannot end <style> either */
        case 1: buf_add_json(&b, data_json ? data_json : "null"); break;
        case 2: buf_add_script(&b, (const char *)a[2]->data); break;
        case 3: buf_add_script(&b, (const char *)a[3]->data); break;
        case 4: if (extra_js) buf_add_script(&b, extra_js); break;
        }
        tpl = at + strlen(markers[m]);
    }
    buf_add(&b, tpl, strlen(tpl));
    if (b.oom) {
        free(b.s);
        snprintf(err, errlen, "out of memory while building the report page");
        return NULL;
    }
    return b.s;
}
