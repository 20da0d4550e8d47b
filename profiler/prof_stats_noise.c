/* prof_stats_noise.c - metrics over subsets of a run's measured steps, and each run's own noise
 * of a metric (bootstrap standard error and half-to-half drift), used by detr-prof compare to
 * tell a real difference from run-to-run noise (rule: docs/prof-summary.md). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "prof_stats.h"

static int compare_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double percentile_sorted(const double *v, int n, int p) {
    if (n <= 0) return NAN;
    long rank = ((long)p * n + 99) / 100; /* ceil(p * n / 100) in integers: no rounding surprises */
    if (rank < 1) rank = 1;
    if (rank > n) rank = n;
    return v[rank - 1];
}

double stats_percentile(const double *v, int n, int p) {
    if (n <= 0) return NAN;
    double *copy = malloc((size_t)n * sizeof(double));
    if (!copy) return NAN;
    memcpy(copy, v, (size_t)n * sizeof(double));
    qsort(copy, (size_t)n, sizeof(double), compare_double);
    double r = percentile_sorted(copy, n, p);
    free(copy);
    return r;
}

double stats_fn_images_per_s(const RunStats *s, const int *idx, int n, const void *ctx) {
    (void)ctx;
    double images = 0, wall = 0;
    for (int i = 0; i < n; i++) {
        images += s->images[idx[i]];
        wall += s->wall_ns[idx[i]];
    }
    return wall > 0 ? images / (wall / 1e9) : NAN;
}

double stats_fn_step_ms_pctl(const RunStats *s, const int *idx, int n, const void *ctx) {
    if (n <= 0) return NAN;
    double *v = malloc((size_t)n * sizeof(double));
    if (!v) return NAN;
    for (int i = 0; i < n; i++) v[i] = s->wall_ns[idx[i]];
    qsort(v, (size_t)n, sizeof(double), compare_double);
    double r = percentile_sorted(v, n, *(const int *)ctx) / 1e6;
    free(v);
    return r;
}

double stats_fn_step_ms_mean(const RunStats *s, const int *idx, int n, const void *ctx) {
    (void)ctx;
    double sum = 0;
    for (int i = 0; i < n; i++) sum += s->wall_ns[idx[i]];
    return n > 0 ? sum / n / 1e6 : NAN;
}

double stats_fn_wait_pct(const RunStats *s, const int *idx, int n, const void *ctx) {
    (void)ctx;
    double wait = 0, wall = 0;
    for (int i = 0; i < n; i++) {
        wait += s->wait_ns[idx[i]];
        wall += s->wall_ns[idx[i]];
    }
    return wall > 0 ? 100.0 * wait / wall : NAN;
}

double stats_fn_phase_ms(const RunStats *s, const int *idx, int n, const void *ctx) {
    (void)s; /* the phase carries its own per-step samples */
    const PhaseStat *p = ctx;
    double sum = 0;
    for (int i = 0; i < n; i++) sum += p->per_step_ns[idx[i]];
    return n > 0 ? sum / n / 1e6 : NAN;
}

static int *identity(int n) {
    int *idx = malloc((size_t)(n > 0 ? n : 1) * sizeof(int));
    if (idx)
        for (int i = 0; i < n; i++) idx[i] = i;
    return idx;
}

double stats_metric(const RunStats *s, StatsMetricFn fn, const void *ctx) {
    int *idx = identity(s->n_steps);
    double r = idx ? fn(s, idx, s->n_steps, ctx) : NAN;
    free(idx);
    return r;
}

/* xorshift64*: a fixed seed makes the bootstrap, and so compare's verdicts, reproducible */
static uint64_t next_random(uint64_t *state) {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    return *state * 2685821657736338717ull;
}

double stats_metric_noise(const RunStats *s, StatsMetricFn fn, const void *ctx) {
    int n = s->n_steps;
    if (n < STATS_MIN_NOISE_STEPS) return NAN;
    int *idx = identity(n), *sample = malloc((size_t)n * sizeof(int));
    if (!idx || !sample) {
        free(idx);
        free(sample);
        return NAN;
    }
    /* drift: the metric on the first half against the second half */
    int half = n / 2;
    double first = fn(s, idx, half, ctx), second = fn(s, idx + half, n - half, ctx);
    double drift = isfinite(first) && isfinite(second) ? fabs(first - second) / 2.0 : 0.0;
    /* bootstrap: the spread of the metric over resamples of the steps */
    uint64_t state = 0x9E3779B97F4A7C15ull;
    double sum = 0, sum_sq = 0;
    int used = 0;
    for (int b = 0; b < STATS_BOOTSTRAP; b++) {
        for (int i = 0; i < n; i++) sample[i] = (int)(next_random(&state) % (uint64_t)n);
        double v = fn(s, sample, n, ctx);
        if (!isfinite(v)) continue;
        sum += v;
        sum_sq += v * v;
        used++;
    }
    free(idx);
    free(sample);
    double se = 0;
    if (used > 1) {
        double mean = sum / used, var = (sum_sq - used * mean * mean) / (used - 1);
        se = var > 0 ? sqrt(var) : 0;
    }
    return se > drift ? se : drift;
}
