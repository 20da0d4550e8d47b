/* prof_writer.c - the writer thread: drains the queue into SQLite, one transaction per batch
 * (every flush interval, or sooner when the queue is a quarter full), and the run's final update.
 *
 * Durability: the database is in WAL mode with synchronous=NORMAL, so a committed batch survives
 * a crash of the process (kill -9) and the file is always consistent; a power loss may lose the
 * last batches but not the file. A batch is one transaction, so a step record and its loss,
 * memory rows are either all there or all missing. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include "prof_internal.h"

#define MAX_BATCH 1024 /* records per transaction */


static int prepare(sqlite3 *db, const char *sql, sqlite3_stmt **s) {
    return sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, s, NULL) == SQLITE_OK ? 0 : -1;
}

int prof_writer_prepare(Prof *p, char *err, size_t errlen) {
    Statements *st = &p->st;
    struct {
        sqlite3_stmt **s;
        const char *sql;
    } all[] = {
        {&st->begin, "BEGIN IMMEDIATE"},
        {&st->commit, "COMMIT"},
        {&st->rollback, "ROLLBACK"},
        {&st->step, "INSERT INTO DETR_STEPS (run_id, step, epoch, start_ns, end_ns, wall_ns, "
                    "data_wait_ns, h2d_ns, images, loss, lr, lr_backbone, grad_norm, images_per_s, "
                    "flops, mfu, padded_fraction, losses_json, loss_scale, skipped, gpu_util, gpu_mem_util, "
                    "gpu_alloc_retries, gpu_ooms) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"},
        {&st->phase, "INSERT INTO DETR_PHASES (run_id, step, name_id, start_ns, duration_ns, depth, "
                     "global_tid) VALUES (?,?,?,?,?,?,?)"},
        {&st->nvtx, "INSERT INTO NVTX_EVENTS (start, \"end\", eventType, color, text, globalTid, "
                    "textId, domainId) VALUES (?,?,59,?,?,?,?,1)"},
        {&st->mem, "INSERT INTO DETR_MEMORY (run_id, step, timestamp_ns, category, current_bytes, "
                   "peak_bytes) VALUES (?,?,?,?,?,?)"},
        {&st->loader, "INSERT INTO DETR_LOADER (run_id, step, wait_ns, read_ns, decode_ns, "
                      "augment_ns, collate_ns, bytes_read, queue_depth, padded_fraction, skipped, "
                      "dropped_boxes) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"},
        {&st->eval, "INSERT INTO DETR_EVAL (run_id, epoch, step, timestamp_ns, duration_ns, images, "
                    "ap, ap50, ap75, ap_small, ap_medium, ap_large, ar1, ar10, ar100, ar_small, "
                    "ar_medium, ar_large) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"},
        {&st->eval_cat, "INSERT INTO DETR_EVAL_CATEGORIES (eval_id, run_id, category_id, ap) "
                        "VALUES (?,?,?,?)"},
        {&st->counters, "UPDATE DETR_RUNS SET records_written = ?, dropped_records = ?, "
                        "dropped_steps = ?, dropped_ranges = ?, write_failed_records = ?, "
                        "range_errors = ?, writer_cpu_ns = ?, dropped_gpu_records = ?, "
                        "cupti_dropped_records = ? WHERE run_id = ?"},
        {&st->str_find, "SELECT id FROM StringIds WHERE value = ? ORDER BY id LIMIT 1"},
        {&st->str_insert, "INSERT INTO StringIds (value) VALUES (?)"},
    };
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
        if (prepare(p->db, all[i].sql, all[i].s) != 0) {
            snprintf(err, errlen, "profile database %s: cannot prepare a statement: %s", p->path,
                     sqlite3_errmsg(p->db));
            return -1;
        }
    return 0;
}

void prof_writer_finalize(Prof *p) {
    prof_gpu_writer_free(p);
    sqlite3_stmt **all = (sqlite3_stmt **)&p->st;
    for (size_t i = 0; i < sizeof(Statements) / sizeof(sqlite3_stmt *); i++) {
        sqlite3_finalize(all[i]);
        all[i] = NULL;
    }
}

/* Runs a statement whose parameters are bound; resets it. Returns 0 on SQLITE_DONE. */
static int run(sqlite3_stmt *s) {
    int rc = sqlite3_step(s);
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    return rc == SQLITE_DONE ? 0 : -1;
}

/* NULL for NaN / infinity ("unknown"). */
static void bind_real(sqlite3_stmt *s, int i, double v) {
    if (isfinite(v)) sqlite3_bind_double(s, i, v);
    else sqlite3_bind_null(s, i);
}

/* NULL for negative values ("unknown"). */
static void bind_count(sqlite3_stmt *s, int i, int64_t v) {
    if (v >= 0) sqlite3_bind_int64(s, i, v);
    else sqlite3_bind_null(s, i);
}

int64_t prof_intern_string(Prof *p, const char *s) {
    int64_t id = -1;
    sqlite3_bind_text(p->st.str_find, 1, s, -1, SQLITE_STATIC);
    if (sqlite3_step(p->st.str_find) == SQLITE_ROW) id = sqlite3_column_int64(p->st.str_find, 0);
    sqlite3_reset(p->st.str_find);
    sqlite3_clear_bindings(p->st.str_find);
    if (id >= 0) return id;
    sqlite3_bind_text(p->st.str_insert, 1, s, -1, SQLITE_STATIC);
    if (run(p->st.str_insert) != 0) return -1;
    return sqlite3_last_insert_rowid(p->db);
}

static uint32_t name_hash(const char *s) {
    uint32_t h = 2166136261u; /* FNV-1a */
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 16777619u;
    return h;
}

/* StringIds id of a free-text range name, through a small cache (writer thread only). */
static int64_t text_id(Prof *p, const char *name) {
    uint32_t h = name_hash(name);
    for (int probe = 0; probe < 8; probe++) {
        TextCacheEntry *e = &p->text_cache[(h + (uint32_t)probe) % PROF_TEXT_CACHE];
        if (e->id && strcmp(e->name, name) == 0) return e->id;
        if (!e->id) {
            int64_t id = prof_intern_string(p, name);
            if (id > 0) {
                prof_copy_name(e->name, sizeof(e->name), name);
                e->id = id;
            }
            return id;
        }
    }
    return prof_intern_string(p, name); /* cache crowded: ask the database */
}

static int write_range(Prof *p, const RangeRecord *r) {
    const char *name = r->phase >= 0 ? prof_phase_name((ProfPhase)r->phase) : r->text;
    int64_t id = r->phase >= 0 ? p->phase_string_id[r->phase] : text_id(p, r->text);
    if (id < 0) return -1;
    sqlite3_stmt *s = p->st.phase;
    sqlite3_bind_int64(s, 1, p->run_id);
    bind_count(s, 2, r->step);
    sqlite3_bind_int64(s, 3, id);
    sqlite3_bind_int64(s, 4, r->start_ns);
    sqlite3_bind_int64(s, 5, r->end_ns - r->start_ns);
    sqlite3_bind_int(s, 6, r->depth);
    sqlite3_bind_int64(s, 7, r->global_tid);
    if (run(s) != 0) return -1;
    s = p->st.nvtx;
    sqlite3_bind_int64(s, 1, r->start_ns);
    sqlite3_bind_int64(s, 2, r->end_ns);
    sqlite3_bind_int64(s, 3, prof_phase_color(r->phase));
    sqlite3_bind_text(s, 4, name, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 5, r->global_tid);
    sqlite3_bind_int64(s, 6, id);
    return run(s);
}

/* ThreadNames row for a thread (prof_thread_name): nsys's table, one row per (thread, name). */
static int write_thread(Prof *p, const RangeRecord *r) {
    int64_t id = text_id(p, r->text);
    if (id < 0) return -1;
    sqlite3_stmt *s = NULL;
    if (sqlite3_prepare_v2(p->db, "INSERT INTO ThreadNames SELECT ?1, 0, ?2 WHERE NOT EXISTS "
                                  "(SELECT 1 FROM ThreadNames WHERE globalTid = ?2 AND nameId = ?1)",
                           -1, &s, NULL) != SQLITE_OK)
        return -1;
    sqlite3_bind_int64(s, 1, id);
    sqlite3_bind_int64(s, 2, r->global_tid);
    int rc = sqlite3_step(s) == SQLITE_DONE ? 0 : -1;
    sqlite3_finalize(s);
    return rc;
}

/* Appends s as a JSON string (quotes, backslashes and control characters escaped). */
static size_t json_string(char *out, size_t cap, size_t at, const char *s) {
    if (at < cap) out[at++] = '"';
    for (; *s && at + 7 < cap; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') {
            out[at++] = '\\';
            out[at++] = (char)ch;
        } else if (ch < 0x20) {
            at += (size_t)snprintf(out + at, cap - at, "\\u%04x", ch);
        } else {
            out[at++] = (char)ch;
        }
    }
    if (at < cap) out[at++] = '"';
    return at;
}

/* {"loss_ce":0.5,...}: %.17g keeps every double exactly; NaN and infinity (not JSON) are null.
 * Returns the length, or 0 when there are no terms. */
static size_t losses_json(const ProfStepRecord *r, char *out, size_t cap) {
    if (r->n_losses <= 0) return 0;
    size_t at = 0;
    out[at++] = '{';
    for (int i = 0; i < r->n_losses && at + 64 < cap; i++) {
        if (i) out[at++] = ',';
        at = json_string(out, cap - 32, at, r->losses[i].name);
        out[at++] = ':';
        double v = r->losses[i].value;
        int n = isfinite(v) ? snprintf(out + at, cap - at, "%.17g", v)
                            : snprintf(out + at, cap - at, "null");
        at += (size_t)n;
    }
    out[at++] = '}';
    out[at] = 0;
    return at;
}

static int write_step(Prof *p, const ProfStepRecord *r) {
    sqlite3_stmt *s = p->st.step;
    int64_t wall = r->end_ns - r->start_ns;
    double wall_s = (double)wall * 1e-9;
    double ips = r->images > 0 && wall > 0 ? r->images / wall_s : NAN;
    double mfu = wall > 0 && p->peak_flops > 0 && isfinite(r->flops) && r->flops > 0
                     ? r->flops / wall_s / p->peak_flops : NAN;
    sqlite3_bind_int64(s, 1, p->run_id);
    sqlite3_bind_int64(s, 2, r->step);
    bind_count(s, 3, r->epoch);
    sqlite3_bind_int64(s, 4, r->start_ns);
    sqlite3_bind_int64(s, 5, r->end_ns);
    sqlite3_bind_int64(s, 6, wall);
    bind_count(s, 7, r->data_wait_ns);
    bind_count(s, 8, r->h2d_ns);
    if (r->images > 0) sqlite3_bind_int(s, 9, r->images);
    bind_real(s, 10, r->loss);
    bind_real(s, 11, r->lr);
    bind_real(s, 12, r->lr_backbone);
    bind_real(s, 13, r->grad_norm);
    bind_real(s, 14, ips);
    bind_real(s, 15, r->flops);
    bind_real(s, 16, mfu);
    bind_real(s, 17, r->padded_fraction);
    char json[PROF_MAX_LOSSES * (6 * PROF_NAME_LEN + 32) + 8]; /* every name fully escaped */
    size_t len = losses_json(r, json, sizeof(json));
    if (len) sqlite3_bind_text(s, 18, json, (int)len, SQLITE_STATIC);
    bind_real(s, 19, r->loss_scale);
    sqlite3_bind_int(s, 20, r->skipped ? 1 : 0);
    bind_real(s, 21, r->gpu_util);
    bind_real(s, 22, r->gpu_mem_util);
    bind_count(s, 23, r->gpu_alloc_retries);
    bind_count(s, 24, r->gpu_ooms);
    if (run(s) != 0) return -1;
    for (int i = 0; i < r->n_mem; i++) {
        s = p->st.mem;
        sqlite3_bind_int64(s, 1, p->run_id);
        sqlite3_bind_int64(s, 2, r->step);
        sqlite3_bind_int64(s, 3, r->end_ns);
        sqlite3_bind_text(s, 4, r->mem[i].category, -1, SQLITE_STATIC);
        bind_count(s, 5, r->mem[i].current_bytes);
        bind_count(s, 6, r->mem[i].peak_bytes);
        if (run(s) != 0) return -1;
    }
    return 0;
}

static int write_loader(Prof *p, const ProfLoaderRecord *r) {
    sqlite3_stmt *s = p->st.loader;
    sqlite3_bind_int64(s, 1, p->run_id);
    bind_count(s, 2, r->step);
    bind_count(s, 3, r->wait_ns);
    bind_count(s, 4, r->read_ns);
    bind_count(s, 5, r->decode_ns);
    bind_count(s, 6, r->augment_ns);
    bind_count(s, 7, r->collate_ns);
    bind_count(s, 8, r->bytes_read);
    bind_count(s, 9, r->queue_depth);
    bind_real(s, 10, r->padded_fraction);
    bind_count(s, 11, r->skipped);
    bind_count(s, 12, r->dropped_boxes);
    return run(s);
}

static int write_eval(Prof *p, const EvalCopy *e) {
    const ProfEvalRecord *r = &e->rec;
    sqlite3_stmt *s = p->st.eval;
    sqlite3_bind_int64(s, 1, p->run_id);
    bind_count(s, 2, r->epoch);
    bind_count(s, 3, r->step);
    sqlite3_bind_int64(s, 4, prof_now_ns());
    bind_count(s, 5, r->duration_ns);
    bind_count(s, 6, r->images);
    for (int i = 0; i < 12; i++) bind_real(s, 7 + i, r->stats[i]);
    if (run(s) != 0) return -1;
    int64_t eval_id = sqlite3_last_insert_rowid(p->db);
    for (int i = 0; i < r->n_categories; i++) {
        s = p->st.eval_cat;
        sqlite3_bind_int64(s, 1, eval_id);
        sqlite3_bind_int64(s, 2, p->run_id);
        sqlite3_bind_int64(s, 3, e->cats[i].category_id);
        bind_real(s, 4, e->cats[i].ap);
        if (run(s) != 0) return -1;
    }
    return 0;
}

static void bind_text_or_null(sqlite3_stmt *s, int i, const char *v) {
    if (v[0]) sqlite3_bind_text(s, i, v, -1, SQLITE_STATIC);
}

static int write_gpu(Prof *p, const ProfGpuInfo *g) {
    if (!p->gpu_table_ready) {
        if (prof_schema_create_gpu_table(p->db) != 0 ||
            prepare(p->db, prof_gpu_insert_sql, &p->st.gpu) != 0)
            return -1;
        p->gpu_table_ready = 1;
    }
    sqlite3_stmt *s = p->st.gpu;
    sqlite3_bind_int64(s, 1, p->run_id); /* vmId: the run (see docs/profile-schema.md) */
    sqlite3_bind_int64(s, 2, g->id);
    bind_text_or_null(s, 3, g->name);
    bind_text_or_null(s, 4, g->bus_location);
    bind_text_or_null(s, 5, g->uuid);
    bind_text_or_null(s, 6, g->chip_name);
    const int64_t nums[] = {g->total_memory, g->memory_bandwidth, g->clock_rate, g->sm_count,
                            g->l2_cache_size, g->compute_major, g->compute_minor,
                            g->compute_major, g->compute_minor, g->id, g->max_threads_per_block,
                            g->max_warps_per_sm, g->max_blocks_per_sm, g->max_registers_per_sm,
                            g->max_registers_per_block, g->max_shmem_per_sm, g->max_shmem_per_block,
                            g->max_shmem_per_block_optin, g->threads_per_warp, g->async_engines,
                            g->is_discrete};
    for (int i = 0; i < (int)(sizeof(nums) / sizeof(nums[0])); i++) bind_count(s, 7 + i, nums[i]);
    return run(s);
}

static int write_record(Prof *p, const Record *r) {
    switch (r->kind) {
    case REC_STEP: return write_step(p, r->u.step);
    case REC_RANGE: return write_range(p, &r->u.range);
    case REC_LOADER: return write_loader(p, &r->u.loader);
    case REC_EVAL: return write_eval(p, r->u.eval);
    case REC_GPU: return write_gpu(p, r->u.gpu);
    case REC_THREAD: return write_thread(p, &r->u.range);
    case REC_GPU_BATCH: return prof_gpu_write_batch(p, r->u.gpu_batch);
    }
    return -1;
}

int64_t prof_record_release(Record *r) {
    int64_t gpu_bytes = 0;
    if (r->kind == REC_STEP) free(r->u.step);
    if (r->kind == REC_EVAL) free(r->u.eval);
    if (r->kind == REC_GPU) free(r->u.gpu);
    if (r->kind == REC_GPU_BATCH) {
        gpu_bytes = prof_gpu_batch_bytes(r->u.gpu_batch);
        prof_gpu_batch_free(r->u.gpu_batch);
    }
    r->kind = REC_RANGE; /* nothing owned any more */
    return gpu_bytes;
}

static int write_counters(Prof *p, const ProfCounters *c, int64_t written) {
    sqlite3_stmt *s = p->st.counters;
    sqlite3_bind_int64(s, 1, written);
    sqlite3_bind_int64(s, 2, c->dropped);
    sqlite3_bind_int64(s, 3, c->dropped_steps);
    sqlite3_bind_int64(s, 4, c->dropped_ranges);
    sqlite3_bind_int64(s, 5, c->write_failed);
    sqlite3_bind_int64(s, 6, c->range_errors);
    sqlite3_bind_int64(s, 7, c->writer_cpu_ns);
    sqlite3_bind_int64(s, 8, c->dropped_gpu);
    sqlite3_bind_int64(s, 9, c->cupti_dropped);
    sqlite3_bind_int64(s, 10, p->run_id);
    return run(s);
}

/* Writes records [first, first + n) in one transaction, with the run's counters as they are
 * after it (so a killed run still shows what it wrote and dropped). Returns 0, or -1 with the
 * transaction rolled back and the reason in msg. */
static int write_batch(Prof *p, int64_t first, int64_t n, const ProfCounters *snap, char *msg,
                       size_t msglen) {
    if (run(p->st.begin) != 0) {
        snprintf(msg, msglen, "%s", sqlite3_errmsg(p->db));
        return -1;
    }
    int ok = 1;
    for (int64_t i = 0; i < n && ok; i++) ok = write_record(p, &p->slots[(first + i) % p->cap]) == 0;
    ProfCounters after = *snap;
    if (ok) ok = write_counters(p, &after, snap->written + n) == 0;
    if (ok) ok = run(p->st.commit) == 0;
    if (!ok) {
        snprintf(msg, msglen, "%s", sqlite3_errmsg(p->db));
        if (!sqlite3_get_autocommit(p->db)) run(p->st.rollback);
        /* interned strings of the rolled-back transaction are gone: forget their ids */
        memset(p->text_cache, 0, sizeof(p->text_cache));
        prof_gpu_writer_reset(p);
        return -1;
    }
    return 0;
}

static struct timespec deadline_after_ms(int ms) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    t.tv_sec += ms / 1000;
    t.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (t.tv_nsec >= 1000000000L) {
        t.tv_sec++;
        t.tv_nsec -= 1000000000L;
    }
    return t;
}

static int past(const struct timespec *t) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec > t->tv_sec || (now.tv_sec == t->tv_sec && now.tv_nsec >= t->tv_nsec);
}

static int64_t thread_cpu_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

void *prof_writer_main(void *arg) {
    Prof *p = arg;
    char msg[400];
    /* Below the training threads' priority (Linux nice is per thread): when every core is
     * busy, the scheduler runs the writer in the gaps instead of preempting a compute thread
     * (an OpenMP team waits for its slowest thread). It still gets its share, so it does not
     * starve; failure (no permission to change priority) is harmless. */
    setpriority(PRIO_PROCESS, (id_t)prof_thread_id(), 10);
    pthread_mutex_lock(&p->mu);
    struct timespec deadline = deadline_after_ms(p->opt.flush_interval_ms);
    for (;;) {
        while (!p->stop && p->head - p->tail < p->wake_at && !past(&deadline))
            pthread_cond_timedwait(&p->wake, &p->mu, &deadline);
        int64_t n = p->head - p->tail;
        if (n == 0) {
            if (p->stop) break;
            deadline = deadline_after_ms(p->opt.flush_interval_ms);
            continue;
        }
        if (n > MAX_BATCH) n = MAX_BATCH;
        int64_t first = p->tail;
        ProfCounters snap = p->c;
        snap.range_errors = atomic_load(&p->range_errors);
        pthread_mutex_unlock(&p->mu);

        int64_t cpu0 = thread_cpu_ns();
        int rc = write_batch(p, first, n, &snap, msg, sizeof(msg));
        int64_t gpu_bytes = 0;
        for (int64_t i = 0; i < n; i++) gpu_bytes += prof_record_release(&p->slots[(first + i) % p->cap]);
        int64_t cpu = thread_cpu_ns() - cpu0;

        pthread_mutex_lock(&p->mu);
        p->tail += n;
        p->gpu_pending_bytes -= gpu_bytes;
        p->c.writer_cpu_ns += cpu;
        if (rc == 0) {
            p->c.written += n;
        } else {
            p->c.write_failed += n;
            if (!p->writer_error[0])
                snprintf(p->writer_error, sizeof(p->writer_error), "%s", msg);
        }
        if (p->head - p->tail < p->wake_at) deadline = deadline_after_ms(p->opt.flush_interval_ms);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

int prof_writer_finish(Prof *p, int exit_code, int64_t end_ns, char *msg, size_t msglen) {
    const char *status = exit_code == 0 ? "ok" : "failed";
    if (exit_code == 130 || exit_code == 143) status = "interrupted"; /* SIGINT / SIGTERM */
    sqlite3_stmt *s = NULL;
    const char *sql =
        "UPDATE DETR_RUNS SET end_ns = ?1, status = ?2, exit_code = ?3, records_written = ?4, "
        "dropped_records = ?5, dropped_steps = ?6, dropped_ranges = ?7, write_failed_records = ?8, "
        "range_errors = ?9, writer_error = ?10, writer_cpu_ns = ?12, dropped_gpu_records = ?13, "
        "cupti_dropped_records = ?14 WHERE run_id = ?11";
    int rc = sqlite3_prepare_v2(p->db, sql, -1, &s, NULL);
    if (rc == SQLITE_OK) {
        sqlite3_bind_int64(s, 1, end_ns);
        sqlite3_bind_text(s, 2, status, -1, SQLITE_STATIC);
        sqlite3_bind_int(s, 3, exit_code);
        sqlite3_bind_int64(s, 4, p->c.written);
        sqlite3_bind_int64(s, 5, p->c.dropped);
        sqlite3_bind_int64(s, 6, p->c.dropped_steps);
        sqlite3_bind_int64(s, 7, p->c.dropped_ranges);
        sqlite3_bind_int64(s, 8, p->c.write_failed);
        sqlite3_bind_int64(s, 9, atomic_load(&p->range_errors));
        if (p->writer_error[0]) sqlite3_bind_text(s, 10, p->writer_error, -1, SQLITE_STATIC);
        sqlite3_bind_int64(s, 11, p->run_id);
        sqlite3_bind_int64(s, 12, p->c.writer_cpu_ns);
        sqlite3_bind_int64(s, 13, p->c.dropped_gpu);
        sqlite3_bind_int64(s, 14, p->c.cupti_dropped);
        rc = sqlite3_step(s) == SQLITE_DONE ? SQLITE_OK : SQLITE_ERROR;
    }
    sqlite3_finalize(s);
    if (rc == SQLITE_OK) {
        rc = sqlite3_prepare_v2(p->db, "UPDATE ANALYSIS_DETAILS SET stopTime = ?1, "
                                       "duration = ?1 - startTime WHERE globalVid = ?2",
                                -1, &s, NULL);
        if (rc == SQLITE_OK) {
            sqlite3_bind_int64(s, 1, end_ns);
            sqlite3_bind_int64(s, 2, p->run_id);
            rc = sqlite3_step(s) == SQLITE_DONE ? SQLITE_OK : SQLITE_ERROR;
        }
        sqlite3_finalize(s);
    }
    if (rc != SQLITE_OK) {
        snprintf(msg, msglen, "%s", sqlite3_errmsg(p->db));
        return -1;
    }
    return 0;
}
