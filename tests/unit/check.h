/* check.h - the tiny test harness shared by the C unit tests.
 *
 * Each test program calls CHECK(...) / test_case(...) for every assertion group and ends with
 * `return test_finish();`, which prints one machine-readable line
 *     RESULT passed=N failed=N skipped=N
 * that tests/run_tests.sh adds up into the final "N passed, N failed" line. */
#ifndef DETR_CHECK_H
#define DETR_CHECK_H
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

static int g_test_pass, g_test_fail, g_test_skip;

/* Records one named test outcome. */
static inline void test_case(const char *name, int ok, const char *fmt, ...) {
    if (ok) {
        g_test_pass++;
        printf("ok   %s\n", name);
    } else {
        g_test_fail++;
        printf("FAIL %s: ", name);
        va_list ap;
        va_start(ap, fmt);
        vprintf(fmt, ap);
        va_end(ap);
        printf("\n");
    }
    fflush(stdout);
}

static inline void test_skip(const char *name, const char *why) {
    g_test_skip++;
    printf("skip %s: %s\n", name, why);
    fflush(stdout);
}

#define CHECK(name, cond, ...) test_case((name), (cond) ? 1 : 0, __VA_ARGS__)

static inline int test_finish(void) {
    printf("RESULT passed=%d failed=%d skipped=%d\n", g_test_pass, g_test_fail, g_test_skip);
    return g_test_fail ? 1 : 0;
}

/* max|a-b| / (max|b| + 1e-6): the project's normalised error for comparing tensors. */
static inline double rel_err(const float *a, const float *b, size_t n) {
    double md = 0, mb = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (d != d) return INFINITY; /* NaN */
        if (d > md) md = d;
        if (fabs((double)b[i]) > mb) mb = fabs((double)b[i]);
    }
    return md / (mb + 1e-6);
}

#endif
