/* prof_stats.h - the metrics of one run of a profile database, as detr-prof summary prints them
 * and detr-prof compare sets side by side (definitions: docs/prof-summary.md). */
#ifndef DETR_PROF_STATS_H
#define DETR_PROF_STATS_H
#include <sqlite3.h>
#include <stddef.h>
#include <stdint.h>

#define PROF_STATS_NAME 64

/* One phase name: exclusive time (its duration minus the ranges nested in it) summed over the
 * measured steps. The "step" phase's exclusive time is the step's time outside every named phase. */
typedef struct {
    char name[PROF_STATS_NAME];
    int64_t count;      /* ranges of this name inside the measured steps */
    double *per_step_ns; /* exclusive ns in each measured step (n_steps entries) */
    double total_ns;
} PhaseStat;

typedef struct {
    char category[PROF_STATS_NAME];
    int64_t peak_bytes, max_current_bytes; /* -1: unknown */
} MemoryStat;

typedef struct {
    /* run header (NULL strings: not recorded) */
    int64_t run_id, start_ns, end_ns; /* end_ns 0: never closed */
    char *status, *command_line, *git_revision, *hostname, *cpu_model, *device, *gpu, *level;
    int cpu_cores, exit_code, has_exit_code;

    /* steps: the first `warmup` steps (by step number) are left out of every step metric */
    int n_steps_total, warmup, n_steps;
    double *wall_ns;   /* measured steps, in step order */
    double *images;    /* images of each measured step */
    double *wait_ns;   /* data_wait_ns of each measured step (0 when unknown) */
    double images_per_s; /* sum(images) / sum(wall) */
    double p50_ms, p90_ms, p99_ms, mean_ms, min_ms, max_ms;
    double wait_fraction; /* sum(data_wait_ns) / sum(wall_ns) */

    int n_phases;
    PhaseStat *phases;

    int n_memory;
    MemoryStat *memory;

    /* loader (DETR_LOADER rows of the measured steps): means per batch in ms */
    int loader_batches, loader_starved;
    double loader_wait_ms, loader_read_ms, loader_decode_ms, loader_augment_ms, loader_collate_ms;
    int64_t loader_skipped, loader_dropped_boxes, loader_bytes_read;

    /* fp16 loss scaling (all steps, warm-up included): steps with a scale, updates skipped,
     * the last step's scale (NaN: the run did not scale its loss) */
    int loss_scaled_steps;
    int64_t skipped_updates;
    double last_loss_scale;

    /* the last evaluation */
    int n_evals, eval_epoch;
    int64_t eval_step;
    double eval_ap, eval_ap50;

    /* record keeping */
    int64_t records_written, dropped_records, dropped_steps, dropped_ranges, write_failed_records,
        range_errors, writer_cpu_ns;
    char *writer_error;
} RunStats;

/* Fills s with run run_id of db. warmup < 0: the default min(2, 10 % of the steps). Returns 0,
 * or -1 with err set. Free with run_stats_free (also after a failure). */
int run_stats_load(sqlite3 *db, int64_t run_id, int warmup, RunStats *s, char *err, size_t errlen);
void run_stats_free(RunStats *s);

/* The default warm-up for n recorded steps: min(2, floor(n / 10)). */
int run_stats_default_warmup(int n_steps);

/* Nearest-rank percentile (p in 1..100: the value of rank ceil(p * n / 100) in ascending order)
 * of n values; the input is left alone. NaN when n == 0. */
double stats_percentile(const double *v, int n, int p);

/* A metric computed over a subset of the measured steps (indices into wall_ns etc.). */
typedef double (*StatsMetricFn)(const RunStats *s, const int *idx, int n, const void *ctx);
double stats_fn_images_per_s(const RunStats *s, const int *idx, int n, const void *ctx);
double stats_fn_step_ms_pctl(const RunStats *s, const int *idx, int n, const void *ctx); /* ctx: const int *p */
double stats_fn_step_ms_mean(const RunStats *s, const int *idx, int n, const void *ctx);
double stats_fn_wait_pct(const RunStats *s, const int *idx, int n, const void *ctx);
double stats_fn_phase_ms(const RunStats *s, const int *idx, int n, const void *ctx); /* ctx: const PhaseStat * */

/* The metric over all measured steps. */
double stats_metric(const RunStats *s, StatsMetricFn fn, const void *ctx);

/* The run's own noise of the metric, in its unit: the larger of the bootstrap standard error
 * (STATS_BOOTSTRAP resamples of the measured steps, fixed seed) and half the difference between
 * the metric on the first and on the second half of the steps (drift within the run).
 * NaN with fewer than STATS_MIN_NOISE_STEPS measured steps. */
#define STATS_BOOTSTRAP 400
#define STATS_MIN_NOISE_STEPS 6
double stats_metric_noise(const RunStats *s, StatsMetricFn fn, const void *ctx);

/* Opens db_path read-only and resolves run_id (<= 0: the newest run). Prints the problem to stderr
 * prefixed with cmd and returns NULL when the file or the run is not usable. */
sqlite3 *stats_open_run(const char *cmd, const char *db_path, int64_t *run_id);

/* Parses a positive run id; -1 if s is not one. */
int stats_parse_run_id(const char *s, int64_t *id);

/* Parses a non-negative count (e.g. --warmup); -1 if s is not one. */
int stats_parse_count(const char *s);

#endif
