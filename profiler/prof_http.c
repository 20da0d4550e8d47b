/* prof_http.c - the HTTP/1.1 server of detr-prof serve (see prof_http.h): libuv TCP on one loop
 * thread, libhttp-parser for the protocol, keep-alive and pipelining, and the limits that keep a
 * bad client from hurting the others: head size (431), bodies (413), malformed input (400),
 * slow clients (408 after the request timeout), a connection cap (503). Every error answer
 * closes its connection, after a short "lingering" read so the client sees the answer. */
#include "prof_http.h"
#include <http_parser.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define READ_BUF_BYTES 65536
#define WRITE_TIMEOUT_MS 30000  /* a client that does not read its answer is dropped */
#define LINGER_MS 2000          /* after an error answer: drain input before closing */
#define HOST_CAP 256
#define ETAG_CAP 128

struct HttpServer {
    uv_loop_t *loop;
    uv_tcp_t listener;
    HttpServerConfig cfg;
    int port;
    int n_conns;   /* counted connections (the cap applies to these) */
    int n_alive;   /* every connection not freed yet, counted or refused */
    int stopping, listener_closed;
    HttpConn *conns;
    char readbuf[READ_BUF_BYTES]; /* one loop thread: each read is consumed before the next */
};

struct HttpConn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    HttpServer *srv;
    HttpConn *prev, *next;
    http_parser parser;
    int handles_open;  /* tcp + timer until their close callbacks ran */
    int counted;       /* counts towards max_conns (refused connections do not) */
    int closing;       /* uv_close started (or the peer went away) */
    int awaiting;      /* a request is with the application, not answered yet */
    int in_request;    /* bytes of a request arrived: the request deadline runs */
    int lingering;     /* error answer sent: reading and discarding until EOF or the timer */
    int writing;       /* writes in flight */
    int keep_alive, head_only;
    int err_status;    /* set by a parser callback that refuses the request */
    /* the request being parsed */
    char url[HTTP_MAX_HEAD_BYTES];
    size_t url_len;
    char field[32];
    size_t field_len;
    int field_too_long, last_was_value;
    enum { HDR_OTHER, HDR_HOST, HDR_INM } value_target;
    char host[HOST_CAP];
    size_t host_len;
    int host_count;
    char inm[ETAG_CAP];
    size_t inm_len;
    int inm_usable;
    /* input that arrived after a complete request (pipelining), parsed after its answer */
    char *pending;
    size_t pending_len;
};

typedef struct {
    uv_write_t req;
    HttpConn *conn;
    HttpBlob *body;
    int keep;
    char head[]; /* the status line and headers */
} WriteCtx;

/* ---------------- blobs ---------------- */

void http_etag(const char *data, size_t len, char out[24]) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a 64 */
    for (size_t i = 0; i < len; i++) h = (h ^ (unsigned char)data[i]) * 1099511628211ull;
    snprintf(out, 24, "\"%016llx\"", (unsigned long long)h);
}

HttpBlob *http_blob_new(char *data, size_t len, int with_etag) {
    HttpBlob *b = calloc(1, sizeof(*b));
    if (!b) {
        free(data);
        return NULL;
    }
    b->refs = 1;
    b->data = data;
    b->len = len;
    if (with_etag) http_etag(data, len, b->etag);
    return b;
}

HttpBlob *http_blob_static(const char *data, size_t len) {
    HttpBlob *b = calloc(1, sizeof(*b));
    if (!b) return NULL;
    b->refs = 1;
    b->static_data = 1;
    b->data = (char *)data;
    b->len = len;
    http_etag(data, len, b->etag);
    return b;
}

void http_blob_ref(HttpBlob *b) {
    if (b) b->refs++;
}

void http_blob_unref(HttpBlob *b) {
    if (!b) return;
    if (--b->refs == 0) {
        if (!b->static_data) free(b->data);
        free(b);
    }
}

/* ---------------- status codes ---------------- */

const char *http_status_text(int status) {
    switch (status) {
    case 200: return "OK";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    default: return "Unknown";
    }
}

/* ---------------- connection lifetime ---------------- */

static void server_maybe_free(HttpServer *srv) {
    if (srv->stopping && srv->listener_closed && srv->n_alive == 0) free(srv);
}

static void conn_maybe_free(HttpConn *c) {
    if (c->handles_open > 0 || c->awaiting) return;
    HttpServer *srv = c->srv;
    if (c->prev) c->prev->next = c->next;
    else srv->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    if (c->counted) srv->n_conns--;
    srv->n_alive--;
    free(c->pending);
    free(c);
    server_maybe_free(srv);
}

static void on_handle_closed(uv_handle_t *h) {
    HttpConn *c = h->data;
    c->handles_open--;
    conn_maybe_free(c);
}

static void conn_close(HttpConn *c) {
    if (c->closing) return;
    c->closing = 1;
    uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
    uv_close((uv_handle_t *)&c->timer, on_handle_closed);
}

static void conn_arm_timer(HttpConn *c, int ms);

/* ---------------- writing answers ---------------- */

static void start_reading(HttpConn *c);
static void feed(HttpConn *c, const char *data, size_t len);

static void on_shutdown(uv_shutdown_t *req, int status) {
    (void)status;
    free(req);
}

/* After an error (or a Connection: close answer): half-close, drain input for a moment, close. */
static void conn_linger(HttpConn *c) {
    if (c->closing) return;
    c->lingering = 1;
    uv_shutdown_t *sd = malloc(sizeof(*sd));
    if (!sd || uv_shutdown(sd, (uv_stream_t *)&c->tcp, on_shutdown) != 0) {
        free(sd);
        conn_close(c);
        return;
    }
    conn_arm_timer(c, LINGER_MS);
    start_reading(c);
}

static void conn_next_request(HttpConn *c) {
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    c->in_request = 0;
    conn_arm_timer(c, c->srv->cfg.idle_timeout_ms);
    if (c->pending) { /* a pipelined request already arrived */
        char *data = c->pending;
        size_t len = c->pending_len;
        c->pending = NULL;
        c->pending_len = 0;
        feed(c, data, len);
        free(data);
    } else {
        start_reading(c);
    }
}

static void on_write_done(uv_write_t *req, int status) {
    WriteCtx *w = (WriteCtx *)req;
    HttpConn *c = w->conn;
    int keep = w->keep;
    http_blob_unref(w->body);
    free(w);
    c->writing--;
    if (c->closing) return;
    if (status < 0) {
        conn_close(c);
        return;
    }
    if (c->writing > 0) return;
    if (keep) conn_next_request(c);
    else conn_linger(c);
}

static void format_date(char *out, size_t cap) {
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(out, cap, "%a, %d %b %Y %H:%M:%S GMT", &tm);
}

/* Sends one answer; closes (after lingering) unless keep. */
static void send_answer(HttpConn *c, int status, const char *content_type, HttpBlob *body,
                        const char *extra_headers, int keep) {
    if (c->closing) return;
    int send_body = body && !c->head_only && status != 304;
    size_t extra_len = extra_headers ? strlen(extra_headers) : 0;
    size_t cap = 1024 + extra_len + (content_type ? strlen(content_type) : 0);
    WriteCtx *w = malloc(sizeof(*w) + cap);
    if (!w) {
        conn_close(c);
        return;
    }
    char date[64];
    format_date(date, sizeof(date));
    int n = snprintf(w->head, cap, "HTTP/1.1 %d %s\r\nDate: %s\r\nCache-Control: no-store\r\n"
                     "X-Content-Type-Options: nosniff\r\nX-Frame-Options: DENY\r\nReferrer-Policy: no-referrer\r\n", status, http_status_text(status), date);
    if (status != 304)
        n += snprintf(w->head + n, cap - n, "Content-Length: %zu\r\n", body ? body->len : 0);
    if (content_type && status != 304) n += snprintf(w->head + n, cap - n, "Content-Type: %s\r\n", content_type);
    if (body && body->etag[0]) n += snprintf(w->head + n, cap - n, "ETag: %s\r\n", body->etag);
    if (keep)
        n += snprintf(w->head + n, cap - n, "Connection: keep-alive\r\nKeep-Alive: timeout=%d\r\n",
                      c->srv->cfg.idle_timeout_ms / 1000);
    else
        n += snprintf(w->head + n, cap - n, "Connection: close\r\n");
    n += snprintf(w->head + n, cap - n, "%s\r\n", extra_headers ? extra_headers : "");
    w->conn = c;
    w->keep = keep;
    w->body = send_body ? body : NULL;
    http_blob_ref(w->body);
    uv_buf_t bufs[2] = {uv_buf_init(w->head, (unsigned)n),
                        uv_buf_init(send_body ? body->data : NULL, send_body ? (unsigned)body->len : 0)};
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->writing++;
    conn_arm_timer(c, WRITE_TIMEOUT_MS);
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, bufs, send_body ? 2 : 1, on_write_done) != 0) {
        c->writing--;
        http_blob_unref(w->body);
        free(w);
        conn_close(c);
    }
}

/* An error found by the server itself (not the application): text body, then close. */
static void send_error(HttpConn *c, int status, const char *detail) {
    char text[256];
    snprintf(text, sizeof(text), "%d %s%s%s\n", status, http_status_text(status), detail ? ": " : "",
             detail ? detail : "");
    HttpBlob *b = http_blob_new(strdup(text), strlen(text), 0);
    if (!b) {
        conn_close(c);
        return;
    }
    c->head_only = 0; /* error answers always carry their text */
    send_answer(c, status, "text/plain; charset=utf-8", b,
                status == 405 ? "Allow: GET, HEAD\r\n" : NULL, 0);
    http_blob_unref(b);
}

void http_respond(HttpConn *c, int status, const char *content_type, HttpBlob *body,
                  const char *extra_headers) {
    if (!c->awaiting) return; /* answered twice: a bug in the caller; the first answer stands */
    c->awaiting = 0;
    if (c->closing) { /* the client went away while the answer was computed */
        conn_maybe_free(c);
        return;
    }
    if (status == 200 && body && body->etag[0] && c->inm_usable && strcmp(c->inm, body->etag) == 0)
        status = 304;
    int keep = c->keep_alive && status < 400 && !c->srv->stopping;
    send_answer(c, status, content_type, body, extra_headers, keep);
}

void http_respond_text(HttpConn *c, int status, const char *content_type, const char *text) {
    HttpBlob *b = http_blob_new(strdup(text), strlen(text), 0);
    if (!b) {
        c->awaiting = 0;
        conn_close(c);
        conn_maybe_free(c);
        return;
    }
    http_respond(c, status, content_type ? content_type : "text/plain; charset=utf-8", b, NULL);
    http_blob_unref(b);
}

/* ---------------- timers ---------------- */

static void on_timer(uv_timer_t *t) {
    HttpConn *c = t->data;
    if (c->closing) return;
    if (c->lingering || c->writing) conn_close(c);
    else if (c->in_request) send_error(c, 408, "the whole request must arrive within the request timeout");
    else conn_close(c); /* idle keep-alive connection */
}

static void conn_arm_timer(HttpConn *c, int ms) {
    if (!c->closing) uv_timer_start(&c->timer, on_timer, (uint64_t)(ms > 0 ? ms : 1), 0);
}

/* ---------------- parsing ---------------- */

static void commit_header(HttpConn *c) {
    if (c->value_target == HDR_HOST) c->host_count++;
    c->value_target = HDR_OTHER;
}

static int on_message_begin(http_parser *p) {
    HttpConn *c = p->data;
    c->url_len = 0;
    c->field_len = 0;
    c->field_too_long = c->last_was_value = 0;
    c->value_target = HDR_OTHER;
    c->host_len = c->inm_len = 0;
    c->host_count = c->inm_usable = 0;
    c->err_status = 0;
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t len) {
    HttpConn *c = p->data;
    if (c->url_len + len >= sizeof(c->url)) {
        c->err_status = 431;
        return -1;
    }
    memcpy(c->url + c->url_len, at, len);
    c->url_len += len;
    return 0;
}

static int on_header_field(http_parser *p, const char *at, size_t len) {
    HttpConn *c = p->data;
    if (c->last_was_value) {
        commit_header(c);
        c->field_len = 0;
        c->field_too_long = 0;
        c->last_was_value = 0;
    }
    if (c->field_len + len >= sizeof(c->field)) c->field_too_long = 1;
    else {
        memcpy(c->field + c->field_len, at, len);
        c->field_len += len;
    }
    return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t len) {
    HttpConn *c = p->data;
    if (!c->last_was_value) { /* the first piece of this header's value */
        c->last_was_value = 1;
        c->field[c->field_len] = 0;
        c->value_target = HDR_OTHER;
        if (!c->field_too_long && strcasecmp(c->field, "host") == 0) {
            c->value_target = HDR_HOST;
            c->host_len = 0;
        } else if (!c->field_too_long && strcasecmp(c->field, "if-none-match") == 0) {
            c->value_target = HDR_INM;
            c->inm_len = 0;
            c->inm_usable = 1;
        }
    }
    if (c->value_target == HDR_HOST) {
        if (c->host_len + len >= sizeof(c->host)) {
            c->err_status = 400;
            return -1;
        }
        memcpy(c->host + c->host_len, at, len);
        c->host_len += len;
        c->host[c->host_len] = 0;
    } else if (c->value_target == HDR_INM) {
        if (c->inm_len + len >= sizeof(c->inm)) c->inm_usable = 0; /* longer than any of our tags */
        else {
            memcpy(c->inm + c->inm_len, at, len);
            c->inm_len += len;
            c->inm[c->inm_len] = 0;
        }
    }
    return 0;
}

static int on_headers_complete(http_parser *p) {
    HttpConn *c = p->data;
    if (c->last_was_value) commit_header(c);
    if (p->method != HTTP_GET && p->method != HTTP_HEAD) c->err_status = 405;
    else if ((p->flags & F_CHUNKED) || (p->content_length > 0 && p->content_length != ULLONG_MAX))
        c->err_status = 413; /* GET and HEAD take no body */
    else if (c->host_count > 1 || (p->http_major == 1 && p->http_minor >= 1 && c->host_count == 0))
        c->err_status = 400; /* RFC 9112: exactly one Host header in HTTP/1.1 */
    return c->err_status ? -1 : 0;
}

static int on_message_complete(http_parser *p) {
    http_parser_pause(p, 1); /* one request at a time: the rest waits in c->pending */
    return 0;
}

static const http_parser_settings PARSER_SETTINGS = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_message_complete = on_message_complete,
};

static void dispatch(HttpConn *c) {
    HttpServer *srv = c->srv;
    uv_timer_stop(&c->timer); /* the server's own time does not count against the client */
    c->in_request = 0;
    c->keep_alive = http_should_keep_alive(&c->parser);
    c->head_only = c->parser.method == HTTP_HEAD;
    char path[HTTP_MAX_PATH_BYTES];
    const char *query;
    size_t query_len;
    int st = http_target_parse(c->url, c->url_len, path, sizeof(path), &query, &query_len);
    if (st != 0) {
        send_error(c, st, st == 414 ? "path too long" : "malformed or unsafe request path");
        return;
    }
    c->url[c->url_len] = 0; /* the query is the tail of url: now NUL-terminated */
    HttpRequest req = {c->head_only, path, query, c->inm_usable ? c->inm : NULL, c->host_count ? c->host : ""};
    c->awaiting = 1;
    srv->cfg.handler(srv, c, &req, srv->cfg.user);
}

static void feed(HttpConn *c, const char *data, size_t len) {
    if (len == 0) {
        start_reading(c);
        return;
    }
    if (!c->in_request) { /* the first byte of a request starts its deadline */
        c->in_request = 1;
        conn_arm_timer(c, c->srv->cfg.request_timeout_ms);
    }
    size_t n = http_parser_execute(&c->parser, &PARSER_SETTINGS, data, len);
    enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
    if (e == HPE_PAUSED) {
        if (n < len) {
            c->pending = malloc(len - n);
            if (!c->pending) {
                conn_close(c);
                return;
            }
            memcpy(c->pending, data + n, len - n);
            c->pending_len = len - n;
        }
        uv_read_stop((uv_stream_t *)&c->tcp);
        dispatch(c);
    } else if (e != HPE_OK) {
        int status = c->err_status ? c->err_status : e == HPE_HEADER_OVERFLOW ? 431 : 400;
        send_error(c, status, c->err_status ? NULL : http_errno_description(e));
    } else {
        start_reading(c);
    }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    (void)suggested;
    HttpConn *c = h->data;
    *buf = uv_buf_init(c->srv->readbuf, sizeof(c->srv->readbuf));
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
    HttpConn *c = s->data;
    if (c->closing) return;
    if (nread < 0) { /* EOF or error */
        conn_close(c);
        return;
    }
    if (nread == 0 || c->lingering) return; /* lingering: input is read and dropped */
    feed(c, buf->base, (size_t)nread);
}

static void start_reading(HttpConn *c) {
    if (c->closing) return;
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

/* ---------------- accepting ---------------- */

static void on_connection(uv_stream_t *listener, int status) {
    HttpServer *srv = listener->data;
    if (status < 0 || srv->stopping) return;
    HttpConn *c = calloc(1, sizeof(*c));
    if (!c) return;
    c->srv = srv;
    uv_tcp_init(srv->loop, &c->tcp);
    uv_timer_init(srv->loop, &c->timer);
    c->tcp.data = c->timer.data = c;
    c->handles_open = 2;
    c->next = srv->conns;
    if (srv->conns) srv->conns->prev = c;
    srv->conns = c;
    srv->n_alive++;
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    if (uv_accept(listener, (uv_stream_t *)&c->tcp) != 0) {
        conn_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    if (srv->n_conns >= srv->cfg.max_conns) {
        send_error(c, 503, "too many connections; try again");
        return;
    }
    c->counted = 1;
    srv->n_conns++;
    conn_arm_timer(c, srv->cfg.request_timeout_ms); /* connecting and saying nothing counts too */
    c->in_request = 1;
    start_reading(c);
}

HttpServer *http_server_start(uv_loop_t *loop, const HttpServerConfig *cfg, char *err, size_t errlen) {
    HttpServer *srv = calloc(1, sizeof(*srv));
    if (!srv) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    srv->loop = loop;
    srv->cfg = *cfg;
    if (srv->cfg.max_conns <= 0) srv->cfg.max_conns = HTTP_DEFAULT_MAX_CONNS;
    if (srv->cfg.request_timeout_ms <= 0) srv->cfg.request_timeout_ms = 10000;
    if (srv->cfg.idle_timeout_ms <= 0) srv->cfg.idle_timeout_ms = 15000;
    http_parser_set_max_header_size(HTTP_MAX_HEAD_BYTES); /* request line + headers; over -> 431 */
    struct sockaddr_storage addr;
    int rc = strchr(cfg->bind, ':') ? uv_ip6_addr(cfg->bind, cfg->port, (struct sockaddr_in6 *)&addr)
                                    : uv_ip4_addr(cfg->bind, cfg->port, (struct sockaddr_in *)&addr);
    if (rc != 0) {
        snprintf(err, errlen, "--bind %s: not an IPv4 or IPv6 address (e.g. 127.0.0.1, 0.0.0.0, ::1)", cfg->bind);
        free(srv);
        return NULL;
    }
    uv_tcp_init(loop, &srv->listener);
    srv->listener.data = srv;
    rc = uv_tcp_bind(&srv->listener, (const struct sockaddr *)&addr, 0);
    if (rc == 0) rc = uv_listen((uv_stream_t *)&srv->listener, 511, on_connection);
    if (rc != 0) {
        snprintf(err, errlen, "cannot listen on %s port %d: %s%s", cfg->bind, cfg->port, uv_strerror(rc),
                 rc == UV_EADDRINUSE ? " (choose another --port, or --port 0 for any free one)" : "");
        srv->stopping = 1;
        uv_close((uv_handle_t *)&srv->listener, NULL);
        uv_run(loop, UV_RUN_NOWAIT); /* runs the close; the server is then freed here */
        free(srv);
        return NULL;
    }
    struct sockaddr_storage bound;
    int len = sizeof(bound);
    uv_tcp_getsockname(&srv->listener, (struct sockaddr *)&bound, &len);
    srv->port = bound.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&bound)->sin6_port)
                                            : ntohs(((struct sockaddr_in *)&bound)->sin_port);
    return srv;
}

int http_server_port(const HttpServer *srv) { return srv->port; }

static void on_listener_closed(uv_handle_t *h) {
    HttpServer *srv = h->data;
    srv->listener_closed = 1;
    server_maybe_free(srv);
}

void http_server_stop(HttpServer *srv) {
    if (srv->stopping) return;
    srv->stopping = 1;
    for (HttpConn *c = srv->conns; c; c = c->next) conn_close(c);
    uv_close((uv_handle_t *)&srv->listener, on_listener_closed);
}
