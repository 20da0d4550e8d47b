/* prof_summary_compare.c - detr-prof compare: the metrics of detr-prof summary for two runs side
 * by side, with absolute and relative deltas. A step-based metric is flagged ("faster",
 * "slower", "higher", "lower") only when its difference exceeds NOISE_FACTOR times the combined
 * noise that each run shows on its own (prof_stats_noise.c); otherwise it is "within noise".
 * The rule is explained in docs/prof-summary.md. */
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "detr_prof.h"
#include "prof_stats.h"

#define NOISE_FACTOR 3.0
/* Minimum effects: differences below these are never flagged, however quiet the runs (a phase
 * of a few microseconds has almost no noise, and a 1 us change of it does not matter). */
#define RELATIVE_FLOOR 0.01 /* 1 % of A's value: images/s and step times */
#define PHASE_FLOOR 0.001   /* 0.1 % of A's mean step time: phase times */
#define WAIT_FLOOR_PCT 0.1  /* 0.1 percentage points: loader wait */

typedef struct {
    char name[PROF_STATS_NAME + 32];
    const char *unit;
    double a, b;
    double noise_a, noise_b; /* each run's own noise; NaN: not estimated */
    double floor;            /* the smallest difference worth flagging, whatever the noise */
    int has_noise;           /* step-based metric with a noise estimate */
    int better;              /* +1: higher is better, -1: lower is better, 0: neither */
    int speed;               /* verdict words: faster/slower (else higher/lower) */
} Row;

typedef struct {
    Row *rows;
    int n, cap;
} Rows;

static Row *add_row(Rows *r, const char *name, const char *unit, double a, double b, int better, int speed) {
    if (r->n == r->cap) {
        int cap = r->cap ? 2 * r->cap : 32;
        Row *grown = realloc(r->rows, (size_t)cap * sizeof(Row));
        if (!grown) return NULL;
        r->rows = grown;
        r->cap = cap;
    }
    Row *row = &r->rows[r->n++];
    memset(row, 0, sizeof(*row));
    snprintf(row->name, sizeof(row->name), "%s", name);
    row->unit = unit;
    row->a = a;
    row->b = b;
    row->noise_a = row->noise_b = NAN;
    row->better = better;
    row->speed = speed;
    return row;
}

/* A step-based metric: its value and its noise in each run. A run given as NULL lacks the
 * metric (a phase only the other run has): 0 there, with no noise of its own. floor: the
 * minimum effect (see threshold). */
static int add_noisy(Rows *r, const char *name, const char *unit, StatsMetricFn fn, const RunStats *A,
                     const void *ctx_a, const RunStats *B, const void *ctx_b, int better, int speed, double floor) {
    Row *row = add_row(r, name, unit, A ? stats_metric(A, fn, ctx_a) : 0.0, B ? stats_metric(B, fn, ctx_b) : 0.0,
                       better, speed);
    if (!row) return -1;
    row->has_noise = 1;
    row->floor = isfinite(floor) ? floor : 0.0;
    row->noise_a = A ? stats_metric_noise(A, fn, ctx_a) : 0.0;
    row->noise_b = B ? stats_metric_noise(B, fn, ctx_b) : 0.0;
    return 0;
}

static const PhaseStat *find_phase(const RunStats *s, const char *name) {
    for (int i = 0; i < s->n_phases; i++)
        if (strcmp(s->phases[i].name, name) == 0) return &s->phases[i];
    return NULL;
}

static const MemoryStat *find_memory(const RunStats *s, const char *category) {
    for (int i = 0; i < s->n_memory; i++)
        if (strcmp(s->memory[i].category, category) == 0) return &s->memory[i];
    return NULL;
}

static double mib(const MemoryStat *m) { return m && m->peak_bytes >= 0 ? m->peak_bytes / 1048576.0 : NAN; }

static int phase_rows(Rows *r, const RunStats *A, const RunStats *B) {
    for (int pass = 0; pass < 2; pass++) { /* A's phases, then those only B has */
        const RunStats *s = pass ? B : A;
        for (int i = 0; i < s->n_phases; i++) {
            const char *name = s->phases[i].name;
            if (pass && find_phase(A, name)) continue;
            char label[PROF_STATS_NAME + 32];
            snprintf(label, sizeof(label), "phase %s%s", name, strcmp(name, "step") == 0 ? " (other)" : "");
            const PhaseStat *pa = find_phase(A, name), *pb = find_phase(B, name);
            if (add_noisy(r, label, "ms/step", stats_fn_phase_ms, pa ? A : NULL, pa, pb ? B : NULL, pb, -1, 1,
                          PHASE_FLOOR * A->mean_ms))
                return -1;
        }
    }
    return 0;
}

static int memory_rows(Rows *r, const RunStats *A, const RunStats *B) {
    for (int pass = 0; pass < 2; pass++) {
        const RunStats *s = pass ? B : A;
        for (int i = 0; i < s->n_memory; i++) {
            const char *cat = s->memory[i].category;
            if (pass && find_memory(A, cat)) continue;
            char label[PROF_STATS_NAME + 32];
            snprintf(label, sizeof(label), "peak %s", cat);
            if (!add_row(r, label, "MiB", mib(find_memory(A, cat)), mib(find_memory(B, cat)), -1, 0)) return -1;
        }
    }
    return 0;
}

static int build_rows(Rows *r, const RunStats *A, const RunStats *B) {
    static const int p50 = 50, p90 = 90, p99 = 99;
    if (add_noisy(r, "images/s", "images/s", stats_fn_images_per_s, A, NULL, B, NULL, +1, 1,
                  RELATIVE_FLOOR * A->images_per_s) ||
        add_noisy(r, "step p50", "ms", stats_fn_step_ms_pctl, A, &p50, B, &p50, -1, 1, RELATIVE_FLOOR * A->p50_ms) ||
        add_noisy(r, "step p90", "ms", stats_fn_step_ms_pctl, A, &p90, B, &p90, -1, 1, RELATIVE_FLOOR * A->p90_ms) ||
        add_noisy(r, "step p99", "ms", stats_fn_step_ms_pctl, A, &p99, B, &p99, -1, 1, RELATIVE_FLOOR * A->p99_ms) ||
        add_noisy(r, "step mean", "ms", stats_fn_step_ms_mean, A, NULL, B, NULL, -1, 1, RELATIVE_FLOOR * A->mean_ms) ||
        add_noisy(r, "loader wait", "% of step", stats_fn_wait_pct, A, NULL, B, NULL, -1, 0, WAIT_FLOOR_PCT) ||
        phase_rows(r, A, B) || memory_rows(r, A, B) ||
        !add_row(r, "eval AP (last)", "", A->n_evals ? A->eval_ap : NAN, B->n_evals ? B->eval_ap : NAN, +1, 0) ||
        !add_row(r, "eval AP50 (last)", "", A->n_evals ? A->eval_ap50 : NAN, B->n_evals ? B->eval_ap50 : NAN, +1, 0) ||
        !add_row(r, "dropped records", "records", (double)A->dropped_records, (double)B->dropped_records, -1, 0))
        return -1;
    return 0;
}

/* The smallest difference that is flagged: NOISE_FACTOR x sqrt(noise_a^2 + noise_b^2), and at
 * least the row's minimum effect. */
static double threshold(const Row *r) {
    double t = NOISE_FACTOR * sqrt(r->noise_a * r->noise_a + r->noise_b * r->noise_b);
    return t > r->floor ? t : isfinite(t) ? r->floor : t;
}

static int flagged(const Row *r) {
    double d = r->b - r->a;
    return r->has_noise && isfinite(d) && isfinite(threshold(r)) && fabs(d) > threshold(r);
}

static const char *verdict(const Row *r) {
    double d = r->b - r->a;
    if (!isfinite(r->a) || !isfinite(r->b)) return isnan(r->a) && isnan(r->b) ? "-" : "only in one run";
    if (!r->has_noise) return d == 0 ? "same" : "differs (no noise model)";
    if (!isfinite(threshold(r))) return "too few steps to tell";
    if (!flagged(r)) return "within noise";
    if (!r->speed) return d > 0 ? "higher" : "lower";
    return (d > 0) == (r->better > 0) ? "faster" : "slower";
}

static double delta_pct(const Row *r) {
    return r->a != 0 && isfinite(r->a) ? 100.0 * (r->b - r->a) / fabs(r->a) : NAN;
}

static void print_value(FILE *f, double v, int width) {
    if (isfinite(v)) fprintf(f, " %*.3f", width, v);
    else fprintf(f, " %*s", width, "-");
}

static void print_run_line(FILE *f, const char *tag, const char *db_path, const RunStats *s) {
    fprintf(f, "%s: run %" PRId64 " of %s (%s, %s, %d measured steps after %d warm-up)\n", tag, s->run_id, db_path,
            s->status ? s->status : "-", s->device ? s->device : "-", s->n_steps, s->warmup);
    fprintf(f, "   %s\n", s->command_line ? s->command_line : "-");
}

static void print_table(FILE *f, const Rows *r) {
    fprintf(f, "\n%-30s %-10s %12s %12s %12s %9s %12s  %s\n", "metric", "unit", "A", "B", "B - A", "B/A-1 %",
            "threshold", "verdict");
    for (int i = 0; i < r->n; i++) {
        const Row *row = &r->rows[i];
        fprintf(f, "%-30s %-10s", row->name, row->unit);
        print_value(f, row->a, 12);
        print_value(f, row->b, 12);
        print_value(f, row->b - row->a, 12);
        double pct = delta_pct(row);
        if (isfinite(pct)) fprintf(f, " %8.1f%%", pct);
        else fprintf(f, " %9s", "-");
        if (row->has_noise) print_value(f, threshold(row), 12);
        else fprintf(f, " %12s", "");
        fprintf(f, "  %s%s\n", flagged(row) ? "** " : "", verdict(row));
    }
    fprintf(f, "\nthreshold = max(%.0f x sqrt(noise_A^2 + noise_B^2), minimum effect); a run's noise is the larger\n"
               "of the bootstrap standard error over its steps and half its first-half/second-half difference;\n"
               "minimum effect: 1 %% of A (images/s, step times), 0.1 %% of A's mean step (phases), 0.1 points\n"
               "(loader wait). ** marks differences beyond it (docs/prof-summary.md).\n", NOISE_FACTOR);
}

static json_t *jreal(double v) { return isfinite(v) ? json_real(v) : json_null(); }

static json_t *run_json(const char *db_path, const RunStats *s) {
    return json_pack("{s:s, s:I, s:s?, s:i, s:i}", "database", db_path, "run_id", (json_int_t)s->run_id,
                     "command_line", s->command_line, "measured_steps", s->n_steps, "warmup", s->warmup);
}

static json_t *compare_json(const char *pa, const RunStats *A, const char *pb, const RunStats *B, const Rows *r) {
    json_t *metrics = json_array();
    for (int i = 0; i < r->n; i++) {
        const Row *row = &r->rows[i];
        json_array_append_new(
            metrics, json_pack("{s:s, s:s, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:s, s:b}", "metric", row->name, "unit",
                               row->unit, "a", jreal(row->a), "b", jreal(row->b), "delta", jreal(row->b - row->a),
                               "delta_pct", jreal(delta_pct(row)), "noise_a",
                               row->has_noise ? jreal(row->noise_a) : json_null(), "noise_b",
                               row->has_noise ? jreal(row->noise_b) : json_null(), "min_effect",
                               row->has_noise ? jreal(row->floor) : json_null(), "threshold",
                               row->has_noise ? jreal(threshold(row)) : json_null(), "verdict", verdict(row),
                               "flagged", flagged(row)));
    }
    return json_pack("{s:o, s:o, s:f, s:o}", "a", run_json(pa, A), "b", run_json(pb, B), "noise_factor",
                     NOISE_FACTOR, "metrics", metrics);
}

static void usage(FILE *f) {
    fprintf(f, "usage: detr-prof compare A.db B.db [--run-a ID] [--run-b ID] [--warmup N] [--json]\n"
               "The metrics of detr-prof summary for two runs side by side, with deltas (B - A, absolute\n"
               "and %%). Step-based metrics are flagged faster/slower only when the difference exceeds\n"
               "%.0f x the combined run-to-run noise measured in each run; otherwise \"within noise\".\n\n"
               "  --run-a ID, --run-b ID  the runs (default: the newest of each file; A.db and B.db\n"
               "                          may be the same file)\n"
               "  --warmup N              steps left out at the start of each run (default: min(2, 10%%))\n"
               "  --json                  machine-readable output\n\n"
               "Definitions and the noise rule: docs/prof-summary.md. Exit codes: 0 ok (differences\n"
               "included), 1 failure, 2 bad usage or input.\n", NOISE_FACTOR);
}

int prof_cmd_compare(int argc, char **argv) {
    const char *paths[2] = {NULL, NULL};
    int64_t ids[2] = {0, 0};
    int warmup = -1, as_json = 0, n_paths = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int has_value = i + 1 < argc;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(a, "--json") == 0) {
            as_json = 1;
        } else if ((strcmp(a, "--run-a") == 0 || strcmp(a, "--run-b") == 0) && has_value) {
            if (stats_parse_run_id(argv[++i], &ids[a[6] == 'b']) != 0) {
                fprintf(stderr, "detr-prof compare: %s '%s': expected a run id (a positive integer)\n", a, argv[i]);
                return 2;
            }
        } else if (strcmp(a, "--warmup") == 0 && has_value) {
            if ((warmup = stats_parse_count(argv[++i])) < 0) {
                fprintf(stderr, "detr-prof compare: --warmup '%s': expected a number of steps (>= 0)\n", argv[i]);
                return 2;
            }
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "detr-prof compare: unknown option or missing value: %s\n\n", a);
            usage(stderr);
            return 2;
        } else if (n_paths < 2) {
            paths[n_paths++] = a;
        } else {
            fprintf(stderr, "detr-prof compare: two databases only (got a third: '%s')\n", a);
            return 2;
        }
    }
    if (n_paths != 2) {
        fprintf(stderr, "detr-prof compare: expected two databases A.db B.db (got %d)\n\n", n_paths);
        usage(stderr);
        return 2;
    }
    RunStats s[2];
    memset(s, 0, sizeof(s));
    int rc = 0;
    for (int k = 0; k < 2 && rc == 0; k++) {
        sqlite3 *db = stats_open_run("compare", paths[k], &ids[k]);
        if (!db) {
            rc = 2;
            break;
        }
        char err[512];
        if (run_stats_load(db, ids[k], warmup, &s[k], err, sizeof(err)) != 0) {
            fprintf(stderr, "detr-prof compare: %s: %s\n", paths[k], err);
            rc = 1;
        }
        sqlite3_close(db);
    }
    Rows rows = {0};
    if (rc == 0 && build_rows(&rows, &s[0], &s[1]) != 0) {
        fprintf(stderr, "detr-prof compare: out of memory\n");
        rc = 1;
    }
    if (rc == 0 && as_json) {
        json_t *j = compare_json(paths[0], &s[0], paths[1], &s[1], &rows);
        if (!j || json_dumpf(j, stdout, JSON_INDENT(2) | JSON_REAL_PRECISION(12)) != 0) {
            fprintf(stderr, "detr-prof compare: cannot write the JSON output\n");
            rc = 1;
        }
        fputc('\n', stdout);
        json_decref(j);
    } else if (rc == 0) {
        print_run_line(stdout, "A", paths[0], &s[0]);
        print_run_line(stdout, "B", paths[1], &s[1]);
        print_table(stdout, &rows);
    }
    free(rows.rows);
    run_stats_free(&s[0]);
    run_stats_free(&s[1]);
    return rc;
}
