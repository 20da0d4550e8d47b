/* prof_serve_query.c - the answers of detr-prof serve that read the database: /api/runs,
 * /api/data and the page. Runs on libuv worker threads, so every call opens its own read-only
 * connection (WAL: a training run keeps writing meanwhile) and closes it. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "assets.h"
#include "prof_db.h"
#include "prof_report_data.h"
#include "prof_serve_internal.h"

static const char JSON_TYPE[] = "application/json";
static const char HTML_TYPE[] = "text/html; charset=utf-8";

/* {"error": msg} with status (the page gets the same, so a browser shows it as text). */
static void set_error(ServeResult *out, int status, const char *msg) {
    json_t *o = json_pack("{s:s, s:i}", "error", msg, "status", status);
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    out->status = status;
    out->content_type = JSON_TYPE;
    out->body = s ? http_blob_new(s, strlen(s), 0) : NULL;
}

/* {"runs":[{id, status, start_ns, start_utc, end_ns, device, level, steps, last_step}, ...]} */
static void compute_runs(sqlite3 *db, ServeResult *out) {
    static const char SQL[] =
        "SELECT r.run_id, r.status, r.start_ns, r.end_ns, r.device, r.level, "
        "(SELECT count(*) FROM DETR_STEPS s WHERE s.run_id = r.run_id), "
        "(SELECT max(step) FROM DETR_STEPS s WHERE s.run_id = r.run_id) "
        "FROM DETR_RUNS r ORDER BY r.run_id";
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, SQL, -1, &st, NULL) != SQLITE_OK) {
        char msg[512];
        snprintf(msg, sizeof(msg), "reading DETR_RUNS: %s", sqlite3_errmsg(db));
        set_error(out, 500, msg);
        return;
    }
    json_t *runs = json_array();
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        json_t *r = json_object();
        int64_t start_ns = sqlite3_column_int64(st, 2);
        time_t secs = (time_t)(start_ns / 1000000000);
        struct tm tm;
        char utc[32] = "";
        if (gmtime_r(&secs, &tm)) strftime(utc, sizeof(utc), "%Y-%m-%dT%H:%M:%SZ", &tm);
        json_object_set_new(r, "id", json_integer(sqlite3_column_int64(st, 0)));
        const char *status = (const char *)sqlite3_column_text(st, 1);
        json_object_set_new(r, "status", status ? json_string(status) : json_null());
        json_object_set_new(r, "start_ns", json_integer(start_ns));
        json_object_set_new(r, "start_utc", json_string(utc));
        json_object_set_new(r, "end_ns", sqlite3_column_type(st, 3) == SQLITE_NULL
                                             ? json_null() : json_integer(sqlite3_column_int64(st, 3)));
        const char *device = (const char *)sqlite3_column_text(st, 4);
        const char *level = (const char *)sqlite3_column_text(st, 5);
        json_object_set_new(r, "device", device ? json_string(device) : json_null());
        json_object_set_new(r, "level", level ? json_string(level) : json_null());
        json_object_set_new(r, "steps", json_integer(sqlite3_column_int64(st, 6)));
        json_object_set_new(r, "last_step", sqlite3_column_type(st, 7) == SQLITE_NULL
                                                ? json_null() : json_integer(sqlite3_column_int64(st, 7)));
        json_array_append_new(runs, r);
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) {
        char msg[512];
        snprintf(msg, sizeof(msg), "reading DETR_RUNS: %s", sqlite3_errmsg(db));
        json_decref(runs);
        set_error(out, 500, msg);
        return;
    }
    json_t *doc = json_pack("{s:o}", "runs", runs);
    char *s = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    out->status = s ? 200 : 500;
    out->content_type = JSON_TYPE;
    out->body = s ? http_blob_new(s, strlen(s), 1) : NULL;
}

/* The entity tag of a report document, leaving out its "generated_ns" (which differs on every
 * call): two answers with the same data get the same tag, so pollers get 304 and skip a redraw. */
static void document_etag(const char *json, char out[24]) {
    static const char KEY[] = "\"generated_ns\":";
    const char *at = strstr(json, KEY);
    if (!at) {
        http_etag(json, strlen(json), out);
        return;
    }
    const char *after = at + sizeof(KEY) - 1;
    while (*after == '-' || (*after >= '0' && *after <= '9')) after++;
    size_t head = (size_t)(at - json), total = strlen(json);
    char *masked = malloc(total + 1);
    if (!masked) {
        http_etag(json, total, out);
        return;
    }
    memcpy(masked, json, head);
    strcpy(masked + head, after);
    http_etag(masked, strlen(masked), out);
    free(masked);
}

/* The page: the report with the document inlined and dashboards/live.js appended, told which
 * query to poll and the tag of the data it starts from. */
static char *live_page(const char *json, const char *etag, char *err, size_t errlen) {
    const Asset *live = asset_find("dashboards/live.js");
    if (!live) {
        snprintf(err, errlen, "asset dashboards/live.js is missing from this build (rebuild detr-prof: make)");
        return NULL;
    }
    size_t cap = live->size + 128;
    char *extra = malloc(cap);
    if (!extra) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    snprintf(extra, cap, "window.detrLiveEtag = '%s';\n%s", etag, (const char *)live->data);
    char *html = report_html(json, extra, err, errlen);
    free(extra);
    return html;
}

static void compute_data(sqlite3 *db, const ServeQuery *q, int page, ServeResult *out) {
    char err[512];
    for (int i = 0; i < q->n_runs; i++)
        if (!profdb_run_exists(db, q->runs[i])) {
            snprintf(err, sizeof(err), "run %lld is not in the database (GET /api/runs lists the runs)",
                     (long long)q->runs[i]);
            set_error(out, 404, err);
            return;
        }
    if (q->n_runs == 0 && profdb_latest_run(db) < 0) {
        set_error(out, 503, "the database holds no run yet; retry once detr-train has started");
        return;
    }
    char *json = report_data_json(db, q->runs, q->n_runs, q->max_points, err, sizeof(err));
    if (!json) {
        set_error(out, 500, err);
        return;
    }
    char etag[24];
    document_etag(json, etag);
    if (!page) {
        out->status = 200;
        out->content_type = JSON_TYPE;
        out->body = http_blob_new(json, strlen(json), 0);
        if (out->body) memcpy(out->body->etag, etag, sizeof(etag));
        return;
    }
    char *html = live_page(json, etag, err, sizeof(err));
    free(json);
    if (!html) {
        set_error(out, 500, err);
        return;
    }
    out->status = 200;
    out->content_type = HTML_TYPE;
    out->body = http_blob_new(html, strlen(html), 0);
}

void serve_compute(const char *db_path, ServeKind kind, const ServeQuery *q, ServeResult *out) {
    char err[512];
    out->body = NULL;
    sqlite3 *db = profdb_open_ro(db_path, err, sizeof(err));
    if (!db) {
        set_error(out, 503, err);
        return;
    }
    if (kind == SERVE_RUNS) compute_runs(db, out);
    else compute_data(db, q, kind == SERVE_PAGE, out);
    sqlite3_close(db);
    if (!out->body) { /* only when out of memory */
        out->status = 500;
        out->content_type = "text/plain; charset=utf-8";
    }
}
