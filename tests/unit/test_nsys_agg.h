/* test_nsys_agg.h - median() and stdev(), the aggregate functions nsys's report scripts
 * (nsysstats) register on their connection; plain SQLite has neither, so the tests that run the
 * nsys reports' SQL on our files register them the same way (db_register_median_stdev).
 * stdev is the sample standard deviation, NULL below two values. */
#ifndef DETR_TEST_NSYS_AGG_H
#define DETR_TEST_NSYS_AGG_H
#include <math.h>
#include <sqlite3.h>
#include <stdlib.h>

typedef struct {
    double *v;
    int n, cap;
} DbValues;

static inline void db_values_step(sqlite3_context *ctx, int argc, sqlite3_value **argv) {
    (void)argc;
    DbValues *a = sqlite3_aggregate_context(ctx, sizeof(DbValues));
    if (!a || sqlite3_value_type(argv[0]) == SQLITE_NULL) return;
    if (a->n == a->cap) {
        int cap = a->cap ? a->cap * 2 : 16;
        double *v = realloc(a->v, (size_t)cap * sizeof(double));
        if (!v) return;
        a->v = v, a->cap = cap;
    }
    a->v[a->n++] = sqlite3_value_double(argv[0]);
}

static inline int db_cmp_double(const void *x, const void *y) {
    double a = *(const double *)x, b = *(const double *)y;
    return (a > b) - (a < b);
}

static inline void db_median_final(sqlite3_context *ctx) {
    DbValues *a = sqlite3_aggregate_context(ctx, 0);
    if (!a || a->n == 0) {
        sqlite3_result_null(ctx);
    } else {
        qsort(a->v, (size_t)a->n, sizeof(double), db_cmp_double);
        sqlite3_result_double(ctx, a->n % 2 ? a->v[a->n / 2] : (a->v[a->n / 2 - 1] + a->v[a->n / 2]) / 2);
    }
    if (a) free(a->v);
}

static inline void db_stdev_final(sqlite3_context *ctx) {
    DbValues *a = sqlite3_aggregate_context(ctx, 0);
    if (!a || a->n < 2) {
        sqlite3_result_null(ctx);
    } else {
        double mean = 0, ss = 0;
        for (int i = 0; i < a->n; i++) mean += a->v[i];
        mean /= a->n;
        for (int i = 0; i < a->n; i++) ss += (a->v[i] - mean) * (a->v[i] - mean);
        sqlite3_result_double(ctx, sqrt(ss / (a->n - 1)));
    }
    if (a) free(a->v);
}

static inline void db_register_median_stdev(sqlite3 *db) {
    sqlite3_create_function(db, "median", 1, SQLITE_UTF8, NULL, NULL, db_values_step, db_median_final);
    sqlite3_create_function(db, "stdev", 1, SQLITE_UTF8, NULL, NULL, db_values_step, db_stdev_final);
}

#endif
