/* test_matcher.c - the exact linear assignment solver and the DETR matching cost.
 *   1. $DETR_FIXTURES/matcher_cases.bin (tests/ref/gen_matcher_cases.py): >= 1000 problems with
 *      scipy's optimal total; ours must be as low (|diff| <= 1e-9 * scale) and a valid assignment.
 *   2. Brute force over every assignment of small random matrices.
 *   3. Known values, non-finite input, and the matching cost formula. */
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include "check.h"
#include "matcher.h"
#include "rng.h"

/* Valid = min(rows, cols) rows assigned, columns in range and distinct; returns the recomputed total. */
static int assignment_valid(const double *cost, int rows, int cols, const int *row_to_col,
                            double *total) {
    int assigned = 0, ok = 1;
    unsigned char *taken = calloc((size_t)cols + 1, 1); /* [cols] */
    *total = 0;
    for (int i = 0; i < rows; i++) {
        int j = row_to_col[i];
        if (j < 0) {
            ok &= j == -1;
            continue;
        }
        if (j >= cols || taken[j]) {
            ok = 0;
            continue;
        }
        taken[j] = 1;
        assigned++;
        *total += cost[(size_t)i * cols + j];
    }
    free(taken);
    return ok && assigned == (rows < cols ? rows : cols);
}

static double max_abs(const double *x, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) m = fmax(m, fabs(x[i]));
    return m;
}

/* ---- 1. scipy fixture ---- */

typedef struct {
    int cases, bad_total, bad_valid;
    double worst_rel;
} FixtureStats;

static int read_case(FILE *f, int *rows, int *cols, double *expected, double **cost) {
    int32_t shape[2];
    if (fread(shape, sizeof shape, 1, f) != 1 || fread(expected, sizeof *expected, 1, f) != 1) return -1;
    if (shape[0] < 0 || shape[1] < 0 || shape[0] > 100000 || shape[1] > 100000) return -1;
    *rows = shape[0];
    *cols = shape[1];
    size_t n = (size_t)*rows * *cols;
    *cost = malloc((n ? n : 1) * sizeof(double)); /* [rows, cols] */
    if (n && fread(*cost, sizeof(double), n, f) != n) {
        free(*cost);
        return -1;
    }
    return 0;
}

static void check_fixture_case(const double *cost, int rows, int cols, double expected,
                               FixtureStats *st, int index) {
    int *row_to_col = malloc(((size_t)rows + 1) * sizeof(int)); /* [rows] */
    double total = lsa_solve(cost, rows, cols, row_to_col), recomputed;
    int valid = assignment_valid(cost, rows, cols, row_to_col, &recomputed);
    int mn = rows < cols ? rows : cols;
    double scale = max_abs(cost, (size_t)rows * cols) * (mn > 1 ? mn : 1);
    double diff = fabs(total - expected);
    if (!valid || fabs(recomputed - total) > 1e-12 * (scale + 1e-300)) {
        if (st->bad_valid++ < 5) printf("  case %d (%dx%d): invalid assignment\n", index, rows, cols);
    }
    if (!(diff <= 1e-9 * scale)) {
        if (st->bad_total++ < 5)
            printf("  case %d (%dx%d): total %.17g, scipy %.17g\n", index, rows, cols, total, expected);
    }
    if (scale > 0 && diff / scale > st->worst_rel) st->worst_rel = diff / scale;
    st->cases++;
    free(row_to_col);
}

static void test_fixture(void) {
    const char *dir = getenv("DETR_FIXTURES");
    char path[4096];
    snprintf(path, sizeof path, "%s/matcher_cases.bin", dir ? dir : "build/fixtures");
    FILE *f = fopen(path, "rb");
    if (!f) {
        char why[8400];
        snprintf(why, sizeof why, "%s missing (generate it with /usr/bin/python3 "
                 "tests/ref/gen_matcher_cases.py %s)", path, path);
        test_skip("matcher: scipy linear_sum_assignment cases", why);
        return;
    }
    char magic[4];
    uint32_t count = 0;
    int header_ok = fread(magic, 4, 1, f) == 1 && memcmp(magic, "LSA1", 4) == 0 &&
                    fread(&count, sizeof count, 1, f) == 1;
    CHECK("matcher: fixture header", header_ok, "%s is not an LSA1 file", path);
    FixtureStats st = {0};
    int read_ok = header_ok;
    for (uint32_t c = 0; header_ok && c < count; c++) {
        int rows, cols;
        double expected, *cost;
        if (read_case(f, &rows, &cols, &expected, &cost)) {
            read_ok = 0;
            break;
        }
        check_fixture_case(cost, rows, cols, expected, &st, (int)c);
        free(cost);
    }
    fclose(f);
    CHECK("matcher: fixture read", read_ok && st.cases >= 1000, "read %d of %u cases from %s",
          st.cases, count, path);
    CHECK("matcher: optimal total == scipy on every fixture case", st.bad_total == 0,
          "%d of %d cases differ (worst |diff|/scale %.3g)", st.bad_total, st.cases, st.worst_rel);
    CHECK("matcher: valid assignment on every fixture case", st.bad_valid == 0,
          "%d of %d assignments invalid", st.bad_valid, st.cases);
    printf("  %d scipy cases, worst |diff|/scale %.3g\n", st.cases, st.worst_rel);
}

/* ---- 2. brute force ---- */

/* Least total over all injections of the short side into the long side. */
static void brute_recurse(const double *cost, int rows, int cols, int transposed, int s, int n, int m,
                          unsigned char *used, double acc, double *best) {
    if (s == n) {
        if (acc < *best) *best = acc;
        return;
    }
    for (int l = 0; l < m; l++) {
        if (used[l]) continue;
        used[l] = 1;
        double c = transposed ? cost[(size_t)l * cols + s] : cost[(size_t)s * cols + l];
        brute_recurse(cost, rows, cols, transposed, s + 1, n, m, used, acc + c, best);
        used[l] = 0;
    }
}

static double brute_force(const double *cost, int rows, int cols) {
    int transposed = rows > cols;
    int n = transposed ? cols : rows, m = transposed ? rows : cols;
    unsigned char used[16] = {0};
    double best = INFINITY;
    brute_recurse(cost, rows, cols, transposed, 0, n, m, used, 0, &best);
    return best;
}

static void test_brute_force(void) {
    Rng rng = {12345, 0};
    int cases = 3000, bad = 0, invalid = 0;
    for (int c = 0; c < cases; c++) {
        int rows = 1 + (int)(rng_next_uniform(&rng) * 7), cols = 1 + (int)(rng_next_uniform(&rng) * 7);
        int integer = c % 2; /* half with small integers, i.e. many ties */
        double cost[49];     /* [rows, cols] */
        for (int i = 0; i < rows * cols; i++) {
            double u = rng_next_uniform(&rng);
            cost[i] = integer ? floor(u * 4) : (u - 0.5) * 100;
        }
        int row_to_col[7];
        double total = lsa_solve(cost, rows, cols, row_to_col), recomputed;
        invalid += !assignment_valid(cost, rows, cols, row_to_col, &recomputed);
        double best = brute_force(cost, rows, cols);
        if (fabs(total - best) > 1e-9 * 50 * 7) {
            if (bad++ < 5) printf("  brute case %d (%dx%d): %.17g vs %.17g\n", c, rows, cols, total, best);
        }
    }
    CHECK("matcher: brute force optimum on 3000 small matrices", bad == 0, "%d of %d differ", bad, cases);
    CHECK("matcher: brute force cases give valid assignments", invalid == 0, "%d invalid", invalid);
}

/* ---- 3. known values ---- */

static void test_known(void) {
    /* scipy's documentation example: optimum 5 (rows 0,1,2 -> cols 1,0,2). */
    double cost[9] = {4, 1, 3, 2, 0, 5, 3, 2, 2};
    int r2c[3];
    double total = lsa_solve(cost, 3, 3, r2c);
    CHECK("matcher: scipy example total 5", total == 5 && r2c[0] == 1 && r2c[1] == 0 && r2c[2] == 2,
          "total %g, assignment %d %d %d", total, r2c[0], r2c[1], r2c[2]);

    /* Tall: 3 rows, 1 column -> the row with the least cost. */
    double tall[3] = {3, -1, 2};
    int t2c[3];
    total = lsa_solve(tall, 3, 1, t2c);
    CHECK("matcher: tall 3x1 picks the minimum", total == -1 && t2c[0] == -1 && t2c[1] == 0 && t2c[2] == -1,
          "total %g, assignment %d %d %d", total, t2c[0], t2c[1], t2c[2]);

    int none[4] = {7, 7, 7, 7};
    total = lsa_solve(cost, 4, 0, none);
    CHECK("matcher: zero columns -> nothing assigned, total 0",
          total == 0 && none[0] == -1 && none[3] == -1, "total %g", total);
    total = lsa_solve(cost, 0, 3, none);
    CHECK("matcher: zero rows -> total 0", total == 0, "total %g", total);

    double bad[4] = {1, NAN, 2, 3};
    int b2c[2] = {5, 5};
    total = lsa_solve(bad, 2, 2, b2c);
    CHECK("matcher: NaN entry -> NAN total, nothing assigned", isnan(total) && b2c[0] == -1 && b2c[1] == -1,
          "total %g, assignment %d %d", total, b2c[0], b2c[1]);
    bad[1] = INFINITY;
    total = lsa_solve(bad, 2, 2, b2c);
    CHECK("matcher: Inf entry -> NAN total", isnan(total), "total %g", total);
}

static void test_matching_cost(void) {
    LossWeights w;
    loss_weights_default(&w);
    /* 2 queries, 1 target of class 1: query 0 sits exactly on it, query 1 is a disjoint box. */
    const float boxes[8] = {0.5f, 0.5f, 0.25f, 0.25f, 0.125f, 0.125f, 0.125f, 0.125f}; /* [2, 4] */
    const double probs[6] = {0.25, 0.5, 0.25, 0.125, 0.125, 0.75};                     /* [2, 3] */
    const int labels[1] = {1};
    const float tboxes[4] = {0.5f, 0.5f, 0.25f, 0.25f};
    ImageTargets t = {1, labels, tboxes};
    double cost[2]; /* [2, 1] */
    matcher_cost(probs, boxes, 2, 3, &t, &w, cost);
    /* query 1: xyxy (0.0625,0.0625,0.1875,0.1875) vs (0.375,0.375,0.625,0.625): L1 = 2*0.375 + 2*0.125,
     * IoU 0, enclosing 0.5625^2, union 0.0625 + 0.015625 -> GIoU = -(0.31640625 - 0.078125)/0.31640625 */
    double giou1 = -(0.31640625 - 0.078125) / 0.31640625;
    double want0 = -0.5 - 2.0, want1 = 5 * 1.0 - 0.125 - 2 * giou1;
    CHECK("matcher: cost = 5 L1 - p - 2 GIoU", fabs(cost[0] - want0) < 1e-12 && fabs(cost[1] - want1) < 1e-12,
          "cost %.15g %.15g, want %.15g %.15g", cost[0], cost[1], want0, want1);
    int q2t[2];
    int pairs = matcher_match_image(probs, boxes, 2, 3, &t, &w, q2t);
    CHECK("matcher: image match picks the overlapping query", pairs == 1 && q2t[0] == 0 && q2t[1] == -1,
          "pairs %d, assignment %d %d", pairs, q2t[0], q2t[1]);
    ImageTargets empty = {0, NULL, NULL};
    pairs = matcher_match_image(probs, boxes, 2, 3, &empty, &w, q2t);
    CHECK("matcher: image with no targets", pairs == 0 && q2t[0] == -1 && q2t[1] == -1, "pairs %d", pairs);
}

/* The DETR size: 100 queries x 60 targets, timed (informational). */
static void test_detr_size_timing(void) {
    enum { Q = 100, N = 60, REPS = 50 };
    static double cost[Q * N]; /* [Q, N] */
    Rng rng = {777, 0};
    for (int i = 0; i < Q * N; i++) cost[i] = rng_next_uniform(&rng) * 10;
    int r2c[Q];
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    double total = 0;
    for (int r = 0; r < REPS; r++) total = lsa_solve(cost, Q, N, r2c);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double ms = ((t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) * 1e-6) / REPS;
    double recomputed;
    CHECK("matcher: 100x60 assignment valid", assignment_valid(cost, Q, N, r2c, &recomputed) && isfinite(total),
          "invalid");
    printf("  lsa_solve 100x60: %.3f ms per call\n", ms);
}

int main(void) {
    test_known();
    test_matching_cost();
    test_brute_force();
    test_fixture();
    test_detr_size_timing();
    return test_finish();
}
