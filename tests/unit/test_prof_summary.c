/* test_prof_summary.c - `detr-prof summary` and `detr-prof compare` end to end (binaries in
 * $DETR_BUILD, default build/), on databases written by short real `detr-train --profile` runs:
 * two runs of the same configuration made at the same time, and a slower one (128 px images:
 * 4x the pixels, and a ResNet-34 backbone) made beside a third run of the first configuration.
 *  - summary --json: every number equals the one computed here by SQL: steps recorded, warm-up
 *    (min(2, 10 %)), nearest-rank p50/p90/p99 of the measured steps' wall_ns, images/s, a leaf
 *    phase's mean ms per step, loader wait fraction and mean decode time, memory peaks, the last
 *    evaluation, dropped records, the header; the exclusive phase times add up to 100 % of the
 *    steps and none is negative; --warmup 0 measures every step;
 *  - the text output shows the same p50 and images/s, the header and the phase table;
 *  - compare of a run with itself: zero deltas, nothing flagged; two runs of the same
 *    configuration: images/s not flagged; the slower configuration: flagged "slower" (images/s,
 *    step p50 or mean), never "faster";
 *  - bad input (missing or non-profile database, unknown run, bad --warmup, one database for
 *    compare) exits 2 with a message; --help exits 0. */
#include <ftw.h>
#include <inttypes.h>
#include <math.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <jansson.h>
#include "check.h"
#include "test_util.h"

static char g_tmp[256];
static const char *g_build;
static char g_db[512], g_db_b[512], g_db_c[512], g_slow_db[512];

static int rm_entry(const char *p, const struct stat *s, int f, struct FTW *w) {
    (void)s, (void)f, (void)w;
    return remove(p);
}

static int prof(const char *args, char **out, char **err) {
    char cmd[4096];
    snprintf(cmd, sizeof(cmd), "%s/detr-prof %s", g_build, args);
    return run_capture(g_tmp, cmd, out, err);
}

/* Runs detr-prof ARGS and parses its stdout as JSON (NULL if it fails). */
static json_t *prof_json(const char *args, int *rc) {
    char *out, *err;
    *rc = prof(args, &out, &err);
    json_error_t je;
    json_t *j = json_loads(out, 0, &je);
    if (!j) printf("  (detr-prof %s: rc %d, not JSON: %s; stderr: %s)\n", args, *rc, je.text, err);
    free(out), free(err);
    return j;
}

static double sql_real(sqlite3 *db, const char *sql) {
    sqlite3_stmt *st;
    double v = NAN;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
        printf("  (SQL error: %s)\n", sqlite3_errmsg(db));
        return NAN;
    }
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL) v = sqlite3_column_double(st, 0);
    sqlite3_finalize(st);
    return v;
}

static double jnum(json_t *o, const char *path) {
    char buf[256];
    snprintf(buf, sizeof(buf), "%s", path);
    json_t *cur = o;
    for (char *tok = strtok(buf, "."); tok && cur; tok = strtok(NULL, ".")) cur = json_object_get(cur, tok);
    return cur && json_is_number(cur) ? json_number_value(cur) : NAN;
}

static int close_to(double a, double b) { return fabs(a - b) <= 1e-9 * fmax(1.0, fabs(b)); }

/* The measured steps of run 1: all but the first 2 by step number (the default warm-up of 20). */
#define MEASURED "(SELECT * FROM DETR_STEPS WHERE run_id = 1 AND step NOT IN " \
                 "(SELECT step FROM DETR_STEPS WHERE run_id = 1 ORDER BY step LIMIT 2))"

static double sql_percentile(sqlite3 *db, int p) {
    char sql[1024];
    snprintf(sql, sizeof(sql), "SELECT wall_ns FROM %s ORDER BY wall_ns LIMIT 1 OFFSET "
                               "((%d * (SELECT count(*) FROM %s) + 99) / 100 - 1)", MEASURED, p, MEASURED);
    return sql_real(db, sql);
}

static json_t *find_by(json_t *array, const char *key, const char *value) {
    size_t i;
    json_t *e;
    json_array_foreach(array, i, e) {
        const char *v = json_string_value(json_object_get(e, key));
        if (v && !strcmp(v, value)) return e;
    }
    return NULL;
}

static void test_summary_json(sqlite3 *db) {
    char args[1024];
    int rc;
    snprintf(args, sizeof(args), "summary %s --run 1 --json", g_db);
    json_t *j = prof_json(args, &rc);
    CHECK("summary --json: exit 0, valid JSON", rc == 0 && j, "rc %d", rc);
    if (!j) return;
    double n = sql_real(db, "SELECT count(*) FROM DETR_STEPS WHERE run_id = 1");
    CHECK("summary: steps recorded = DETR_STEPS rows, warm-up min(2, 10%) = 2, the rest measured",
          jnum(j, "steps.recorded") == n && n >= 20 && jnum(j, "steps.warmup") == 2 && jnum(j, "steps.measured") == n - 2,
          "recorded %.0f (SQL %.0f), warmup %.0f, measured %.0f", jnum(j, "steps.recorded"), n, jnum(j, "steps.warmup"),
          jnum(j, "steps.measured"));
    const int ps[] = {50, 90, 99};
    for (int i = 0; i < 3; i++) {
        char key[32], name[96];
        snprintf(key, sizeof(key), "steps.step_ms.p%d", ps[i]);
        double want = sql_percentile(db, ps[i]) / 1e6;
        snprintf(name, sizeof(name), "summary: step p%d = nearest-rank percentile of the measured wall_ns", ps[i]);
        CHECK(name, close_to(jnum(j, key), want), "%.6f vs SQL %.6f", jnum(j, key), want);
    }
    double ips = sql_real(db, "SELECT sum(images) * 1e9 / sum(wall_ns) FROM " MEASURED);
    CHECK("summary: images/s = sum(images) / sum(wall) of the measured steps", close_to(jnum(j, "steps.images_per_s"), ips),
          "%.6f vs SQL %.6f", jnum(j, "steps.images_per_s"), ips);
    CHECK("summary: images/s carries the run's own noise estimate", jnum(j, "steps.images_per_s_noise") > 0,
          "%.6f", jnum(j, "steps.images_per_s_noise"));
    /* backbone has no nested ranges at the basic level: exclusive = its duration */
    double bb = sql_real(db, "SELECT sum(p.duration_ns) / (SELECT count(*) FROM " MEASURED ") / 1e6 FROM DETR_PHASES p "
                             "JOIN StringIds n ON n.id = p.name_id JOIN " MEASURED " s ON p.start_ns BETWEEN s.start_ns "
                             "AND s.end_ns WHERE p.run_id = 1 AND n.value = 'backbone'");
    json_t *phases = json_object_get(j, "phases");
    json_t *jb = find_by(phases, "name", "backbone");
    CHECK("summary: backbone ms/step = its ranges inside the measured steps / steps", jb &&
          fabs(jnum(jb, "ms_per_step") - bb) < 1e-6 * bb, "%.6f vs SQL %.6f", jb ? jnum(jb, "ms_per_step") : NAN, bb);
    double pct = 0;
    int negative = 0;
    size_t i;
    json_t *e;
    json_array_foreach(phases, i, e) {
        pct += jnum(e, "pct_of_step");
        if (jnum(e, "ms_per_step") < 0) negative++;
    }
    double step_other = sql_real(db, "SELECT (SELECT sum(wall_ns) FROM " MEASURED ") - sum(p.duration_ns) FROM DETR_PHASES p "
                                     "JOIN " MEASURED " s ON p.start_ns BETWEEN s.start_ns AND s.end_ns "
                                     "WHERE p.run_id = 1 AND p.depth = 1");
    json_t *js = find_by(phases, "name", "step");
    CHECK("summary: exclusive phase times add up to 100 % of the steps, none negative; 'step' = wall minus its phases",
          fabs(pct - 100.0) < 1e-6 && negative == 0 && js &&
          fabs(jnum(js, "total_ms") - step_other / 1e6) < 1e-6 * fmax(1, step_other / 1e6),
          "sum %.6f %%, %d negative, step %.6f ms vs SQL %.6f", pct, negative, js ? jnum(js, "total_ms") : NAN,
          step_other / 1e6);
    double wait = sql_real(db, "SELECT 1.0 * sum(data_wait_ns) / sum(wall_ns) FROM " MEASURED);
    double decode = sql_real(db, "SELECT avg(decode_ns) / 1e6 FROM DETR_LOADER WHERE run_id = 1 AND step >= "
                                 "(SELECT min(step) FROM " MEASURED ")");
    CHECK("summary: loader wait fraction and mean decode ms per batch",
          close_to(jnum(j, "loader.wait_fraction"), wait) && close_to(jnum(j, "loader.mean_ms.decode"), decode),
          "wait %.9f vs %.9f, decode %.6f vs %.6f", jnum(j, "loader.wait_fraction"), wait,
          jnum(j, "loader.mean_ms.decode"), decode);
    sqlite3_stmt *st;
    sqlite3_prepare_v2(db, "SELECT category, max(peak_bytes) FROM DETR_MEMORY WHERE run_id = 1 GROUP BY 1", -1, &st, NULL);
    int cats = 0, bad = 0;
    while (sqlite3_step(st) == SQLITE_ROW) {
        json_t *m = find_by(json_object_get(j, "memory"), "category", (const char *)sqlite3_column_text(st, 0));
        cats++;
        if (!m || jnum(m, "peak_bytes") != sqlite3_column_double(st, 1)) bad++;
    }
    sqlite3_finalize(st);
    CHECK("summary: memory peak per category = max(peak_bytes)", cats >= 3 && bad == 0 &&
          json_array_size(json_object_get(j, "memory")) == (size_t)cats, "%d categories, %d wrong", cats, bad);
    double ap = sql_real(db, "SELECT ap FROM DETR_EVAL WHERE run_id = 1 ORDER BY eval_id DESC LIMIT 1");
    double ap50 = sql_real(db, "SELECT ap50 FROM DETR_EVAL WHERE run_id = 1 ORDER BY eval_id DESC LIMIT 1");
    double evals = sql_real(db, "SELECT count(*) FROM DETR_EVAL WHERE run_id = 1");
    CHECK("summary: the last evaluation's AP and AP50", evals >= 1 && jnum(j, "eval.evaluations") == evals &&
          close_to(jnum(j, "eval.ap"), ap) && close_to(jnum(j, "eval.ap50"), ap50), "%.0f evals, ap %.6f vs %.6f",
          evals, jnum(j, "eval.ap"), ap);
    CHECK("summary: record counts", jnum(j, "records.dropped") == sql_real(db, "SELECT dropped_records FROM DETR_RUNS "
          "WHERE run_id = 1") && jnum(j, "records.written") == sql_real(db, "SELECT records_written FROM DETR_RUNS WHERE "
          "run_id = 1"), "written %.0f", jnum(j, "records.written"));
    const char *status = json_string_value(json_object_get(json_object_get(j, "run"), "status"));
    const char *cmdline = json_string_value(json_object_get(json_object_get(j, "run"), "command_line"));
    CHECK("summary: run header (status, command line)", status && !strcmp(status, "ok") && cmdline &&
          strstr(cmdline, "detr-train"), "%s", status ? status : "null");
    json_decref(j);

    snprintf(args, sizeof(args), "summary %s --run 1 --json --warmup 0", g_db);
    j = prof_json(args, &rc);
    CHECK("summary --warmup 0: every step measured", j && jnum(j, "steps.measured") == n && jnum(j, "steps.warmup") == 0,
          "measured %.0f", j ? jnum(j, "steps.measured") : NAN);
    json_decref(j);
}

static void test_summary_text(sqlite3 *db) {
    char args[1024], *out, *err, want[128];
    snprintf(args, sizeof(args), "summary %s --run 1", g_db);
    int rc = prof(args, &out, &err);
    snprintf(want, sizeof(want), "p50 %.3f", sql_percentile(db, 50) / 1e6);
    char ips[64];
    snprintf(ips, sizeof(ips), "images/s  %.2f", sql_real(db, "SELECT sum(images) * 1e9 / sum(wall_ns) FROM " MEASURED));
    CHECK("summary (text): exit 0; p50 and images/s as computed by SQL", rc == 0 && strstr(out, want) &&
          strstr(out, ips), "rc %d, want '%s' and '%s' in:\n%s%s", rc, want, ips, out, err);
    CHECK("summary (text): header, warm-up note, phase, memory, loader, evaluation and records sections",
          strstr(out, "status    ok (exit 0)") && strstr(out, "first 2 left out as warm-up") &&
          strstr(out, "backbone") && strstr(out, "step (other)") && strstr(out, "memory peaks") &&
          strstr(out, "loader: wait fraction") && strstr(out, "evaluation (1 recorded): the last at epoch 0") &&
          strstr(out, "records: "),
          "%s", out);
    free(out), free(err);
}

/* Counts flagged metrics and finds one by name in compare --json output. */
static json_t *metric(json_t *j, const char *name) { return find_by(json_object_get(j, "metrics"), "metric", name); }

static const char *verdict(json_t *j, const char *name) {
    const char *v = json_string_value(json_object_get(metric(j, name), "verdict"));
    return v ? v : "(missing)";
}

/* The detr-train command of one run into db; extra: its options beyond the shared ones. */
static void train_cmd(char *cmd, size_t n, const char *db, const char *out_dir, const char *extra) {
    snprintf(cmd, n, "%s/detr-train --data %s/ds --threads 1 --workers 1 --batch 2 --epochs 1 "
             "--resize-choices 48,56,64 --crop 40,48 --val-size 64 --queries 5 --profile --db %s --out %s/%s %s",
             g_build, g_tmp, db, g_tmp, out_dir, extra);
}

/* Runs the shell command line cmd; prints its stderr when it fails. */
static int shell(const char *cmd) {
    char *out, *err, *quoted = malloc(strlen(cmd) + 16);
    sprintf(quoted, "sh -c '%s'", cmd);
    int rc = run_capture(g_tmp, quoted, &out, &err);
    if (rc != 0) printf("  (%s: rc %d: %s)\n", cmd, rc, err);
    free(quoted), free(out), free(err);
    return rc;
}

/* Two runs at the same time, one core each, so that both see the same load from whatever else
 * shares the machine: a within-run noise estimate cannot know about load that changes between
 * two runs made one after the other. */
static int make_pair(const char *db1, const char *dir1, const char *extra1, const char *db2, const char *dir2,
                     const char *extra2) {
    char a[1024], b[1024], both[2200];
    train_cmd(a, sizeof(a), db1, dir1, extra1);
    train_cmd(b, sizeof(b), db2, dir2, extra2);
    snprintf(both, sizeof(both), "%s & pid=$!; %s; r2=$?; wait $pid; r1=$?; test $r1 = 0 -a $r2 = 0", a, b);
    return shell(both);
}

/* Even a simultaneous pair can be disturbed on a busy 2-core machine (the scheduler may give one
 * run far less CPU for a second): the compare checks remake a pair that contradicts them, up to
 * PAIR_ATTEMPTS pairs in all, and fail only when every pair does. Fills db1/db2 with the new
 * files. */
#define PAIR_ATTEMPTS 3
#define SLOW_RUN "--scales 128 --max-size 128 --backbone resnet34 --steps 10 --eval-every 0"
static int remake_pair(const char *tag, int attempt, const char *extra1, const char *extra2, char *db1, char *db2,
                       size_t n, const char *why) {
    char dir1[64], dir2[64];
    printf("  (%s pair %d: %s; making another pair)\n", tag, attempt, why);
    snprintf(dir1, sizeof(dir1), "%s%d_a", tag, attempt);
    snprintf(dir2, sizeof(dir2), "%s%d_b", tag, attempt);
    snprintf(db1, n, "%s/%s.sqlite", g_tmp, dir1);
    snprintf(db2, n, "%s/%s.sqlite", g_tmp, dir2);
    return make_pair(db1, dir1, extra1, db2, dir2, extra2);
}

static void test_compare(void) {
    char args[1400];
    int rc;
    snprintf(args, sizeof(args), "compare %s %s --run-a 1 --run-b 1 --json", g_db, g_db);
    json_t *j = prof_json(args, &rc);
    CHECK("compare (itself): exit 0", rc == 0 && j, "rc %d", rc);
    if (j) {
        size_t i;
        json_t *m;
        int nonzero = 0, flagged = 0, rows = 0;
        json_array_foreach(json_object_get(j, "metrics"), i, m) {
            rows++;
            json_t *d = json_object_get(m, "delta");
            if (!json_is_null(d) && json_number_value(d) != 0) nonzero++;
            if (json_is_true(json_object_get(m, "flagged"))) flagged++;
        }
        CHECK("compare (itself): every delta 0, nothing flagged, images/s 'within noise'",
              rows >= 10 && nonzero == 0 && flagged == 0 && !strcmp(verdict(j, "images/s"), "within noise"),
              "%d rows, %d nonzero, %d flagged, images/s %s", rows, nonzero, flagged, verdict(j, "images/s"));
        json_decref(j);
    }
    /* the same configuration twice: images/s not flagged */
    char pa[600], pb[600], why[400] = "";
    snprintf(pa, sizeof(pa), "%s", g_db);
    snprintf(pb, sizeof(pb), "%s", g_db_b);
    int ok = 0;
    for (int attempt = 0; attempt < PAIR_ATTEMPTS && !ok; attempt++) {
        if (attempt > 0 && remake_pair("same", attempt, "--scales 64 --max-size 64", "--scales 64 --max-size 64",
                                       pa, pb, sizeof(pa), why) != 0)
            break;
        snprintf(args, sizeof(args), "compare %s %s --json", pa, pb);
        j = prof_json(args, &rc);
        json_t *m = j ? metric(j, "images/s") : NULL;
        ok = rc == 0 && m && !json_is_true(json_object_get(m, "flagged"));
        snprintf(why, sizeof(why), "rc %d: A %.2f B %.2f images/s, threshold %.2f: %s", rc, jnum(m, "a"), jnum(m, "b"),
                 jnum(m, "threshold"), j ? verdict(j, "images/s") : "no JSON");
        json_decref(j);
    }
    CHECK("compare (same configuration twice): images/s not flagged", ok, "every pair flagged; last %s", why);
    /* the slower configuration: flagged slower (images/s, step p50 or mean), never faster */
    snprintf(pa, sizeof(pa), "%s", g_db_c);
    snprintf(pb, sizeof(pb), "%s", g_slow_db);
    ok = 0;
    for (int attempt = 0; attempt < PAIR_ATTEMPTS && !ok; attempt++) {
        if (attempt > 0 && remake_pair("slow", attempt, "--scales 64 --max-size 64 --eval-every 0", SLOW_RUN, pa, pb,
                                       sizeof(pa), why) != 0)
            break;
        snprintf(args, sizeof(args), "compare %s %s --json", pa, pb);
        j = prof_json(args, &rc);
        int slower = j && (!strcmp(verdict(j, "images/s"), "slower") + !strcmp(verdict(j, "step p50"), "slower") +
                           !strcmp(verdict(j, "step mean"), "slower"));
        int faster = j && (!strcmp(verdict(j, "images/s"), "faster") + !strcmp(verdict(j, "step p50"), "faster"));
        ok = rc == 0 && slower && !faster;
        snprintf(why, sizeof(why), "rc %d: images/s %s (A %.2f B %.2f threshold %.2f), p50 %s, mean %s", rc,
                 j ? verdict(j, "images/s") : "no JSON", jnum(metric(j, "images/s"), "a"),
                 jnum(metric(j, "images/s"), "b"), jnum(metric(j, "images/s"), "threshold"),
                 j ? verdict(j, "step p50") : "-", j ? verdict(j, "step mean") : "-");
        json_decref(j);
    }
    CHECK("compare (128 px, ResNet-34): flagged slower, never faster", ok, "every pair failed; last %s", why);
    char *out, *err;
    snprintf(args, sizeof(args), "compare %s %s", pa, pb);
    rc = prof(args, &out, &err);
    CHECK("compare (text): the table, a '** slower' flag and the rule", rc == 0 && strstr(out, "images/s") &&
          strstr(out, "** slower") && strstr(out, "threshold = max(3 x sqrt"), "rc %d:\n%s%s", rc, out, err);
    free(out), free(err);
}

static void test_bad_input(void) {
    char args[1400], *out, *err, other[600];
    int rc = prof("summary /nonexistent/p.sqlite", &out, &err);
    CHECK("bad: summary of a missing database -> exit 2 naming it", rc == 2 && strstr(err, "/nonexistent/p.sqlite"),
          "rc %d: %s", rc, err);
    free(out), free(err);
    snprintf(other, sizeof(other), "%s/other.sqlite", g_tmp);
    sqlite3 *db;
    sqlite3_open(other, &db);
    sqlite3_exec(db, "CREATE TABLE t (x)", NULL, NULL, NULL);
    sqlite3_close(db);
    snprintf(args, sizeof(args), "summary %s", other);
    rc = prof(args, &out, &err);
    CHECK("bad: summary of a non-profile SQLite file -> exit 2", rc == 2 && strstr(err, "not a detr-train profile"),
          "rc %d: %s", rc, err);
    free(out), free(err);
    snprintf(args, sizeof(args), "summary %s --run 99", g_db);
    rc = prof(args, &out, &err);
    CHECK("bad: summary --run 99 -> exit 2", rc == 2 && strstr(err, "no run 99"), "rc %d: %s", rc, err);
    free(out), free(err);
    snprintf(args, sizeof(args), "summary %s --warmup many", g_db);
    rc = prof(args, &out, &err);
    CHECK("bad: summary --warmup many -> exit 2", rc == 2 && strstr(err, "--warmup"), "rc %d: %s", rc, err);
    free(out), free(err);
    snprintf(args, sizeof(args), "compare %s", g_db);
    rc = prof(args, &out, &err);
    CHECK("bad: compare with one database -> exit 2", rc == 2 && strstr(err, "two databases"), "rc %d: %s", rc, err);
    free(out), free(err);
    snprintf(args, sizeof(args), "compare %s /nonexistent/b.sqlite", g_db);
    rc = prof(args, &out, &err);
    CHECK("bad: compare with a missing second database -> exit 2", rc == 2 && strstr(err, "/nonexistent/b.sqlite"),
          "rc %d: %s", rc, err);
    free(out), free(err);
    rc = prof("summary --help", &out, &err);
    int summary_usage = strstr(out, "usage: detr-prof summary") != NULL;
    free(out), free(err);
    int rc2 = prof("compare --help", &out, &err);
    CHECK("help: summary and compare answer --help", rc == 0 && rc2 == 0 && summary_usage &&
          strstr(out, "usage: detr-prof compare"),
          "rc %d %d", rc, rc2);
    free(out), free(err);
}

int main(void) {
    g_build = getenv("DETR_BUILD") ? getenv("DETR_BUILD") : "build";
    char bin[512];
    snprintf(bin, sizeof(bin), "%s/detr-prof", g_build);
    if (access(bin, X_OK) != 0) {
        CHECK("detr-prof is built", 0, "%s missing (set DETR_BUILD to the build folder)", bin);
        return test_finish();
    }
    snprintf(g_tmp, sizeof(g_tmp), "/tmp/test_prof_summary_XXXXXX");
    if (!mkdtemp(g_tmp)) {
        perror("mkdtemp");
        return 1;
    }
    char cmd[2048], *out, *err;
    snprintf(cmd, sizeof(cmd), "%s/detr-data synth %s/ds --images 40 --val 4 --size 64x64 --classes 3 --max-objects 2",
             g_build, g_tmp);
    int rc = run_capture(g_tmp, cmd, &out, &err);
    free(out), free(err);
    snprintf(g_db, sizeof(g_db), "%s/a.sqlite", g_tmp);
    snprintf(g_db_b, sizeof(g_db_b), "%s/b.sqlite", g_tmp);
    snprintf(g_db_c, sizeof(g_db_c), "%s/c.sqlite", g_tmp);
    snprintf(g_slow_db, sizeof(g_slow_db), "%s/slow.sqlite", g_tmp);
    /* A and B: the same configuration (20 steps), made at the same time; then C, the same
     * configuration again, beside the slow one: 128 px images (4x the pixels) and a ResNet-34
     * backbone, about 3x the time per step (10 steps). */
    const char *base = "--scales 64 --max-size 64";
    int ok = rc == 0 && make_pair(g_db, "a", base, g_db_b, "b", base) == 0 &&
             make_pair(g_db_c, "c", "--scales 64 --max-size 64 --eval-every 0", g_slow_db, "slow", SLOW_RUN) == 0;
    CHECK("setup: four profiled detr-train runs", ok, "see above");
    sqlite3 *db = NULL;
    if (ok && sqlite3_open_v2(g_db, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK) {
        test_summary_json(db);
        test_summary_text(db);
        test_compare();
        test_bad_input();
    }
    sqlite3_close(db);
    nftw(g_tmp, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return test_finish();
}
