/* prof_serve.c - detr-prof serve: a live dashboard of a profile database over HTTP while a
 * training run writes it (docs/prof-serve.md). Routes: GET / (the report page with
 * dashboards/live.js), /api/data, /api/runs, /healthz, /assets/<embedded asset>. The HTTP layer
 * is prof_http.c; database answers are computed on worker threads and cached
 * (prof_serve_cache.c, prof_serve_query.c). */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "assets.h"
#include "detr_prof.h"
#include "prof_db.h"
#include "prof_serve_internal.h"

typedef struct {
    const char *db_path;
    const char *bind;
    int port;
    ServeQuery defaults; /* --run IDs and --max-points: what a request without parameters gets */
    int request_timeout_ms;
    int max_conns;
} ServeOptions;

typedef struct {
    ServeOptions opt;
    ServeCache *cache;
    HttpServer *server;
    uv_signal_t sigint, sigterm;
    int loopback; /* bound to a loopback address: only loopback Host names are answered */
} Serve;

static void usage(FILE *f) {
    fprintf(f,
        "usage: detr-prof serve RUN.db [--port 8080] [--bind 127.0.0.1] [--run ID ...] [options]\n"
        "Serves a live dashboard of a profile database (detr-train --profile --db RUN.db): the HTML\n"
        "report, refreshed every 1.5 s from /api/data while a run writes the file. Read-only.\n\n"
        "  --port N             TCP port (default 8080; 0 = any free port, printed on start)\n"
        "  --bind ADDR          address to listen on (default 127.0.0.1: this machine only;\n"
        "                       0.0.0.0 exposes the data to the network, see docs/prof-serve.md)\n"
        "  --run ID             run(s) shown by default (repeatable; default: the newest run)\n"
        "  --max-points N       points per series by default (default %d, at most %d)\n"
        "  --request-timeout S  seconds a client has to send a whole request (default 10)\n"
        "  --max-conns N        concurrent connections (default %d; more get 503)\n\n"
        "Endpoints: GET / , /api/data?run=ID&run=ID&max_points=N , /api/runs , /healthz ,\n"
        "/assets/NAME. Stops on SIGINT/SIGTERM (exit 0). Exit codes: 0 ok, 1 failure, 2 bad usage.\n",
        SERVE_DEFAULT_MAX_POINTS, SERVE_MAX_MAX_POINTS, HTTP_DEFAULT_MAX_CONNS);
}

/* Parses a decimal integer in [lo, hi]; returns 0 or -1. */
static int parse_int(const char *s, long long lo, long long hi, long long *out) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

static int parse_options(int argc, char **argv, ServeOptions *o) {
    *o = (ServeOptions){.bind = "127.0.0.1", .port = 8080, .request_timeout_ms = 10000,
                        .max_conns = HTTP_DEFAULT_MAX_CONNS};
    o->defaults.max_points = SERVE_DEFAULT_MAX_POINTS;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        long long v;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 1;
        }
        if (a[0] != '-') {
            if (o->db_path) {
                fprintf(stderr, "detr-prof serve: one database at a time ('%s' and '%s')\n", o->db_path, a);
                return 2;
            }
            o->db_path = a;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "detr-prof serve: %s needs a value (see --help)\n", a);
            return 2;
        }
        const char *val = argv[++i];
        if (strcmp(a, "--port") == 0) {
            if (parse_int(val, 0, 65535, &v) != 0) {
                fprintf(stderr, "detr-prof serve: --port %s: expected 0..65535 (0 = any free port)\n", val);
                return 2;
            }
            o->port = (int)v;
        } else if (strcmp(a, "--bind") == 0) {
            o->bind = strcmp(val, "localhost") == 0 ? "127.0.0.1" : val;
        } else if (strcmp(a, "--run") == 0) {
            if (parse_int(val, 1, INT64_MAX, &v) != 0) {
                fprintf(stderr, "detr-prof serve: --run %s: expected a run id (a positive integer)\n", val);
                return 2;
            }
            if (o->defaults.n_runs == SERVE_MAX_RUNS) {
                fprintf(stderr, "detr-prof serve: at most %d --run options\n", SERVE_MAX_RUNS);
                return 2;
            }
            o->defaults.runs[o->defaults.n_runs++] = v;
        } else if (strcmp(a, "--max-points") == 0) {
            if (parse_int(val, 2, SERVE_MAX_MAX_POINTS, &v) != 0) {
                fprintf(stderr, "detr-prof serve: --max-points %s: expected 2..%d\n", val, SERVE_MAX_MAX_POINTS);
                return 2;
            }
            o->defaults.max_points = (int)v;
        } else if (strcmp(a, "--request-timeout") == 0) {
            char *end;
            double s = strtod(val, &end);
            if (end == val || *end || !(s >= 0.1 && s <= 3600)) {
                fprintf(stderr, "detr-prof serve: --request-timeout %s: expected seconds in 0.1..3600\n", val);
                return 2;
            }
            o->request_timeout_ms = (int)(s * 1000);
        } else if (strcmp(a, "--max-conns") == 0) {
            if (parse_int(val, 1, 100000, &v) != 0) {
                fprintf(stderr, "detr-prof serve: --max-conns %s: expected 1..100000\n", val);
                return 2;
            }
            o->max_conns = (int)v;
        } else {
            fprintf(stderr, "detr-prof serve: unknown option %s (see --help)\n", a);
            return 2;
        }
    }
    if (!o->db_path) {
        fprintf(stderr, "detr-prof serve: which database? usage: detr-prof serve RUN.db [--port N] (see --help)\n");
        return 2;
    }
    return 0;
}

/* run=ID (repeatable) and max_points=N; other parameters (cache busters) are ignored.
 * Returns 0, or writes a message and returns -1. */
static int parse_query(const char *query, const ServeQuery *defaults, ServeQuery *q, char *msg, size_t msglen) {
    *q = *defaults;
    int saw_run = 0;
    const char *p = query, *end = query + strlen(query);
    char key[64], val[64];
    int rc;
    while ((rc = http_query_next(&p, end, key, sizeof(key), val, sizeof(val))) == 1) {
        long long v;
        if (strcmp(key, "run") == 0) {
            if (!saw_run) q->n_runs = 0; /* the request's runs replace the defaults */
            saw_run = 1;
            if (parse_int(val, 1, INT64_MAX, &v) != 0) {
                snprintf(msg, msglen, "run=%s: expected a run id (a positive integer)", val);
                return -1;
            }
            if (q->n_runs == SERVE_MAX_RUNS) {
                snprintf(msg, msglen, "at most %d run parameters", SERVE_MAX_RUNS);
                return -1;
            }
            q->runs[q->n_runs++] = v;
        } else if (strcmp(key, "max_points") == 0) {
            if (parse_int(val, 2, SERVE_MAX_MAX_POINTS, &v) != 0) {
                snprintf(msg, msglen, "max_points=%s: expected 2..%d", val, SERVE_MAX_MAX_POINTS);
                return -1;
            }
            q->max_points = (int)v;
        }
    }
    if (rc < 0) {
        snprintf(msg, msglen, "malformed query string (bad %%-escape or a parameter over 63 bytes)");
        return -1;
    }
    return 0;
}

static int is_loopback_bind(const char *bind) {
    return strncmp(bind, "127.", 4) == 0 || strcmp(bind, "::1") == 0;
}

/* A loopback server answers only Host names that mean this machine: a web page elsewhere that
 * points its own domain at 127.0.0.1 (DNS rebinding) must not read the data. */
static int host_allowed(const Serve *s, const char *host) {
    if (!s->loopback || !*host) return 1;
    size_t n;
    if (host[0] == '[') {
        const char *close = strchr(host, ']');
        if (!close) return 0;
        n = (size_t)(close + 1 - host);
    } else {
        const char *colon = strchr(host, ':');
        n = colon ? (size_t)(colon - host) : strlen(host);
    }
    static const char *const names[] = {"localhost", "127.0.0.1", "[::1]"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (strlen(names[i]) == n && strncasecmp(host, names[i], n) == 0) return 1;
    return 0;
}

static const char *asset_type(const char *name) {
    const char *dot = strrchr(name, '.');
    if (!dot) return "application/octet-stream";
    if (strcmp(dot, ".js") == 0) return "text/javascript; charset=utf-8";
    if (strcmp(dot, ".css") == 0) return "text/css; charset=utf-8";
    if (strcmp(dot, ".html") == 0) return "text/html; charset=utf-8";
    if (strcmp(dot, ".json") == 0) return "application/json";
    return "application/octet-stream";
}

static void serve_asset(HttpConn *conn, const char *name) {
    const Asset *a = asset_find(name);
    if (!a) {
        http_respond_text(conn, 404, NULL, "404 Not Found: no such asset\n");
        return;
    }
    HttpBlob *b = http_blob_static((const char *)a->data, a->size);
    if (!b) {
        http_respond_text(conn, 500, NULL, "500 Internal Server Error: out of memory\n");
        return;
    }
    http_respond(conn, 200, asset_type(name), b, NULL);
    http_blob_unref(b);
}

static void handle_request(HttpServer *srv, HttpConn *conn, const HttpRequest *req, void *user) {
    (void)srv;
    Serve *s = user;
    if (!host_allowed(s, req->host)) {
        http_respond_text(conn, 403, NULL, "403 Forbidden: this server answers Host localhost / 127.0.0.1 only "
                                           "(it is bound to a loopback address)\n");
        return;
    }
    const char *path = req->path;
    if (strcmp(path, "/healthz") == 0) {
        http_respond_text(conn, 200, NULL, "ok\n");
    } else if (strcmp(path, "/api/runs") == 0) {
        serve_cache_get(s->cache, SERVE_RUNS, &s->opt.defaults, conn);
    } else if (strcmp(path, "/api/data") == 0 || strcmp(path, "/") == 0 || strcmp(path, "/index.html") == 0) {
        ServeQuery q;
        char msg[160];
        if (parse_query(req->query, &s->opt.defaults, &q, msg, sizeof(msg)) != 0) {
            char body[256];
            snprintf(body, sizeof(body), "{\"error\":\"%s\",\"status\":400}", msg); /* msg: no quotes */
            for (char *c = body + 10; *c && c < body + 10 + strlen(msg); c++)
                if (*c == '"' || *c == '\\' || (unsigned char)*c < 0x20) *c = '?';
            http_respond_text(conn, 400, "application/json", body);
            return;
        }
        serve_cache_get(s->cache, path[1] == 'a' ? SERVE_DATA : SERVE_PAGE, &q, conn);
    } else if (strncmp(path, "/assets/", 8) == 0) {
        serve_asset(conn, path + 8);
    } else {
        http_respond_text(conn, 404, NULL, "404 Not Found: the endpoints are /, /api/data, /api/runs, /healthz\n");
    }
}

static void on_signal(uv_signal_t *h, int signum) {
    Serve *s = h->data;
    fprintf(stderr, "detr-prof serve: %s, stopping\n", signum == SIGINT ? "SIGINT" : "SIGTERM");
    http_server_stop(s->server);
    uv_close((uv_handle_t *)&s->sigint, NULL);
    uv_close((uv_handle_t *)&s->sigterm, NULL);
    /* the loop ends once every connection is closed and running queries have finished */
}

/* Checks the database and the --run ids before listening. Returns 0 or 2. */
static int check_database(const ServeOptions *o) {
    char err[512];
    sqlite3 *db = profdb_open_ro(o->db_path, err, sizeof(err));
    if (!db) {
        fprintf(stderr, "detr-prof serve: %s\n", err);
        return 2;
    }
    int rc = 0;
    for (int i = 0; i < o->defaults.n_runs; i++)
        if (!profdb_run_exists(db, o->defaults.runs[i])) {
            fprintf(stderr, "detr-prof serve: --run %lld: no such run in %s (detr-prof summary lists them)\n",
                    (long long)o->defaults.runs[i], o->db_path);
            rc = 2;
        }
    sqlite3_close(db);
    return rc;
}

int prof_cmd_serve(int argc, char **argv) {
    Serve s = {0};
    int rc = parse_options(argc, argv, &s.opt);
    if (rc) return rc == 1 ? 0 : rc;
    if ((rc = check_database(&s.opt)) != 0) return rc;
    signal(SIGPIPE, SIG_IGN); /* a client that disconnects mid-answer is a write error, not a signal */
    uv_loop_t loop;
    if (uv_loop_init(&loop) != 0) {
        fprintf(stderr, "detr-prof serve: cannot start the event loop\n");
        return 1;
    }
    s.loopback = is_loopback_bind(s.opt.bind);
    s.cache = serve_cache_new(&loop, s.opt.db_path, SERVE_CACHE_TTL_MS);
    HttpServerConfig cfg = {.bind = s.opt.bind, .port = s.opt.port, .max_conns = s.opt.max_conns,
                            .request_timeout_ms = s.opt.request_timeout_ms, .idle_timeout_ms = 15000,
                            .handler = handle_request, .user = &s};
    char err[512];
    s.server = s.cache ? http_server_start(&loop, &cfg, err, sizeof(err)) : NULL;
    if (!s.server) {
        fprintf(stderr, "detr-prof serve: %s\n", s.cache ? err : "out of memory");
        serve_cache_free(s.cache);
        uv_loop_close(&loop);
        return 1;
    }
    uv_signal_init(&loop, &s.sigint);
    uv_signal_init(&loop, &s.sigterm);
    s.sigint.data = s.sigterm.data = &s;
    uv_signal_start(&s.sigint, on_signal, SIGINT);
    uv_signal_start(&s.sigterm, on_signal, SIGTERM);
    int v6 = strchr(s.opt.bind, ':') != NULL;
    printf("serving %s at http://%s%s%s:%d/\n", s.opt.db_path, v6 ? "[" : "", s.opt.bind, v6 ? "]" : "",
           http_server_port(s.server));
    fflush(stdout);
    uv_run(&loop, UV_RUN_DEFAULT);
    serve_cache_free(s.cache);
    if (uv_loop_close(&loop) != 0) fprintf(stderr, "detr-prof serve: warning: handles left open at exit\n");
    fprintf(stderr, "detr-prof serve: stopped\n");
    return 0;
}
