/* test_prof_sweep.c - detr-prof sweep end to end on the CPU: a tiny synthetic dataset and model,
 * --mem-limit playing the device memory. Checks trial statuses (ok / oom / error / timeout),
 * the auto search's answer against the per-batch peaks it measured, the recommendation and the
 * --target-batch choice, the database rows and their run links, reuse and --fresh, SIGINT, bad
 * usage; and the recommendation rules on hand-made trials (loader-wait warning, margin). */
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "check.h"
#include "prof_sweep_internal.h"
#include "test_util.h"

static const char *g_build;
static char g_dir[256], g_data[400], g_opts[1024];

#define LIMIT_MIB 200 /* batch 8 ran within it on the tiny model, batch 16 did not (measured) */
#define MARGIN 0.05

static int64_t query_i64(sqlite3 *db, const char *sql) {
    sqlite3_stmt *s;
    int64_t v = -1;
    if (sqlite3_prepare_v2(db, sql, -1, &s, NULL) != SQLITE_OK) return -2;
    if (sqlite3_step(s) == SQLITE_ROW && sqlite3_column_type(s, 0) != SQLITE_NULL) v = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    return v;
}

static char *query_text(sqlite3 *db, const char *sql) {
    sqlite3_stmt *s;
    char *v = NULL;
    if (sqlite3_prepare_v2(db, sql, -1, &s, NULL) != SQLITE_OK) return NULL;
    if (sqlite3_step(s) == SQLITE_ROW && sqlite3_column_text(s, 0)) v = strdup((const char *)sqlite3_column_text(s, 0));
    sqlite3_finalize(s);
    return v;
}

static int sweep(const char *args, const char *train_extra, char **out, char **err) {
    char cmd[4096];
    snprintf(cmd, sizeof(cmd), "%s/detr-prof sweep %s -- %s %s", g_build, args, g_opts, train_extra);
    return run_capture(g_dir, cmd, out, err);
}

typedef struct {
    int batch;
    char status[8];
    int64_t peak, run_id, reused_from, recommended, trial_id;
    double ips;
    int metrics_null;
} Row;

static int load_trials(sqlite3 *db, int64_t sweep_id, Row *rows, int max) {
    sqlite3_stmt *s;
    sqlite3_prepare_v2(db, "SELECT batch, status, peak_bytes, run_id, reused_from, recommended, trial_id, "
                       "images_per_s, (images_per_s IS NULL) + (step_p50_ns IS NULL) + (step_p90_ns IS NULL) + "
                       "(step_p99_ns IS NULL) + (peak_bytes IS NULL) + (peak_json IS NULL) + "
                       "(loader_wait_fraction IS NULL) + (mfu IS NULL) + (padded_fraction IS NULL) "
                       "FROM DETR_SWEEP_TRIALS WHERE sweep_id = ? ORDER BY trial_id", -1, &s, NULL);
    sqlite3_bind_int64(s, 1, sweep_id);
    int n = 0;
    while (n < max && sqlite3_step(s) == SQLITE_ROW) {
        Row *r = &rows[n++];
        r->batch = sqlite3_column_int(s, 0);
        snprintf(r->status, sizeof(r->status), "%s", (const char *)sqlite3_column_text(s, 1));
        r->peak = sqlite3_column_type(s, 2) == SQLITE_NULL ? -1 : sqlite3_column_int64(s, 2);
        r->run_id = sqlite3_column_type(s, 3) == SQLITE_NULL ? -1 : sqlite3_column_int64(s, 3);
        r->reused_from = sqlite3_column_type(s, 4) == SQLITE_NULL ? -1 : sqlite3_column_int64(s, 4);
        r->recommended = sqlite3_column_int64(s, 5);
        r->trial_id = sqlite3_column_int64(s, 6);
        r->ips = sqlite3_column_type(s, 7) == SQLITE_NULL ? NAN : sqlite3_column_double(s, 7);
        r->metrics_null = sqlite3_column_int(s, 8);
    }
    sqlite3_finalize(s);
    return n;
}

static const Row *find_batch(const Row *rows, int n, int batch) {
    for (int i = 0; i < n; i++)
        if (rows[i].batch == batch) return &rows[i];
    return NULL;
}

static int within(const Row *r) {
    return r && !strcmp(r->status, "ok") && r->peak >= 0 && r->peak <= (1 - MARGIN) * LIMIT_MIB * 1048576.0;
}

/* --batch auto with --mem-limit: doubling, bisection, margin, target, rows; then reuse. */
static void test_auto_search(void) {
    char db_path[512], args[1024], extra[64], *out, *err;
    snprintf(db_path, sizeof(db_path), "%s/auto.sqlite", g_dir);
    snprintf(args, sizeof(args), "--batch auto --steps 2 --warmup 1 --target-batch 16 --db %s", db_path);
    snprintf(extra, sizeof(extra), "--mem-limit %dM", LIMIT_MIB);
    int rc = sweep(args, extra, &out, &err);
    CHECK("auto: exit 0", rc == 0, "rc %d\nstdout:\n%s\nstderr:\n%s", rc, out, err);
    CHECK("auto: progress lines and table", strstr(out, "[1 auto-double] batch 1") && strstr(out, "rank") &&
          strstr(out, "recommendation: batch") && strstr(out, "learning rate"), "%s", out);
    sqlite3 *db;
    sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READONLY, NULL);
    Row rows[64];
    int n = load_trials(db, 1, rows, 64);
    const Row *b1 = find_batch(rows, n, 1), *b16 = find_batch(rows, n, 16);
    CHECK("auto: batch 1 ok, batch 16 oom", b1 && !strcmp(b1->status, "ok") && b16 && !strcmp(b16->status, "oom"),
          "b1 %s b16 %s", b1 ? b1->status : "-", b16 ? b16->status : "-");
    int bad_rows = 0, ok_rows = 0;
    for (int i = 0; i < n; i++) {
        if (strcmp(rows[i].status, "ok")) continue;
        ok_rows++;
        char sql[160];
        snprintf(sql, sizeof(sql), "SELECT count(*) FROM DETR_RUNS WHERE run_id = %lld AND status = 'ok'",
                 (long long)rows[i].run_id);
        if (rows[i].metrics_null || query_i64(db, sql) != 1) bad_rows++;
    }
    CHECK("auto: ok trials link to their ok run and have every metric", ok_rows >= 3 && bad_rows == 0,
          "%d ok trials, %d with a NULL metric or a bad run_id", ok_rows, bad_rows);
    CHECK("auto: oom trials have no run (refused at start) and a message",
          query_i64(db, "SELECT count(*) FROM DETR_SWEEP_TRIALS WHERE status = 'oom' AND (message IS NULL OR "
                        "message NOT LIKE '%does not fit --mem-limit%')") == 0, "see the trials' messages");

    char *rec_text = query_text(db, "SELECT recommendation_json FROM DETR_SWEEPS WHERE sweep_id = 1");
    json_t *rec = rec_text ? json_loads(rec_text, 0, NULL) : NULL;
    json_t *au = json_array_get(json_object_get(rec, "auto"), 0);
    int fit = (int)json_integer_value(json_object_get(au, "largest_fitting"));
    int answer = (int)json_integer_value(json_object_get(au, "largest_within_margin"));
    const Row *rf = find_batch(rows, n, fit), *rf1 = find_batch(rows, n, fit + 1);
    CHECK("auto: largest fitting batch ran ok and the next batch was tried and failed",
          fit >= 1 && rf && !strcmp(rf->status, "ok") && rf1 && strcmp(rf1->status, "ok"), "fit %d", fit);
    const Row *ra = find_batch(rows, n, answer), *ra1 = find_batch(rows, n, answer + 1);
    CHECK("auto: the answer fits within the margin, answer + 1 failed or exceeded it",
          answer >= 1 && within(ra) && ra1 && !within(ra1), "answer %d (fit %d)", answer, fit);
    int larger_within = 0;
    for (int i = 0; i < n; i++) larger_within |= rows[i].batch > answer && within(&rows[i]);
    CHECK("auto: no larger batch fits within the margin", !larger_within, "answer %d", answer);
    /* the fastest trial within the margin is the recommendation, and only it is marked */
    const Row *best = NULL;
    int marked = 0;
    for (int i = 0; i < n; i++) {
        if (within(&rows[i]) && (!best || rows[i].ips > best->ips)) best = &rows[i];
        marked += rows[i].recommended != 0;
    }
    json_t *fastest = json_object_get(rec, "fastest");
    CHECK("auto: recommendation = fastest trial within the margin, marked recommended",
          best && marked == 1 && best->recommended && json_integer_value(json_object_get(fastest, "trial_id")) ==
          best->trial_id, "best %lld, marked %d", best ? (long long)best->trial_id : -1LL, marked);
    json_t *target = json_object_get(rec, "target");
    int tb = (int)json_integer_value(json_object_get(target, "batch"));
    int ta = (int)json_integer_value(json_object_get(target, "accum"));
    CHECK("auto: --target-batch 16 = a fitting batch x accum", tb * ta == 16 && within(find_batch(rows, n, tb)),
          "target %d x %d", tb, ta);
    CHECK("auto: sweep row done, with limit and margin",
          query_i64(db, "SELECT count(*) FROM DETR_SWEEPS WHERE sweep_id = 1 AND status = 'done' AND "
                        "mem_limit_bytes = 209715200 AND abs(margin - 0.05) < 1e-9 AND target_batch = 16 AND "
                        "end_ns >= start_ns") == 1, "DETR_SWEEPS row");
    int64_t runs_before = query_i64(db, "SELECT count(*) FROM DETR_RUNS");
    json_decref(rec);
    free(rec_text);
    free(out);
    free(err);

    /* the same sweep again: every trial reused, no child run */
    rc = sweep(args, extra, &out, &err);
    Row again[64];
    int n2 = load_trials(db, 2, again, 64), reused = 0;
    for (int i = 0; i < n2; i++) reused += again[i].reused_from > 0;
    CHECK("reuse: second sweep runs no child, every trial reused", rc == 0 && n2 == n && reused == n2 &&
          query_i64(db, "SELECT count(*) FROM DETR_RUNS") == runs_before, "rc %d, %d/%d reused, runs %lld -> %lld\n%s%s",
          rc, reused, n2, (long long)runs_before, (long long)query_i64(db, "SELECT count(*) FROM DETR_RUNS"), out, err);
    free(out);
    free(err);

    /* --fresh: runs again */
    snprintf(args, sizeof(args), "--batch 1 --steps 2 --warmup 1 --fresh --db %s", db_path);
    rc = sweep(args, extra, &out, &err);
    CHECK("fresh: --fresh runs the trial again", rc == 0 && query_i64(db, "SELECT count(*) FROM DETR_RUNS") ==
          runs_before + 1 && query_i64(db, "SELECT reused_from IS NULL AND run_id IS NOT NULL FROM "
                                          "DETR_SWEEP_TRIALS WHERE sweep_id = 3") == 1, "rc %d\n%s%s", rc, out, err);
    free(out);
    free(err);
    sqlite3_close(db);
}

/* A grid with accumulation: --target-batch finds the exact (batch, accum); an invalid detr-train
 * option gives status error with detr-train's message; a hung trial times out. */
static void test_grid_error_timeout(void) {
    char db_path[512], args[1024], *out, *err;
    snprintf(db_path, sizeof(db_path), "%s/grid.sqlite", g_dir);
    snprintf(args, sizeof(args), "--batch 2,4 --accum 1,2 --steps 2 --warmup 1 --target-batch 8 --db %s", db_path);
    int rc = sweep(args, "", &out, &err);
    CHECK("grid: exit 0, 4 trials", rc == 0 && strstr(out, "[4/4]"), "rc %d\n%s%s", rc, out, err);
    sqlite3 *db;
    sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READONLY, NULL);
    CHECK("grid: 4 ok trials with their accum",
          query_i64(db, "SELECT count(*) FROM DETR_SWEEP_TRIALS WHERE status = 'ok' AND phase = 'grid'") == 4 &&
          query_i64(db, "SELECT count(DISTINCT batch * 10 + accum) FROM DETR_SWEEP_TRIALS") == 4, "rows");
    char *target = query_text(db, "SELECT json_extract(recommendation_json, '$.target.batch') || 'x' || "
                                  "json_extract(recommendation_json, '$.target.accum') || ' ' || "
                                  "json_extract(recommendation_json, '$.target.measured_with_accum') FROM DETR_SWEEPS");
    CHECK("grid: --target-batch 8 = batch 4 x accum 2, measured", target && !strcmp(target, "4x2 1"), "%s",
          target ? target : "(null)");
    free(target);
    sqlite3_close(db);
    free(out);
    free(err);

    snprintf(args, sizeof(args), "--batch 2 --steps 1 --warmup 0 --db %s", db_path);
    rc = sweep(args, "--no-such-option 3", &out, &err);
    sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READONLY, NULL);
    char *msg = query_text(db, "SELECT status || ' ' || exit_code || ' ' || message FROM DETR_SWEEP_TRIALS "
                               "ORDER BY trial_id DESC LIMIT 1");
    CHECK("error: invalid detr-train option -> status error, exit code 2, its message",
          rc == 1 && msg && !strncmp(msg, "error 2 ", 8) && strstr(msg, "no-such-option") &&
          strstr(out, "no trial ran ok"), "rc %d, row: %s\n%s", rc, msg ? msg : "(none)", out);
    free(msg);
    sqlite3_close(db);
    free(out);
    free(err);

    snprintf(args, sizeof(args), "--batch 1 --steps 100000 --warmup 0 --timeout 2 --db %s", db_path);
    time_t t0 = time(NULL);
    rc = sweep(args, "", &out, &err);
    long took = (long)(time(NULL) - t0);
    sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READONLY, NULL);
    msg = query_text(db, "SELECT status || ' ' || message FROM DETR_SWEEP_TRIALS ORDER BY trial_id DESC LIMIT 1");
    CHECK("timeout: the trial is killed after --timeout and marked timeout",
          msg && !strncmp(msg, "timeout ", 8) && strstr(msg, "--timeout 2") && took < 15, "%s (took %ld s)",
          msg ? msg : "(none)", took);
    CHECK("timeout: the killed child closed its run (SIGTERM to its process group)",
          query_i64(db, "SELECT count(*) FROM DETR_RUNS WHERE run_id = (SELECT max(run_id) FROM DETR_RUNS) AND "
                        "status = 'interrupted'") == 1, "last run's status");
    free(msg);
    sqlite3_close(db);
    free(out);
    free(err);
}

/* SIGINT on the sweep: the current child is killed, the sweep is marked interrupted, exit 130. */
static void test_interrupt(void) {
    char db_path[512], steps_opt[] = "--steps", steps[] = "100000";
    snprintf(db_path, sizeof(db_path), "%s/int.sqlite", g_dir);
    char prog[512], log[600];
    snprintf(prog, sizeof(prog), "%s/detr-prof", g_build);
    snprintf(log, sizeof(log), "%s/int.log", g_dir);
    pid_t pid = fork();
    if (pid == 0) {
        if (!freopen(log, "w", stdout) || !freopen(log, "a", stderr)) _exit(126);
        char *argv[64] = {prog, "sweep", "--batch", "1,2", steps_opt, steps, "--db", db_path, "--"};
        int k = 9;
        char *copy = strdup(g_opts);
        for (char *tok = strtok(copy, " "); tok && k < 62; tok = strtok(NULL, " ")) argv[k++] = tok;
        argv[k] = NULL;
        execv(prog, argv);
        _exit(127);
    }
    sleep(4);
    kill(pid, SIGINT);
    int status = 0;
    waitpid(pid, &status, 0);
    sqlite3 *db;
    sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READONLY, NULL);
    CHECK("interrupt: exit 130, sweep marked interrupted, no trial row for the killed child",
          WIFEXITED(status) && WEXITSTATUS(status) == 130 &&
          query_i64(db, "SELECT count(*) FROM DETR_SWEEPS WHERE status = 'interrupted'") == 1 &&
          query_i64(db, "SELECT count(*) FROM DETR_SWEEP_TRIALS") == 0, "status %d", status);
    CHECK("interrupt: the child was stopped (its run closed as interrupted)",
          query_i64(db, "SELECT count(*) FROM DETR_RUNS WHERE status = 'running'") == 0, "a run still 'running'");
    sqlite3_close(db);
}

static void test_bad_usage(void) {
    struct {
        const char *args, *extra, *expect;
        int rc;
    } cases[] = {
        {"--batch 0", "", "integer >= 1", 2},
        {"--batch 1,,2", "", "not an integer", 2},
        {"--batch ''", "", "empty list", 2},
        {"--amp off,fp8", "", "not one of off, bf16, fp16", 2},
        {"--margin 1.5", "", "--margin", 2},
        {"--batch 2", "--batch 4", "the sweep sets --batch", 2},
        {"--batch 2", "--mem-limit lots", "not a size", 2},
        {"--batch 2 --db /proc/no/such/dir/x.sqlite", "", "HINT: choose a writable path with --db", 1},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *out, *err, name[128];
        int rc = sweep(cases[i].args, cases[i].extra, &out, &err);
        snprintf(name, sizeof(name), "usage: %s -- %s", cases[i].args, cases[i].extra);
        CHECK(name, rc == cases[i].rc && strstr(err, cases[i].expect), "rc %d, stderr: %s", rc, err);
        free(out);
        free(err);
    }
    char cmd[1024], *out, *err;
    snprintf(cmd, sizeof(cmd), "env DETR_TRAIN=%s/nope %s/detr-prof sweep --batch 1 --db %s/x.sqlite", g_dir, g_build,
             g_dir);
    int rc = run_capture(g_dir, cmd, &out, &err);
    CHECK("usage: detr-train not found", rc == 2 && strstr(err, "detr-train not found"), "rc %d %s", rc, err);
    free(out);
    free(err);
    snprintf(cmd, sizeof(cmd), "%s/detr-prof sweep --help", g_build);
    rc = run_capture(g_dir, cmd, &out, &err);
    CHECK("usage: --help", rc == 0 && strstr(out, "--target-batch") && strstr(out, "oom"), "rc %d", rc);
    free(out);
    free(err);
}

static SweepTrial fake(int64_t id, int batch, int accum, int workers, double ips, double wait, int64_t peak) {
    SweepTrial t;
    memset(&t, 0, sizeof(t));
    t.trial_id = id, t.batch = batch, t.accum = accum, t.workers = workers;
    snprintf(t.amp, sizeof(t.amp), "off");
    snprintf(t.status, sizeof(t.status), "ok");
    t.images_per_s = ips, t.loader_wait_fraction = wait, t.peak_bytes = peak;
    return t;
}

/* The rules on hand-made trials: margin, loader-wait warning with the fixing worker count,
 * target measured with another accum. */
static void test_recommend_rules(void) {
    const int64_t MiB = 1048576;
    SweepTrial tr[] = {
        fake(1, 4, 1, 1, 50, 0.40, 150 * MiB), /* loader-bound with 1 worker */
        fake(2, 4, 1, 4, 90, 0.02, 150 * MiB), /* 4 workers fix it */
        fake(3, 8, 1, 4, 120, 0.01, 198 * MiB), /* fastest, but above 95% of 200 MiB */
    };
    SweepRecContext c = {.mem_limit = 200 * MiB, .margin = 0.05, .target_batch = 16, .workers_swept = 1};
    int best = -1;
    char *text = sweep_recommend(tr, 3, &c, &best);
    json_t *rec = json_loads(text, 0, NULL);
    CHECK("rules: over-margin trial not recommended", best == 1 &&
          json_integer_value(json_object_get(json_object_get(rec, "fastest"), "trial_id")) == 2, "%s", text);
    const char *w = json_string_value(json_array_get(json_object_get(rec, "warnings"), 0));
    CHECK("rules: loader-wait warning names the worker count that fixed it",
          w && strstr(w, "workers 1") && strstr(w, "--workers 4 fixed it"), "%s", text);
    json_t *t = json_object_get(rec, "target");
    CHECK("rules: target not run with that accum says so",
          json_integer_value(json_object_get(t, "batch")) == 4 && json_integer_value(json_object_get(t, "accum")) == 4 &&
          json_is_false(json_object_get(t, "measured_with_accum")) &&
          strstr(json_string_value(json_object_get(t, "note")), "not run with --accum 4"), "%s", text);
    json_decref(rec);
    free(text);
}

int main(void) {
    g_build = getenv("DETR_BUILD") ? getenv("DETR_BUILD") : "build";
    char cwd[1024];
    if (g_build[0] != '/' && getcwd(cwd, sizeof(cwd))) { /* run_capture runs from anywhere */
        static char abs_build[1200];
        snprintf(abs_build, sizeof(abs_build), "%s/%s", cwd, g_build);
        g_build = abs_build;
    }
    unsetenv("DETR_TRAIN");
    snprintf(g_dir, sizeof(g_dir), "/tmp/test_prof_sweep-XXXXXX");
    if (!mkdtemp(g_dir)) {
        test_case("tmpdir", 0, "mkdtemp failed");
        return test_finish();
    }
    test_recommend_rules();
    snprintf(g_data, sizeof(g_data), "%s/ds", g_dir);
    char cmd[2048], *out, *err;
    snprintf(cmd, sizeof(cmd), "%s/detr-data synth %s --images 32 --val 8 --size 64x64 --classes 3 --max-objects 2",
             g_build, g_data);
    int rc = run_capture(g_dir, cmd, &out, &err);
    CHECK("setup: synthetic dataset", rc == 0, "rc %d %s", rc, err);
    free(out);
    free(err);
    if (rc != 0) return test_finish();
    snprintf(g_opts, sizeof(g_opts), "--data %s --hidden 32 --queries 5 --enc-layers 1 --dec-layers 1 --threads 1 "
             "--scales 64 --max-size 64 --resize-choices 48,56,64 --crop 40,48", g_data);
    test_bad_usage();
    test_auto_search();
    test_grid_error_timeout();
    test_interrupt();
    snprintf(cmd, sizeof(cmd), "rm -rf %s", g_dir);
    if (system(cmd) != 0) printf("note: could not remove %s\n", g_dir);
    return test_finish();
}
