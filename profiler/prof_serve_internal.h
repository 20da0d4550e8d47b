/* prof_serve_internal.h - what the files of detr-prof serve share: the answers that need the
 * database (computed on libuv worker threads, prof_serve_query.c) and their short-lived cache
 * (prof_serve_cache.c, loop thread). */
#ifndef DETR_PROF_SERVE_INTERNAL_H
#define DETR_PROF_SERVE_INTERNAL_H
#include <stdint.h>
#include <uv.h>
#include "prof_http.h"

#define SERVE_MAX_RUNS 16          /* run=ID parameters per request */
#define SERVE_DEFAULT_MAX_POINTS 1000 /* as detr-prof report */
#define SERVE_MAX_MAX_POINTS 100000
#define SERVE_CACHE_TTL_MS 500     /* one database query per query string and half second */

typedef enum { SERVE_RUNS, SERVE_DATA, SERVE_PAGE } ServeKind;

typedef struct {
    int64_t runs[SERVE_MAX_RUNS]; /* n_runs 0 = the newest run */
    int n_runs;
    int max_points;
} ServeQuery;

/* An answer: status, content type (a string constant) and body (may be NULL). */
typedef struct {
    int status;
    const char *content_type;
    HttpBlob *body;
} ServeResult;

/* Computes an answer from the database at db_path (opened read-only for this call). Safe on a
 * worker thread: touches nothing but its arguments and a connection of its own. */
void serve_compute(const char *db_path, ServeKind kind, const ServeQuery *q, ServeResult *out);

typedef struct ServeCache ServeCache;
ServeCache *serve_cache_new(uv_loop_t *loop, const char *db_path, int ttl_ms);
/* Answers conn with the cached answer for (kind, q) if it is fresh, else with the next one
 * computed (one computation per key at a time, however many clients ask). */
void serve_cache_get(ServeCache *cache, ServeKind kind, const ServeQuery *q, HttpConn *conn);
/* Call after the loop has finished (no computation in flight). */
void serve_cache_free(ServeCache *cache);

#endif
