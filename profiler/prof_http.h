/* prof_http.h - a small HTTP/1.1 server for detr-prof serve: one libuv loop thread, requests
 * parsed by libhttp-parser, GET/HEAD only, strict limits (docs/prof-serve.md "Limits").
 * The application sees each valid request once, through one callback, and answers it with
 * http_respond() at once or later (after a uv_queue_work), always on the loop thread. */
#ifndef DETR_PROF_HTTP_H
#define DETR_PROF_HTTP_H
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#define HTTP_MAX_HEAD_BYTES 8192      /* request line + headers; more -> 431 */
#define HTTP_MAX_PATH_BYTES 2048      /* decoded path; more -> 414 */
#define HTTP_DEFAULT_MAX_CONNS 256    /* further clients get 503 and are closed */

/* An immutable, reference-counted response body, shared by every client that gets it (the
 * cached /api/data document is sent to 100 pollers without a copy). Loop thread only, except
 * that a worker thread may create one and hand it over. */
typedef struct HttpBlob {
    int refs;
    char *data;
    size_t len;
    int static_data; /* data is not ours to free (an embedded asset) */
    char etag[24];   /* "\"<16 hex>\"" of the content, or "" */
} HttpBlob;

/* Takes ownership of data (malloc'd). Returns NULL (and frees data) when out of memory. */
HttpBlob *http_blob_new(char *data, size_t len, int with_etag);
/* A blob that points at static data (an embedded asset): the data is never freed. */
HttpBlob *http_blob_static(const char *data, size_t len);
void http_blob_ref(HttpBlob *b);
void http_blob_unref(HttpBlob *b);
/* The entity tag of some content: a quoted 64-bit FNV-1a hash in hex (out: 24 bytes). */
void http_etag(const char *data, size_t len, char out[24]);

typedef struct HttpConn HttpConn;
typedef struct HttpServer HttpServer;

typedef struct {
    int head_only;            /* HEAD: send the headers of the GET answer, no body */
    const char *path;         /* percent-decoded, validated: starts with '/', no "." or ".." segment */
    const char *query;        /* raw query string after '?', "" if none (decode with http_query_next) */
    const char *if_none_match;/* the If-None-Match header, or NULL */
    const char *host;         /* the Host header, "" if none (HTTP/1.0) */
} HttpRequest;

/* Called once per valid request. The application must call http_respond(conn, ...) exactly
 * once, now or later on the loop thread; the connection stays allocated until then even if the
 * client goes away (the answer is then dropped). */
typedef void (*HttpHandler)(HttpServer *srv, HttpConn *conn, const HttpRequest *req, void *user);

typedef struct {
    const char *bind;         /* "127.0.0.1", "0.0.0.0", "::1", ... */
    int port;                 /* 0 = any free port */
    int max_conns;            /* 0 = HTTP_DEFAULT_MAX_CONNS */
    int request_timeout_ms;   /* a whole request must arrive within this (slow clients: 408) */
    int idle_timeout_ms;      /* a keep-alive connection with no new request is closed after this */
    HttpHandler handler;
    void *user;
} HttpServerConfig;

/* Binds and listens on loop. Returns the server, or NULL with err. */
HttpServer *http_server_start(uv_loop_t *loop, const HttpServerConfig *cfg, char *err, size_t errlen);
/* The port actually bound (useful with port 0). */
int http_server_port(const HttpServer *srv);
/* Stops listening, closes every connection (answers still pending are dropped when they come)
 * and frees the server once its handles are closed; the loop then ends by itself. */
void http_server_stop(HttpServer *srv);

/* Answers the request of conn. body may be NULL (no body); it is referenced, not taken.
 * content_type may be NULL when there is no body. extra_headers: NULL or complete "Name: value\r\n"
 * lines. If the request had If-None-Match equal to body->etag, a 304 without body is sent. */
void http_respond(HttpConn *conn, int status, const char *content_type, HttpBlob *body,
                  const char *extra_headers);
/* A short text/plain (or JSON) answer built from a string. */
void http_respond_text(HttpConn *conn, int status, const char *content_type, const char *text);

/* The reason phrase of a status code ("Not Found"). */
const char *http_status_text(int status);

/* ---- request targets (prof_http_target.c) ---- */

/* Splits and validates a request target (origin form "/path?query" only). Decodes the path's
 * percent escapes into path (size pathcap) and points *query at the raw query inside target
 * (NUL-terminating the path part of target is not needed: target is not modified).
 * Returns 0, or the status to answer: 400 for a malformed or dangerous path (not starting with
 * '/', bad escapes, encoded '/' or '\\', NUL or control bytes, backslashes, "." or ".."
 * segments, plain or encoded), 414 when the decoded path does not fit. */
int http_target_parse(const char *target, size_t target_len, char *path, size_t pathcap,
                      const char **query, size_t *query_len);

/* Iterates "k=v&k2=v2": copies the next key and value, percent-decoded ('+' is a space), into
 * key/val (truncated to their sizes, NUL-terminated) and advances *q. Returns 1 when a pair was
 * read, 0 at the end, -1 for a bad escape or a key/value that does not fit. */
int http_query_next(const char **q, const char *end, char *key, size_t keycap, char *val, size_t valcap);

#endif
