/* test_gpu_trace_verdict: the `trace` step of scripts/gpu_check.sh, without a GPU. A CPU run of
 * detr-train --profile=trace with gpu_check.sh's --trace-steps schedule is turned into what the
 * same run on a GPU would write (tests/ref/fake_gpu_profile.py: synthetic CUPTI rows; the steps
 * it records come from the trainer's schedule code, profiler/prof_schedule.c). The verdict,
 * scripts/gpu_trace_verdict.py, must PASS that database with every check run, and FAIL each
 * planted defect naming exactly the checks the defect breaks. Skips without /usr/bin/python3. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "../../profiler/prof_schedule.h"
#include "check.h"
#include "test_util.h"

#define PY "/usr/bin/python3"
#define VERDICT "scripts/gpu_trace_verdict.py"
#define FAKER "tests/ref/fake_gpu_profile.py"
#define GPU_CHECK "scripts/gpu_check.sh"
#define RUN_STEPS 12 /* as gpu_check.sh's step_trace: --steps 12 */

static char g_build[512], g_dir[256], g_run[300], g_schedule[64], g_recorded[256];

/* Every check of the verdict, as it names them on its "  ok    " / "  FAIL  " lines. */
static const char *const all_checks[] = {"run", "lost records", "tables", "kernel times", "attribution",
                                         "aggregates", "schedule", "raw = aggregates", "kernel time <= step time",
                                         "clock", "h2d bytes", "HtoD bytes per step"};

/* gpu_check.sh's TRACE_STEPS=W:WU:A[:R] into out; 0, or -1 when the line is not there. */
static int read_gpu_check_schedule(char *out, size_t n) {
    char *text = read_text(GPU_CHECK);
    const char *at = strstr(text, "\nTRACE_STEPS=");
    int rc = -1;
    if (at) {
        at += strlen("\nTRACE_STEPS=");
        size_t len = strspn(at, "0123456789:");
        if (len > 0 && len < n) {
            memcpy(out, at, len);
            out[len] = 0;
            rc = 0;
        }
    }
    free(text);
    return rc;
}

/* The last non-empty line of text into line. */
static void last_line(const char *text, char *line, size_t n) {
    const char *end = text + strlen(text);
    while (end > text && (end[-1] == '\n' || end[-1] == ' ')) end--;
    const char *start = end;
    while (start > text && start[-1] != '\n') start--;
    size_t len = (size_t)(end - start) < n - 1 ? (size_t)(end - start) : n - 1;
    memcpy(line, start, len);
    line[len] = 0;
}

/* Runs the verdict on db (train.jsonl of the run); its exit status, its stdout in *out (caller
 * frees), its last line in last. */
static int run_verdict(const char *db, const char *jsonl, char **out, char *last, size_t n) {
    char cmd[1536], *err;
    snprintf(cmd, sizeof(cmd), PY " " VERDICT " %s %s %s", db, jsonl, g_schedule);
    int rc = run_capture(g_dir, cmd, out, &err);
    if (*err) printf("   verdict's stderr: %s\n", err);
    free(err);
    last_line(*out, last, n);
    return rc;
}

/* Makes the GPU-like copy of the run's database at dst (defect NULL: none); 0 when made. */
static int make_fake(const char *dst, const char *defect) {
    char cmd[1536], *out, *err;
    snprintf(cmd, sizeof(cmd), PY " " FAKER " %s/profile.sqlite %s %s/train.jsonl --recorded %s%s%s", g_run, dst,
             g_run, g_recorded, defect ? " --defect " : "", defect ? defect : "");
    int rc = run_capture(g_dir, cmd, &out, &err);
    if (rc != 0) printf("   %s: exit %d: %s%s\n", cmd, rc, out, err);
    free(out);
    free(err);
    return rc;
}

/* The verdict's output under a failed check, indented so that its own "FAIL" lines do not read
 * as the test's. */
static void show_output(const char *out) {
    for (const char *line = out; *line;) {
        const char *end = strchr(line, '\n');
        int len = end ? (int)(end - line) : (int)strlen(line);
        printf("   | %.*s\n", len, line);
        line += len + (end ? 1 : 0);
    }
}

/* Whether out has the line "  ok    NAME..." / "  FAIL  NAME..." (status "ok" or "FAIL"). */
static int has_check_line(const char *out, const char *status, const char *name) {
    char want[160];
    snprintf(want, sizeof(want), "\n  %-4s  %s", status, name);
    char *text = malloc(strlen(out) + 2);
    text[0] = '\n';
    strcpy(text + 1, out);
    int found = strstr(text, want) != NULL;
    free(text);
    return found;
}

/* The recorded steps of the schedule (step numbers from 1) as "4,5,6,7"; the count, or -1. */
static int recorded_steps(const char *schedule, char *list, size_t n) {
    ProfSchedule s;
    char err[256];
    if (prof_schedule_parse(schedule, &s, err, sizeof(err)) != 0) {
        printf("   %s\n", err);
        return -1;
    }
    int count = 0;
    list[0] = 0;
    for (int64_t i = 0; i < RUN_STEPS; i++) {
        ProfScheduleAction a = prof_schedule_action(&s, i);
        if (a != PROF_SCHED_RECORD && a != PROF_SCHED_RECORD_AND_SAVE) continue;
        size_t used = strlen(list);
        snprintf(list + used, n - used, "%s%lld", count ? "," : "", (long long)(i + 1));
        count++;
    }
    return count;
}

static int setup_run(void) {
    char cmd[2048], *log;
    snprintf(cmd, sizeof(cmd), "%s/detr-data synth %s/ds --images 16 --val 2 --size 64x64 --classes 3 "
             "--max-objects 2", g_build, g_dir);
    int rc = run_merged(g_dir, cmd, &log);
    CHECK("setup: synthetic dataset", rc == 0, "exit %d: %s", rc, log);
    free(log);
    if (rc != 0) return -1;
    /* gpu_check.sh's trace run on the tiny preset, on the CPU and small: 12 steps of 2 images of
     * varying size (so that H != W occurs); --trace-steps is accepted on the CPU and changes nothing */
    snprintf(cmd, sizeof(cmd), "%s/detr-train --data %s/ds --cache %s/cache --threads 1 --workers 1 --batch 2 "
             "--epochs 2 --steps %d --scales 64 --max-size 64 --resize-choices 48,56,64 --crop 40,48 "
             "--eval-every 0 --log-every 4 --profile=trace --trace-steps %s --out %s", g_build, g_dir, g_dir,
             RUN_STEPS, g_schedule, g_run);
    rc = run_merged(g_dir, cmd, &log);
    CHECK("setup: detr-train --profile=trace --trace-steps on the CPU", rc == 0, "exit %d: %s", rc, log);
    free(log);
    return rc == 0 ? 0 : -1;
}

/* The CPU database as it is: no GPU rows, so the verdict must not pass it. */
static void test_cpu_database(void) {
    char db[400], jsonl[400], last[512], *out;
    snprintf(db, sizeof(db), "%s/profile.sqlite", g_run);
    snprintf(jsonl, sizeof(jsonl), "%s/train.jsonl", g_run);
    int rc = run_verdict(db, jsonl, &out, last, sizeof(last));
    int ok = rc == 1 && strcmp(last, "FAIL run, tables") == 0;
    CHECK("the CPU run's database fails run and tables (device cpu, no CUPTI rows)", ok, "exit %d, last line '%s'",
          rc, last);
    if (!ok) show_output(out);
    free(out);
}

static void test_consistent(void) {
    char db[300], jsonl[400], last[512], *out;
    snprintf(db, sizeof(db), "%s/gpu.sqlite", g_dir);
    snprintf(jsonl, sizeof(jsonl), "%s/train.jsonl", g_run);
    if (make_fake(db, NULL) != 0) {
        CHECK("fake GPU database without defects", 0, "%s was not made (above)", FAKER);
        return;
    }
    int rc = run_verdict(db, jsonl, &out, last, sizeof(last));
    char missing[512] = "";
    for (size_t i = 0; i < sizeof(all_checks) / sizeof(all_checks[0]); i++)
        if (!has_check_line(out, "ok", all_checks[i]))
            snprintf(missing + strlen(missing), sizeof(missing) - strlen(missing), "'%s' ", all_checks[i]);
    int ok = rc == 0 && strncmp(last, "PASS ", 5) == 0 && !missing[0] && !strstr(out, "  FAIL  ");
    CHECK("consistent synthetic GPU rows: PASS, every check run and ok", ok, "exit %d, last line '%s', checks "
          "not ok: %s", rc, last, missing[0] ? missing : "none");
    if (!ok) show_output(out);
    free(out);
}

/* Each defect of fake_gpu_profile.py and the checks it must trip, in the verdict's order. */
static void test_defects(void) {
    static const struct {
        const char *defect, *fails;
    } cases[] = {
        {"orphan", "attribution, raw = aggregates"},
        {"unattributed", "aggregates"},
        {"slow_kernel", "kernel time <= step time"},
        {"clock", "clock"},
        {"extra_copy", "HtoD bytes per step"},
        {"agg_bytes", "raw = aggregates, h2d bytes, HtoD bytes per step"},
        {"lost", "lost records"},
        {"no_sync", "tables"},
        {"backwards_kernel", "kernel times"},
        {"warmup_kept", "schedule"},
    };
    char jsonl[400];
    snprintf(jsonl, sizeof(jsonl), "%s/train.jsonl", g_run);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char db[400], name[160], want[200], last[512], *out;
        snprintf(db, sizeof(db), "%s/gpu-%s.sqlite", g_dir, cases[i].defect);
        snprintf(name, sizeof(name), "defect %s: FAIL %s", cases[i].defect, cases[i].fails);
        if (make_fake(db, cases[i].defect) != 0) {
            CHECK(name, 0, "%s --defect %s: no database made (above)", FAKER, cases[i].defect);
            continue;
        }
        snprintf(want, sizeof(want), "FAIL %s", cases[i].fails);
        int rc = run_verdict(db, jsonl, &out, last, sizeof(last));
        int ok = rc == 1 && strcmp(last, want) == 0;
        CHECK(name, ok, "exit %d, last line '%s', want '%s'", rc, last, want);
        if (!ok) show_output(out);
        free(out);
    }
}

/* Bad input still ends in a verdict line, or a usage message with exit 2. */
static void test_bad_input(void) {
    char db[300], last[512], *out, *err;
    snprintf(db, sizeof(db), "%s/gpu.sqlite", g_dir);
    int rc = run_verdict(db, "/nonexistent/train.jsonl", &out, last, sizeof(last));
    CHECK("a missing train.jsonl: FAIL naming the error", rc == 1 && strstr(last, "FAIL ") == last &&
          strstr(last, "/nonexistent/train.jsonl"), "exit %d, last line '%s'", rc, last);
    free(out);
    rc = run_verdict("/nonexistent/profile.sqlite", "/nonexistent/train.jsonl", &out, last, sizeof(last));
    CHECK("a missing database: FAIL cannot read", rc == 1 && strstr(last, "FAIL cannot read /nonexistent/profile.sqlite"),
          "exit %d, last line '%s'", rc, last);
    free(out);
    rc = run_capture(g_dir, PY " " VERDICT " only-one-argument", &out, &err);
    CHECK("wrong arguments: usage, exit 2", rc == 2 && strstr(err, "usage:"), "exit %d: %s%s", rc, out, err);
    free(out);
    free(err);
}

int main(void) {
    const char *bd = getenv("DETR_BUILD");
    snprintf(g_build, sizeof(g_build), "%s", bd ? bd : "build");
    if (access(PY, X_OK) != 0) {
        test_skip("gpu trace verdict", PY " is not installed (the verdict and the fake GPU rows are Python)");
        return test_finish();
    }
    int have_schedule = read_gpu_check_schedule(g_schedule, sizeof(g_schedule)) == 0;
    CHECK("gpu_check.sh sets TRACE_STEPS=W:WU:A[:R]", have_schedule, "no TRACE_STEPS= line in %s", GPU_CHECK);
    if (!have_schedule) return test_finish();
    int n = recorded_steps(g_schedule, g_recorded, sizeof(g_recorded));
    CHECK("gpu_check.sh's schedule records steps of the 12-step run", n > 0, "--trace-steps %s records %d of steps "
          "1-%d", g_schedule, n, RUN_STEPS);
    if (n <= 0) return test_finish();
    printf("   --trace-steps %s: recorded steps %s\n", g_schedule, g_recorded);

    snprintf(g_dir, sizeof(g_dir), "/tmp/detr-gtv-XXXXXX");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(g_run, sizeof(g_run), "%s/run", g_dir);
    if (setup_run() == 0) {
        test_cpu_database();
        test_consistent();
        test_defects();
        test_bad_input();
    }
    char cmd[400];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", g_dir);
    if (g_test_fail == 0 && system(cmd) != 0) printf("could not remove %s\n", g_dir);
    if (g_test_fail) printf("kept %s for inspection\n", g_dir);
    return test_finish();
}
