/* test_prof_serve.c - detr-prof serve as a black box: a child server on --port 0 over a real
 * profile database, spoken to with plain sockets. Checks the page, /api/data against the
 * database, /api/runs, ETag/304, HEAD, keep-alive and pipelining, 100 concurrent clients, live
 * updates while detr-train writes the same file, every refused request (traversal variants,
 * 404, 405, 413, 431, 400, 403, 503), slow clients timed out while others are served, the
 * default bind address, and a clean exit on SIGINT/SIGTERM. */
#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "check.h"
#include "test_util.h"

static char g_dir[] = "/tmp/test_prof_serve_XXXXXX";
static char g_db[512];
static const char *g_build;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---------------- a minimal HTTP client ---------------- */

typedef struct {
    int fd;
    char *buf;
    size_t len, cap;
    int eof;
} Client;

typedef struct {
    int status;
    char head[16384];
    char *body;
    size_t body_len;
} Resp;

static int client_open(Client *c, int port) {
    memset(c, 0, sizeof(*c));
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (c->fd < 0 || connect(c->fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        if (c->fd >= 0) close(c->fd);
        c->fd = -1;
        return -1;
    }
    return 0;
}

static void client_close(Client *c) {
    if (c->fd >= 0) close(c->fd);
    free(c->buf);
    memset(c, 0, sizeof(*c));
    c->fd = -1;
}

static int send_all(Client *c, const char *s, size_t n) {
    while (n > 0) {
        ssize_t k = send(c->fd, s, n, MSG_NOSIGNAL);
        if (k <= 0) return -1;
        s += k;
        n -= (size_t)k;
    }
    return 0;
}

/* Reads more bytes: >0 read, 0 EOF (or reset), -1 timeout. */
static int client_fill(Client *c, int timeout_ms) {
    struct pollfd p = {c->fd, POLLIN, 0};
    if (poll(&p, 1, timeout_ms) <= 0) return -1;
    if (c->len + 65536 > c->cap) {
        c->cap = (c->len + 65536) * 2;
        c->buf = realloc(c->buf, c->cap);
    }
    ssize_t k = recv(c->fd, c->buf + c->len, c->cap - c->len - 1, 0);
    if (k <= 0) {
        c->eof = 1;
        return 0;
    }
    c->len += (size_t)k;
    c->buf[c->len] = 0;
    return (int)k;
}

static const char *header_value(const Resp *r, const char *name, char *out, size_t cap) {
    size_t n = strlen(name);
    for (const char *p = strstr(r->head, "\r\n"); p && p[2]; p = strstr(p + 2, "\r\n")) {
        const char *line = p + 2;
        if (strncasecmp(line, name, n) == 0 && line[n] == ':') {
            const char *v = line + n + 1;
            while (*v == ' ') v++;
            const char *e = strstr(v, "\r\n");
            size_t len = e ? (size_t)(e - v) : strlen(v);
            if (len >= cap) len = cap - 1;
            memcpy(out, v, len);
            out[len] = 0;
            return out;
        }
    }
    return NULL;
}

/* Reads one response (head, then Content-Length bytes unless head_only or 304). 0 or -1. */
static int client_read_response(Client *c, int head_only, Resp *r, int timeout_ms) {
    memset(r, 0, sizeof(*r));
    double deadline = now_s() + timeout_ms / 1000.0;
    char *end;
    while (!(c->buf && (end = strstr(c->buf, "\r\n\r\n")))) {
        int left = (int)((deadline - now_s()) * 1000);
        if (left <= 0 || client_fill(c, left) <= 0) return -1;
    }
    size_t head_len = (size_t)(end + 4 - c->buf);
    size_t copy = head_len < sizeof(r->head) - 1 ? head_len : sizeof(r->head) - 1;
    memcpy(r->head, c->buf, copy);
    r->head[copy] = 0;
    if (sscanf(r->head, "HTTP/1.%*d %d", &r->status) != 1) return -1;
    char v[64];
    size_t body = 0;
    if (!head_only && r->status != 304 && header_value(r, "Content-Length", v, sizeof(v))) body = strtoul(v, NULL, 10);
    while (c->len < head_len + body) {
        int left = (int)((deadline - now_s()) * 1000);
        if (left <= 0 || client_fill(c, left) <= 0) return -1;
    }
    r->body = malloc(body + 1);
    memcpy(r->body, c->buf + head_len, body);
    r->body[body] = 0;
    r->body_len = body;
    memmove(c->buf, c->buf + head_len + body, c->len - head_len - body);
    c->len -= head_len + body;
    c->buf[c->len] = 0;
    return 0;
}

/* 1 if the server closes the connection within timeout_ms (no further bytes). */
static int client_sees_close(Client *c, int timeout_ms) {
    if (c->len > 0) return 0;
    return client_fill(c, timeout_ms) == 0;
}

/* One request on a fresh connection: fills r; *closed = the server closed afterwards. */
static int http_raw(int port, const char *req, size_t len, Resp *r, int *closed) {
    Client c;
    if (client_open(&c, port) != 0) return -1;
    int rc = send_all(&c, req, len);
    if (rc == 0) rc = client_read_response(&c, 0, r, 10000);
    if (closed) *closed = rc == 0 && client_sees_close(&c, 4000);
    client_close(&c);
    return rc;
}

static int http_get(int port, const char *path, Resp *r) {
    char req[1024];
    snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", path);
    return http_raw(port, req, strlen(req), r, NULL);
}

/* ---------------- the server and training children ---------------- */

typedef struct {
    pid_t pid;
    int port;
    char url[256];
} Server;

/* Starts `detr-prof serve DB --port 0 EXTRA...`; reads the URL line. 0 or -1. */
static int server_start(Server *s, const char *const *extra) {
    int fds[2];
    if (pipe(fds) != 0) return -1;
    char prof[512], errlog[600];
    snprintf(prof, sizeof(prof), "%s/detr-prof", g_build);
    static int n_started;
    snprintf(errlog, sizeof(errlog), "%s/serve_%d.log", g_dir, ++n_started);
    const char *argv[32] = {prof, "serve", g_db, "--port", "0"};
    int n = 5;
    for (int i = 0; extra && extra[i] && n < 30; i++) argv[n++] = extra[i];
    argv[n] = NULL;
    s->pid = fork();
    if (s->pid == 0) {
        dup2(fds[1], 1);
        FILE *e = freopen(errlog, "w", stderr); /* the server's log, kept with the test's files */
        (void)e;
        close(fds[0]);
        close(fds[1]);
        execv(prof, (char *const *)argv);
        _exit(127);
    }
    close(fds[1]);
    char line[512] = "";
    size_t len = 0;
    double deadline = now_s() + 20;
    while (!strchr(line, '\n') && now_s() < deadline && len < sizeof(line) - 1) {
        struct pollfd p = {fds[0], POLLIN, 0};
        if (poll(&p, 1, 500) <= 0) continue;
        ssize_t k = read(fds[0], line + len, sizeof(line) - 1 - len);
        if (k <= 0) break;
        len += (size_t)k;
        line[len] = 0;
    }
    close(fds[0]);
    const char *at = strstr(line, " at http://");
    if (!at || sscanf(at, " at %255s", s->url) != 1) return -1;
    const char *colon = strrchr(s->url, ':');
    s->port = colon ? atoi(colon + 1) : 0;
    return s->port > 0 ? 0 : -1;
}

/* Sends sig and waits up to 10 s; returns the exit code, or -1 (killed / hung). */
static int server_stop(Server *s, int sig) {
    kill(s->pid, sig);
    for (int i = 0; i < 200; i++) {
        int st;
        if (waitpid(s->pid, &st, WNOHANG) == s->pid) return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
        usleep(50000);
    }
    kill(s->pid, SIGKILL);
    waitpid(s->pid, NULL, 0);
    return -1;
}

static char g_train_common[1024];

static int train(const char *out_name, int epochs, int background, pid_t *pid) {
    char cmd[2048];
    snprintf(cmd, sizeof(cmd), "%s --epochs %d --db %s --out %s/%s >%s/%s.log 2>&1", g_train_common, epochs, g_db,
             g_dir, out_name, g_dir, out_name);
    if (!background) {
        char full[2200];
        snprintf(full, sizeof(full), "timeout 120 %s", cmd);
        return system(full) == 0 ? 0 : -1;
    }
    char full[2200];
    snprintf(full, sizeof(full), "exec %s", cmd); /* the pid is detr-train's, to signal it */
    *pid = fork();
    if (*pid == 0) {
        execl("/bin/sh", "sh", "-c", full, (char *)NULL);
        _exit(127);
    }
    return *pid > 0 ? 0 : -1;
}

static int64_t db_int(const char *sql) {
    sqlite3 *db;
    int64_t v = -1;
    if (sqlite3_open_v2(g_db, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK) {
        sqlite3_stmt *st;
        if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
            v = sqlite3_column_int64(st, 0);
        sqlite3_finalize(st);
    }
    sqlite3_close(db);
    return v;
}

/* ---------------- tests ---------------- */

static void test_cli(void) {
    char cmd[1024], *out, *err;
    snprintf(cmd, sizeof(cmd), "%s/detr-prof serve --help", g_build);
    int rc = run_capture(g_dir, cmd, &out, &err);
    CHECK("cli: --help exits 0 and documents the endpoints", rc == 0 && strstr(out, "/api/data") && strstr(out, "--bind"),
          "rc %d, out: %.200s", rc, out);
    free(out), free(err);
    snprintf(cmd, sizeof(cmd), "%s/detr-prof serve %s/missing.db --port 0", g_build, g_dir);
    rc = run_capture(g_dir, cmd, &out, &err);
    CHECK("cli: a missing database is bad input (2) with a message naming it", rc == 2 && strstr(err, "missing.db"),
          "rc %d, err: %s", rc, err);
    free(out), free(err);
    snprintf(cmd, sizeof(cmd), "%s/detr-prof serve %s --port 70000", g_build, g_db);
    rc = run_capture(g_dir, cmd, &out, &err);
    CHECK("cli: --port 70000 is bad usage (2)", rc == 2 && strstr(err, "--port"), "rc %d, err: %s", rc, err);
    free(out), free(err);
    snprintf(cmd, sizeof(cmd), "%s/detr-prof serve %s --port 0 --run 999", g_build, g_db);
    rc = run_capture(g_dir, cmd, &out, &err);
    CHECK("cli: --run of a run not in the file is refused (2)", rc == 2 && strstr(err, "999"), "rc %d, err: %s", rc, err);
    free(out), free(err);
    snprintf(cmd, sizeof(cmd), "%s/detr-prof serve %s --port 0 --bind 300.1.2.3", g_build, g_db);
    rc = run_capture(g_dir, cmd, &out, &err);
    CHECK("cli: an invalid --bind address fails (1) with a message", rc == 1 && strstr(err, "300.1.2.3"),
          "rc %d, err: %s", rc, err);
    free(out), free(err);
}

/* A /proc file (its size reads as 0, so read_text cannot be used). */
static char *read_proc(const char *path) {
    size_t cap = 1 << 16, len = 0;
    char *s = malloc(cap);
    FILE *f = fopen(path, "r");
    size_t k;
    while (f && (k = fread(s + len, 1, cap - len - 1, f)) > 0) {
        len += k;
        if (len + 1 == cap) s = realloc(s, cap *= 2);
    }
    if (f) fclose(f);
    s[len] = 0;
    return s;
}

/* The listening socket of port in /proc/net/tcp is on 127.0.0.1 (0100007F). */
static void test_default_bind(const Server *s) {
    CHECK("bind: the printed URL is http://127.0.0.1:PORT/", strncmp(s->url, "http://127.0.0.1:", 17) == 0,
          "url %s", s->url);
    char *tcp = read_proc("/proc/net/tcp");
    char want[32];
    snprintf(want, sizeof(want), ":%04X 00000000:0000 0A", s->port);
    const char *line = strstr(tcp, want);
    int ok = 0;
    if (line) {
        const char *start = line;
        while (start > tcp && start[-1] != '\n') start--;
        char addr[16];
        ok = sscanf(start, " %*d: %8[0-9A-F]", addr) == 1 && strcmp(addr, "0100007F") == 0;
    }
    CHECK("bind: by default the socket listens on 127.0.0.1 only (/proc/net/tcp)", ok, "no LISTEN line for 127.0.0.1:%d",
          s->port);
    free(tcp);
}

static void test_page_and_data(const Server *s) {
    Resp r;
    char v[256];
    int rc = http_get(s->port, "/healthz", &r);
    CHECK("healthz: 200 ok", rc == 0 && r.status == 200 && strcmp(r.body, "ok\n") == 0, "rc %d status %d", rc, r.status);
    free(r.body);

    int64_t run = db_int("SELECT max(run_id) FROM DETR_RUNS");
    int64_t steps = db_int("SELECT count(*) FROM DETR_STEPS WHERE run_id = (SELECT max(run_id) FROM DETR_RUNS)");
    rc = http_get(s->port, "/", &r);
    char expect_run[64];
    snprintf(expect_run, sizeof(expect_run), "\"run_id\":%lld", (long long)run);
    CHECK("page: GET / is 200 text/html", rc == 0 && r.status == 200 && header_value(&r, "Content-Type", v, sizeof(v)) &&
          strncmp(v, "text/html", 9) == 0, "rc %d status %d", rc, r.status);
    CHECK("page: holds the data document, the report script and the live poller",
          r.body && strstr(r.body, "\"format\":\"detr-prof-report\"") && strstr(r.body, expect_run) &&
          strstr(r.body, "detrReport") && strstr(r.body, "detr-live-badge") && strstr(r.body, "window.detrLiveEtag"),
          "missing pieces in %zu bytes", r.body_len);
    free(r.body);

    rc = http_get(s->port, "/api/data", &r);
    json_error_t jerr;
    json_t *doc = rc == 0 ? json_loads(r.body, 0, &jerr) : NULL;
    json_t *run0 = json_array_get(json_object_get(doc, "runs"), 0);
    json_int_t got_run = json_integer_value(json_object_get(run0, "run_id"));
    json_int_t got_steps = json_integer_value(json_object_get(json_object_get(run0, "summary"), "steps"));
    CHECK("api/data: 200 JSON of the newest run, step count as in DETR_STEPS",
          r.status == 200 && doc && got_run == run && got_steps == steps && steps > 0,
          "status %d, run %lld (db %lld), steps %lld (db %lld)", r.status, (long long)got_run, (long long)run,
          (long long)got_steps, (long long)steps);
    CHECK("api/data: default max_points is 1000", json_integer_value(json_object_get(doc, "max_points")) == 1000,
          "max_points %lld", (long long)json_integer_value(json_object_get(doc, "max_points")));
    json_decref(doc);
    char etag[64] = "";
    header_value(&r, "ETag", etag, sizeof(etag));
    free(r.body);

    rc = http_get(s->port, "/api/data?run=1&max_points=4", &r);
    doc = rc == 0 ? json_loads(r.body, 0, &jerr) : NULL;
    CHECK("api/data: ?run=1&max_points=4 selects run 1 with 4 points",
          r.status == 200 && json_integer_value(json_object_get(doc, "max_points")) == 4 &&
          json_integer_value(json_object_get(json_array_get(json_object_get(doc, "runs"), 0), "run_id")) == 1,
          "status %d body %.200s", r.status, r.body);
    json_decref(doc);
    free(r.body);

    rc = http_get(s->port, "/api/data?run=999", &r);
    CHECK("api/data: an unknown run is 404 with a JSON error", rc == 0 && r.status == 404 && strstr(r.body, "999"),
          "status %d body %s", r.status, r.body);
    free(r.body);
    rc = http_get(s->port, "/api/data?run=abc", &r);
    CHECK("api/data: run=abc is 400", rc == 0 && r.status == 400 && strstr(r.body, "\"error\""), "status %d body %s",
          r.status, r.body);
    free(r.body);
    rc = http_get(s->port, "/api/data?max_points=0", &r);
    CHECK("api/data: max_points=0 is 400", rc == 0 && r.status == 400, "status %d", r.status);
    free(r.body);

    /* ETag: the same data gets the same tag (its generation time left out) -> 304 */
    usleep(600 * 1000); /* past the cache: a new document is computed */
    char req[512];
    snprintf(req, sizeof(req), "GET /api/data HTTP/1.1\r\nHost: localhost\r\nIf-None-Match: %s\r\n\r\n", etag);
    int closed;
    rc = http_raw(s->port, req, strlen(req), &r, &closed);
    CHECK("api/data: If-None-Match with the current tag is 304 without body",
          etag[0] && rc == 0 && r.status == 304 && r.body_len == 0, "etag '%s' status %d", etag, r.status);
    free(r.body);

    rc = http_get(s->port, "/api/runs", &r);
    doc = rc == 0 ? json_loads(r.body, 0, &jerr) : NULL;
    json_t *runs = json_object_get(doc, "runs");
    int ok = json_is_array(runs) && (int64_t)json_array_size(runs) == db_int("SELECT count(*) FROM DETR_RUNS");
    for (size_t i = 0; ok && i < json_array_size(runs); i++) {
        json_t *o = json_array_get(runs, i);
        char sql[256];
        json_int_t id = json_integer_value(json_object_get(o, "id"));
        snprintf(sql, sizeof(sql), "SELECT count(*) FROM DETR_STEPS WHERE run_id = %lld", (long long)id);
        ok = json_integer_value(json_object_get(o, "steps")) == db_int(sql) &&
             json_is_string(json_object_get(o, "status")) && json_integer_value(json_object_get(o, "start_ns")) > 0;
    }
    CHECK("api/runs: every run with its status, start and step count as in the database", rc == 0 && r.status == 200 && ok,
          "status %d body %.300s", r.status, r.body);
    json_decref(doc);
    free(r.body);

    rc = http_get(s->port, "/assets/dashboards/live.js", &r);
    CHECK("assets: /assets/dashboards/live.js is the embedded script",
          rc == 0 && r.status == 200 && header_value(&r, "Content-Type", v, sizeof(v)) && strstr(v, "javascript") &&
          strstr(r.body, "detrReport.render"), "status %d", r.status);
    free(r.body);
}

static void test_http_features(const Server *s) {
    Client c;
    Resp r;
    char v[64];
    /* HEAD: the GET headers, no body; the connection stays usable */
    int ok = client_open(&c, s->port) == 0;
    const char *head = "HEAD /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n";
    ok = ok && send_all(&c, head, strlen(head)) == 0 && client_read_response(&c, 1, &r, 5000) == 0;
    int head_ok = ok && r.status == 200 && header_value(&r, "Content-Length", v, sizeof(v)) && strcmp(v, "3") == 0;
    free(r.body);
    /* keep-alive: more requests on the same connection; pipelining: two in one write */
    const char *two = "GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\nGET /api/runs HTTP/1.1\r\nHost: localhost\r\n\r\n";
    Resp a, b;
    ok = ok && send_all(&c, two, strlen(two)) == 0 && client_read_response(&c, 0, &a, 5000) == 0 &&
         client_read_response(&c, 0, &b, 5000) == 0;
    CHECK("http: HEAD sends headers only (Content-Length of the GET answer)", head_ok, "status %d", r.status);
    CHECK("http: keep-alive and pipelining (two requests in one write, answered in order)",
          ok && a.status == 200 && strcmp(a.body, "ok\n") == 0 && b.status == 200 && strstr(b.body, "\"runs\""),
          "ok %d", ok);
    if (ok) free(a.body), free(b.body);
    client_close(&c);
}

typedef struct {
    const char *name;
    const char *request; /* NULL: built by the test */
    int status;
} BadCase;

static void test_bad_requests(const Server *s) {
    static const BadCase cases[] = {
        {"traversal /../etc/passwd", "GET /../etc/passwd HTTP/1.1\r\nHost: localhost\r\n\r\n", 400},
        {"traversal /assets/../../x", "GET /assets/../../x HTTP/1.1\r\nHost: localhost\r\n\r\n", 400},
        {"traversal %2e%2e", "GET /%2e%2e/etc/passwd HTTP/1.1\r\nHost: localhost\r\n\r\n", 400},
        {"traversal %2E%2E upper case", "GET /assets/%2E%2E/%2E%2E/x HTTP/1.1\r\nHost: localhost\r\n\r\n", 400},
        {"traversal .%2e mixed", "GET /assets/.%2e/x HTTP/1.1\r\nHost: localhost\r\n\r\n", 400},
        {"encoded slash %2f", "GET /assets/reports%2freport.js HTTP/1.1\r\nHost: localhost\r\n\r\n", 400},
        {"encoded traversal ..%2f", "GET /assets/..%2f..%2fetc HTTP/1.1\r\nHost: localhost\r\n\r\n", 400},
        {"encoded backslash %5c", "GET /assets/..%5c..%5cx HTTP/1.1\r\nHost: localhost\r\n\r\n", 400},
        {"dot segment /./", "GET /./healthz HTTP/1.1\r\nHost: localhost\r\n\r\n", 400},
        {"encoded NUL", "GET /healthz%00.js HTTP/1.1\r\nHost: localhost\r\n\r\n", 400},
        {"bad escape %zz", "GET /%zz HTTP/1.1\r\nHost: localhost\r\n\r\n", 400},
        {"absolute-form target", "GET http://evil.example/ HTTP/1.1\r\nHost: localhost\r\n\r\n", 400},
        {"unknown path 404", "GET /etc/passwd HTTP/1.1\r\nHost: localhost\r\n\r\n", 404},
        {"unknown asset 404", "GET /assets/profiler/prof_db.c HTTP/1.1\r\nHost: localhost\r\n\r\n", 404},
        {"POST 405", "POST /api/data HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello", 405},
        {"DELETE 405", "DELETE / HTTP/1.1\r\nHost: localhost\r\n\r\n", 405},
        {"OPTIONS 405", "OPTIONS * HTTP/1.1\r\nHost: localhost\r\n\r\n", 405},
        {"GET with a body 413", "GET / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n"
                                "0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789", 413},
        {"GET with a huge Content-Length 413", "GET / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 99999999999\r\n\r\n", 413},
        {"GET chunked 413", "GET / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 413},
        {"garbage 400", "HELLO WORLD\r\n\r\n", 400},
        {"binary garbage 400", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400},
        {"header without colon 400", "GET / HTTP/1.1\r\nHost: localhost\r\nNoColonHere\r\n\r\n", 400},
        {"HTTP/1.1 without Host 400", "GET /healthz HTTP/1.1\r\n\r\n", 400},
        {"two Host headers 400", "GET /healthz HTTP/1.1\r\nHost: localhost\r\nHost: evil.example\r\n\r\n", 400},
        {"foreign Host (DNS rebinding) 403", "GET /api/data HTTP/1.1\r\nHost: evil.example\r\n\r\n", 403},
        {"header section over 8 KiB 431", NULL, 431},
        {"request line over 8 KiB 431", NULL, 431},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *req = NULL;
        if (!cases[i].request) {
            size_t n = 9000;
            req = malloc(n + 200);
            if (strstr(cases[i].name, "header")) {
                int k = sprintf(req, "GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: ");
                memset(req + k, 'a', n);
                strcpy(req + k + n, "\r\n\r\n");
            } else {
                strcpy(req, "GET /");
                memset(req + 5, 'a', n);
                strcpy(req + 5 + n, " HTTP/1.1\r\nHost: localhost\r\n\r\n");
            }
        }
        const char *send = req ? req : cases[i].request;
        Resp r;
        int closed = 0;
        int rc = http_raw(s->port, send, strlen(send), &r, &closed);
        char name[160], allow[64];
        snprintf(name, sizeof(name), "bad request: %s -> %d and the connection is closed", cases[i].name, cases[i].status);
        int ok = rc == 0 && r.status == cases[i].status && closed;
        if (cases[i].status == 405)
            ok = ok && header_value(&r, "Allow", allow, sizeof(allow)) && strcmp(allow, "GET, HEAD") == 0;
        CHECK(name, ok, "rc %d status %d closed %d body %.100s", rc, r.status, closed, r.body ? r.body : "");
        free(r.body);
        free(req);
    }
    Resp r;
    int rc = http_get(s->port, "/healthz", &r);
    CHECK("bad requests: the server still answers afterwards", rc == 0 && r.status == 200, "rc %d", rc);
    free(r.body);
}

typedef struct {
    int port;
    int status;      /* the answer the slow client finally got (0: none, just closed) */
    double elapsed;  /* seconds from connect to the server's answer/close */
} SlowArgs;

/* Sends a request one byte every 300 ms (it would need ~12 s): slowloris. */
static void *slow_client(void *p) {
    SlowArgs *a = p;
    const char *req = "GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: 1\r\n\r\n";
    Client c;
    double t0 = now_s();
    if (client_open(&c, a->port) != 0) return NULL;
    for (size_t i = 0; req[i]; i++) {
        if (send(c.fd, req + i, 1, MSG_NOSIGNAL) != 1) break;
        if (client_fill(&c, 300) >= 0) break; /* the server answered or closed */
    }
    Resp r;
    if (c.len > 0 || !c.eof) {
        if (client_read_response(&c, 0, &r, 8000) == 0) {
            a->status = r.status;
            free(r.body);
        }
    }
    client_sees_close(&c, 3000);
    a->elapsed = now_s() - t0;
    client_close(&c);
    return NULL;
}

static void test_slow_clients(const Server *s, double timeout_s) {
    SlowArgs a = {.port = s->port};
    pthread_t t;
    pthread_create(&t, NULL, slow_client, &a);
    Client idle;
    int idle_open = client_open(&idle, s->port) == 0; /* connects and says nothing */
    double t0 = now_s();
    usleep(1000 * 1000);
    double worst = 0;
    int all_ok = 1;
    for (int i = 0; i < 5; i++) { /* meanwhile others are served promptly */
        Resp r;
        double q0 = now_s();
        int rc = http_get(s->port, "/healthz", &r);
        double dt = now_s() - q0;
        if (dt > worst) worst = dt;
        all_ok = all_ok && rc == 0 && r.status == 200;
        free(r.body);
        usleep(200 * 1000);
    }
    CHECK("slow client: others are served promptly meanwhile (< 0.5 s)", all_ok && worst < 0.5, "worst %.3f s", worst);
    Resp ir = {0};
    int idle_408 = idle_open && client_read_response(&idle, 0, &ir, (int)(timeout_s * 1000) + 3000) == 0 &&
                   ir.status == 408;
    double idle_t = now_s() - t0;
    int idle_closed = idle_408 && client_sees_close(&idle, 3000);
    free(ir.body);
    client_close(&idle);
    pthread_join(t, NULL);
    CHECK("slow client: a byte-at-a-time request gets 408 at the request timeout",
          a.status == 408 && a.elapsed > timeout_s - 0.5 && a.elapsed < timeout_s + 3,
          "status %d after %.2f s (timeout %.1f s)", a.status, a.elapsed, timeout_s);
    CHECK("slow client: a silent connection gets 408 and is closed at the request timeout",
          idle_closed && idle_t > timeout_s - 0.5 && idle_t < timeout_s + 3, "408 %d, closed %d after %.2f s", idle_408,
          idle_closed, idle_t);
}

typedef struct {
    int port;
    int ok;
    size_t len;
} ConcArgs;

static pthread_barrier_t g_barrier;

static void *concurrent_client(void *p) {
    ConcArgs *a = p;
    Client c;
    int opened = client_open(&c, a->port) == 0;
    pthread_barrier_wait(&g_barrier); /* all 100 connected, then all ask at once */
    if (!opened) return NULL;
    const char *req = "GET /api/data HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    a->ok = 1;
    for (int k = 0; k < 2; k++) { /* twice on the same keep-alive connection */
        Resp r;
        int rc = send_all(&c, req, strlen(req)) == 0 ? client_read_response(&c, 0, &r, 20000) : -1;
        a->ok = a->ok && rc == 0 && r.status == 200 && r.body_len > 0;
        if (rc == 0) {
            a->len = r.body_len;
            free(r.body);
        }
    }
    client_close(&c);
    return NULL;
}

static void test_concurrency(const Server *s) {
    enum { N = 100 };
    pthread_t t[N];
    ConcArgs a[N];
    pthread_barrier_init(&g_barrier, NULL, N);
    double t0 = now_s();
    for (int i = 0; i < N; i++) {
        a[i] = (ConcArgs){.port = s->port};
        pthread_create(&t[i], NULL, concurrent_client, &a[i]);
    }
    int ok = 0, same_len = 1;
    for (int i = 0; i < N; i++) {
        pthread_join(t[i], NULL);
        ok += a[i].ok;
        same_len = same_len && a[i].len == a[0].len;
    }
    pthread_barrier_destroy(&g_barrier);
    CHECK("concurrency: 100 clients x 2 keep-alive requests all get 200 (the same document)", ok == N && same_len,
          "%d of %d ok, same length %d, %.2f s", ok, N, same_len, now_s() - t0);
}

static void test_connection_cap(void) {
    Server s;
    const char *extra[] = {"--max-conns", "4", NULL};
    if (server_start(&s, extra) != 0) {
        CHECK("connection cap: server starts", 0, "no URL printed");
        return;
    }
    Client held[4];
    for (int i = 0; i < 4; i++) client_open(&held[i], s.port);
    usleep(200 * 1000);
    Resp r;
    int closed = 0;
    const char *req = "GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n";
    int rc = http_raw(s.port, req, strlen(req), &r, &closed);
    CHECK("connection cap: a client over --max-conns gets 503 and is closed", rc == 0 && r.status == 503 && closed,
          "rc %d status %d closed %d", rc, r.status, closed);
    free(r.body);
    client_close(&held[0]);
    usleep(200 * 1000);
    rc = http_raw(s.port, req, strlen(req), &r, NULL);
    CHECK("connection cap: a freed slot is usable again", rc == 0 && r.status == 200, "rc %d status %d", rc, r.status);
    free(r.body);
    for (int i = 1; i < 4; i++) client_close(&held[i]);
    int code = server_stop(&s, SIGINT);
    CHECK("signals: SIGINT stops the server with exit 0", code == 0, "exit %d", code);
}

static void test_live_updates(const Server *s) {
    int64_t before = db_int("SELECT max(run_id) FROM DETR_RUNS");
    pid_t pid;
    if (train("live", 12, 1, &pid) != 0) {
        CHECK("live: detr-train starts", 0, "fork failed");
        return;
    }
    /* poll /api/data (newest run by default) until the new run shows and its steps grow */
    double deadline = now_s() + 60;
    json_int_t first = -1, last = -1, seen_run = -1;
    int observations = 0;
    while (now_s() < deadline) {
        Resp r;
        if (http_get(s->port, "/api/data", &r) == 0 && r.status == 200) {
            json_t *doc = json_loads(r.body, 0, NULL);
            json_t *run0 = json_array_get(json_object_get(doc, "runs"), 0);
            json_int_t id = json_integer_value(json_object_get(run0, "run_id"));
            json_int_t steps = json_integer_value(json_object_get(json_object_get(run0, "summary"), "steps"));
            if (id > before && steps > 0) {
                seen_run = id;
                if (first < 0) first = steps;
                if (steps != last) observations++;
                last = steps;
            }
            json_decref(doc);
        }
        free(r.body);
        if (first >= 0 && last > first && observations >= 3) break;
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            pid = -1;
            break;
        }
        usleep(300 * 1000);
    }
    CHECK("live: /api/data follows a run while detr-train writes it (step count grows between polls)",
          seen_run > before && last > first && first >= 0, "run %lld (before %lld), steps %lld -> %lld, %d changes",
          (long long)seen_run, (long long)before, (long long)first, (long long)last, observations);
    if (pid > 0) { /* seen enough: stop the run early (SIGINT: it closes as "interrupted") */
        int st;
        kill(pid, SIGINT);
        waitpid(pid, &st, 0);
    }
    /* once the run is over, the answer matches the database */
    usleep(600 * 1000);
    Resp r;
    json_t *doc = http_get(s->port, "/api/runs", &r) == 0 ? json_loads(r.body, 0, NULL) : NULL;
    json_t *runs = json_object_get(doc, "runs");
    json_t *lastrun = json_array_get(runs, json_array_size(runs) - 1);
    char sql[200];
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM DETR_STEPS WHERE run_id = %lld", (long long)seen_run);
    const char *status = json_string_value(json_object_get(lastrun, "status"));
    CHECK("live: after the run, /api/runs shows it closed with every step",
          json_integer_value(json_object_get(lastrun, "id")) == seen_run &&
          json_integer_value(json_object_get(lastrun, "steps")) == db_int(sql) && db_int(sql) > 0 && status &&
          (strcmp(status, "ok") == 0 || strcmp(status, "interrupted") == 0),
          "body %.300s", r.body ? r.body : "");
    json_decref(doc);
    free(r.body);
}

int main(void) {
    g_build = getenv("DETR_BUILD") ? getenv("DETR_BUILD") : "build";
    signal(SIGPIPE, SIG_IGN);
    if (!mkdtemp(g_dir)) {
        CHECK("temp folder", 0, "mkdtemp: %s", strerror(errno));
        return test_finish();
    }
    char cmd[2048], *out, *err;
    snprintf(cmd, sizeof(cmd), "%s/detr-data synth %s/ds --images 32 --val 8 --size 64x64 --classes 3 --max-objects 2",
             g_build, g_dir);
    int rc = run_capture(g_dir, cmd, &out, &err);
    free(out), free(err);
    snprintf(g_db, sizeof(g_db), "%s/profile.sqlite", g_dir);
    snprintf(g_train_common, sizeof(g_train_common),
             "%s/detr-train --data %s/ds --threads 1 --batch 4 --scales 64 --max-size 64 --resize-choices 48,56,64 "
             "--crop 40,48 --val-size 64 --queries 5 --profile",
             g_build, g_dir);
    if (rc != 0 || train("first", 2, 0, NULL) != 0) {
        CHECK("setup: a profile database from a short detr-train run", 0, "see %s (*.log)", g_dir);
        return test_finish();
    }
    test_cli();
    Server s;
    const double timeout_s = 3.0;
    const char *extra[] = {"--request-timeout", "3", NULL};
    if (server_start(&s, extra) != 0) {
        CHECK("server: starts and prints its URL", 0, "no 'serving ... at http://...' line");
        return test_finish();
    }
    test_default_bind(&s);
    test_page_and_data(&s);
    test_http_features(&s);
    test_bad_requests(&s);
    test_concurrency(&s);
    test_slow_clients(&s, timeout_s);
    test_live_updates(&s);
    test_connection_cap();
    rc = server_stop(&s, SIGTERM);
    CHECK("signals: SIGTERM stops the server with exit 0", rc == 0, "exit %d", rc);
    if (g_test_fail == 0) {
        snprintf(cmd, sizeof(cmd), "rm -rf %s", g_dir);
        if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_dir);
    } else {
        printf("files kept in %s\n", g_dir);
    }
    return test_finish();
}
