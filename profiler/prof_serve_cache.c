/* prof_serve_cache.c - the short-lived cache of detr-prof serve's database answers. Each key
 * (endpoint + normalised query) is computed by at most one worker (uv_queue_work) at a time;
 * clients that ask meanwhile wait for that result, and a result is reused for ttl_ms, so 100
 * dashboards polling every second cost about two queries a second, off the loop thread. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "prof_serve_internal.h"

#define CACHE_ENTRIES 32 /* distinct query strings kept; the least recently used goes first */

typedef struct Entry {
    ServeKind kind;
    ServeQuery query;
    char key[400];
    int used;         /* the slot holds a key */
    int pending;      /* a worker is computing it */
    uint64_t done_ms; /* when the result was computed (loop time) */
    uint64_t last_ms; /* last asked for */
    ServeResult result;
    HttpConn **waiters;
    int n_waiters, cap_waiters;
} Entry;

typedef struct {
    uv_work_t work;
    ServeCache *cache;
    Entry *entry;
    ServeResult result;
} Job;

struct ServeCache {
    uv_loop_t *loop;
    char *db_path;
    int ttl_ms;
    Entry entries[CACHE_ENTRIES];
};

ServeCache *serve_cache_new(uv_loop_t *loop, const char *db_path, int ttl_ms) {
    ServeCache *c = calloc(1, sizeof(*c));
    if (!c || !(c->db_path = strdup(db_path))) {
        free(c);
        return NULL;
    }
    c->loop = loop;
    c->ttl_ms = ttl_ms;
    return c;
}

static void make_key(ServeKind kind, const ServeQuery *q, char *key, size_t cap) {
    static const char *const names[] = {"runs", "data", "page"};
    int n = snprintf(key, cap, "%s|%d|", names[kind], kind == SERVE_RUNS ? 0 : q->max_points);
    for (int i = 0; kind != SERVE_RUNS && i < q->n_runs && n < (int)cap; i++)
        n += snprintf(key + n, cap - n, "%lld,", (long long)q->runs[i]);
}

static void answer(HttpConn *conn, const ServeResult *r) {
    if (r->body) http_respond(conn, r->status, r->content_type, r->body, NULL);
    else http_respond_text(conn, 500, NULL, "500 Internal Server Error: out of memory\n");
}

static void job_work(uv_work_t *w) {
    Job *job = w->data;
    serve_compute(job->cache->db_path, job->entry->kind, &job->entry->query, &job->result);
}

static void job_done(uv_work_t *w, int status) {
    Job *job = w->data;
    Entry *e = job->entry;
    if (status != 0) { /* cancelled: never happens with uv_queue_work once queued; be safe */
        job->result.status = 503;
        job->result.body = NULL;
    }
    http_blob_unref(e->result.body);
    e->result = job->result;
    e->pending = 0;
    e->done_ms = uv_now(job->cache->loop);
    free(job);
    /* every waiter gets the same result; responding never re-enters this entry synchronously */
    int n = e->n_waiters;
    e->n_waiters = 0;
    for (int i = 0; i < n; i++) answer(e->waiters[i], &e->result);
}

/* The slot for key: the one holding it, a free one, or the least recently used idle one. */
static Entry *find_slot(ServeCache *c, const char *key) {
    Entry *victim = NULL;
    for (int i = 0; i < CACHE_ENTRIES; i++) {
        Entry *e = &c->entries[i];
        if (e->used && strcmp(e->key, key) == 0) return e;
    }
    for (int i = 0; i < CACHE_ENTRIES; i++) {
        Entry *e = &c->entries[i];
        if (!e->used) return e;
        if (!e->pending && (!victim || e->last_ms < victim->last_ms)) victim = e;
    }
    if (victim) {
        http_blob_unref(victim->result.body);
        victim->result.body = NULL;
        victim->used = 0;
    }
    return victim;
}

void serve_cache_get(ServeCache *c, ServeKind kind, const ServeQuery *q, HttpConn *conn) {
    char key[sizeof(((Entry *)0)->key)];
    make_key(kind, q, key, sizeof(key));
    Entry *e = find_slot(c, key);
    if (!e) { /* every slot is being computed: 32 distinct queries at once */
        http_respond_text(conn, 503, NULL, "503 Service Unavailable: too many distinct queries at once; retry\n");
        return;
    }
    uint64_t now = uv_now(c->loop);
    if (!e->used) {
        HttpConn **waiters = e->waiters; /* an idle slot has no waiters; keep the array */
        int cap_waiters = e->cap_waiters;
        memset(e, 0, sizeof(*e));
        e->waiters = waiters;
        e->cap_waiters = cap_waiters;
        e->used = 1;
        e->kind = kind;
        e->query = *q;
        snprintf(e->key, sizeof(e->key), "%s", key);
    }
    e->last_ms = now;
    if (!e->pending && e->result.body && now - e->done_ms < (uint64_t)c->ttl_ms) {
        answer(conn, &e->result);
        return;
    }
    if (e->n_waiters == e->cap_waiters) {
        int cap = e->cap_waiters ? 2 * e->cap_waiters : 16;
        HttpConn **w = realloc(e->waiters, (size_t)cap * sizeof(*w));
        if (!w) {
            http_respond_text(conn, 503, NULL, "503 Service Unavailable: out of memory\n");
            return;
        }
        e->waiters = w;
        e->cap_waiters = cap;
    }
    e->waiters[e->n_waiters++] = conn;
    if (e->pending) return;
    Job *job = calloc(1, sizeof(*job));
    if (!job) {
        e->n_waiters--;
        http_respond_text(conn, 503, NULL, "503 Service Unavailable: out of memory\n");
        return;
    }
    job->cache = c;
    job->entry = e;
    job->work.data = job;
    e->pending = 1;
    if (uv_queue_work(c->loop, &job->work, job_work, job_done) != 0) {
        free(job);
        e->pending = 0;
        e->n_waiters--;
        http_respond_text(conn, 503, NULL, "503 Service Unavailable: cannot start a database query\n");
    }
}

void serve_cache_free(ServeCache *c) {
    if (!c) return;
    for (int i = 0; i < CACHE_ENTRIES; i++) {
        http_blob_unref(c->entries[i].result.body);
        free(c->entries[i].waiters);
    }
    free(c->db_path);
    free(c);
}
