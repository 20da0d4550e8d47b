/* prof_summary.c - detr-prof summary: one run of a profile database as terminal tables (or JSON
 * with --json): run header, throughput and step-time percentiles, phase breakdown (exclusive
 * time), memory peaks, loader, evaluation and the profiler's own record keeping. Definitions:
 * docs/prof-summary.md; the numbers come from prof_stats.c. */
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include "detr_prof.h"
#include "prof_stats.h"

static json_t *jreal(double v) { return isfinite(v) ? json_real(v) : json_null(); }
static json_t *jstr(const char *s) { return s ? json_string(s) : json_null(); }

static const char *or_dash(const char *s) { return s && *s ? s : "-"; }

static void print_ms(FILE *f, const char *label, double v) {
    if (isfinite(v)) fprintf(f, "  %s %.3f", label, v);
    else fprintf(f, "  %s -", label);
}

static void print_header(FILE *f, const char *db_path, const RunStats *s) {
    fprintf(f, "run %" PRId64 " of %s\n", s->run_id, db_path);
    fprintf(f, "  command   %s\n", or_dash(s->command_line));
    fprintf(f, "  git       %s\n", or_dash(s->git_revision));
    fprintf(f, "  host      %s, CPU %s", or_dash(s->hostname), or_dash(s->cpu_model));
    if (s->cpu_cores > 0) fprintf(f, " (%d cores)", s->cpu_cores);
    fputc('\n', f);
    fprintf(f, "  device    %s, GPU %s\n", or_dash(s->device), or_dash(s->gpu));
    fprintf(f, "  status    %s", or_dash(s->status));
    if (s->has_exit_code) fprintf(f, " (exit %d)", s->exit_code);
    fprintf(f, ", level %s", or_dash(s->level));
    if (s->end_ns > s->start_ns) fprintf(f, ", %.2f s", (double)(s->end_ns - s->start_ns) / 1e9);
    else fprintf(f, ", never closed");
    fputs("\n\n", f);
}

static void print_steps(FILE *f, const RunStats *s, double ips_noise) {
    fprintf(f, "throughput: %d steps recorded, first %d left out as warm-up, %d measured\n", s->n_steps_total,
            s->warmup, s->n_steps);
    if (s->n_steps == 0) {
        fputs("  no measured steps\n\n", f);
        return;
    }
    fprintf(f, "  images/s  %.2f", s->images_per_s);
    if (isfinite(ips_noise)) fprintf(f, "   (run's own noise +-%.2f, see docs/prof-summary.md)", ips_noise);
    fputs("\n  step ms  ", f);
    print_ms(f, "p50", s->p50_ms);
    print_ms(f, "p90", s->p90_ms);
    print_ms(f, "p99", s->p99_ms);
    print_ms(f, "mean", s->mean_ms);
    print_ms(f, "min", s->min_ms);
    print_ms(f, "max", s->max_ms);
    fputs("\n\n", f);
}

static void print_phases(FILE *f, const RunStats *s) {
    if (s->n_phases == 0 || s->n_steps == 0) return;
    double wall = 0;
    for (int i = 0; i < s->n_steps; i++) wall += s->wall_ns[i];
    fputs("phases (exclusive time: ranges nested in a phase are subtracted from it)\n", f);
    fprintf(f, "  %-22s %12s %10s %8s\n", "phase", "ms / step", "% of step", "ranges");
    for (int i = 0; i < s->n_phases; i++) {
        const PhaseStat *p = &s->phases[i];
        char name[PROF_STATS_NAME + 16];
        snprintf(name, sizeof(name), "%s%s", p->name, strcmp(p->name, "step") == 0 ? " (other)" : "");
        fprintf(f, "  %-22s %12.3f %10.1f %8" PRId64 "\n", name, p->total_ns / s->n_steps / 1e6,
                wall > 0 ? 100.0 * p->total_ns / wall : 0.0, p->count);
    }
    fputs("\n", f);
}

static void print_memory(FILE *f, const RunStats *s) {
    if (s->n_memory == 0) return;
    fputs("memory peaks\n", f);
    fprintf(f, "  %-22s %12s %16s\n", "category", "peak MiB", "max current MiB");
    for (int i = 0; i < s->n_memory; i++) {
        const MemoryStat *m = &s->memory[i];
        fprintf(f, "  %-22s %12.2f %16.2f\n", m->category, m->peak_bytes >= 0 ? m->peak_bytes / 1048576.0 : NAN,
                m->max_current_bytes >= 0 ? m->max_current_bytes / 1048576.0 : NAN);
    }
    fputs("\n", f);
}

static void print_loader(FILE *f, const RunStats *s) {
    if (isfinite(s->wait_fraction))
        fprintf(f, "loader: wait fraction %.2f %% of step time (data_wait / step wall, measured steps)\n",
                100.0 * s->wait_fraction);
    else
        fputs("loader: wait fraction - (no measured steps)\n", f);
    if (s->loader_batches > 0) {
        fprintf(f, "  per batch ms  wait %.3f  read %.3f  decode %.3f  augment %.3f  collate %.3f\n",
                s->loader_wait_ms, s->loader_read_ms, s->loader_decode_ms, s->loader_augment_ms,
                s->loader_collate_ms);
        fprintf(f, "  (read..collate: worker time summed over the batch's samples; %d batches)\n",
                s->loader_batches);
        fprintf(f, "  starved batches %d (queue empty when asked), skipped samples %" PRId64
                   ", dropped boxes %" PRId64 ", read %.2f MiB\n",
                s->loader_starved, s->loader_skipped, s->loader_dropped_boxes, s->loader_bytes_read / 1048576.0);
    }
    fputs("\n", f);
}

static void print_eval_and_records(FILE *f, const RunStats *s) {
    if (s->loss_scaled_steps > 0)
        fprintf(f, "fp16 loss scaling: %" PRId64 " of %d steps skipped their update (inf/NaN gradients); "
                "loss scale at the last step %g\n\n", s->skipped_updates, s->loss_scaled_steps, s->last_loss_scale);
    if (s->n_evals > 0)
        fprintf(f, "evaluation (%d recorded): the last at epoch %d step %" PRId64 ": AP %.4f  AP50 %.4f\n\n", s->n_evals,
                s->eval_epoch, s->eval_step, s->eval_ap, s->eval_ap50);
    else
        fputs("evaluation: none recorded\n\n", f);
    fprintf(f, "records: %" PRId64 " written, %" PRId64 " dropped (%" PRId64 " steps, %" PRId64 " ranges), %" PRId64
               " lost in failed writes, %" PRId64 " range errors; writer CPU %.1f ms\n",
            s->records_written, s->dropped_records, s->dropped_steps, s->dropped_ranges, s->write_failed_records,
            s->range_errors, s->writer_cpu_ns / 1e6);
    if (s->writer_error) fprintf(f, "  writer error: %s\n", s->writer_error);
}

/* GPU time of a CUDA run (docs/gpu-profiling.md): kernel and copy time per step by phase from
 * DETR_GPU_STEPS, and the top kernels when the raw CUPTI table holds this run's trace. Nothing is
 * printed for a CPU run (no rows). */
static void print_gpu(FILE *f, sqlite3 *db, int64_t run_id, int64_t steps) {
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, "SELECT s.value, g.activity, sum(g.total_ns), sum(g.bytes), sum(g.count), "
                               "count(DISTINCT g.step) FROM DETR_GPU_STEPS g JOIN StringIds s ON s.id = g.phase_id "
                               "WHERE g.run_id = ?1 GROUP BY 1, 2 ORDER BY 3 DESC", -1, &st, NULL) != SQLITE_OK) {
        sqlite3_finalize(st);
        return; /* a version-1 file: no GPU tables */
    }
    sqlite3_bind_int64(st, 1, run_id);
    int rows = 0;
    while (sqlite3_step(st) == SQLITE_ROW) {
        if (rows++ == 0)
            fputs("GPU time per step by phase (DETR_GPU_STEPS)\n  phase            activity        ms/step"
                  "   calls/step   MB/step\n", f);
        double n = steps > 0 ? (double)steps : 1;
        fprintf(f, "  %-16s %-12s %10.3f %12.1f %9.2f\n", (const char *)sqlite3_column_text(st, 0),
                (const char *)sqlite3_column_text(st, 1), sqlite3_column_double(st, 2) / 1e6 / n,
                sqlite3_column_double(st, 4) / n, sqlite3_column_double(st, 3) / 1048576.0 / n);
    }
    sqlite3_finalize(st);
    if (rows == 0) return;
    if (sqlite3_prepare_v2(db, "SELECT coalesce(s.value, '?'), count(*), sum(k.\"end\" - k.start) FROM "
                               "CUPTI_ACTIVITY_KIND_KERNEL k JOIN DETR_RUNS r ON r.run_id = ?1 AND "
                               "(k.globalPid >> 24) = r.pid AND k.start >= r.start_ns AND k.start <= "
                               "coalesce(r.end_ns, k.start) LEFT JOIN StringIds s ON s.id = k.shortName "
                               "GROUP BY 1 ORDER BY 3 DESC LIMIT 5", -1, &st, NULL) == SQLITE_OK) {
        sqlite3_bind_int64(st, 1, run_id);
        int k = 0;
        while (sqlite3_step(st) == SQLITE_ROW) {
            if (k++ == 0) fputs("top kernels of the traced steps\n  kernel                                   calls   total ms\n", f);
            fprintf(f, "  %-40.40s %6d %10.3f\n", (const char *)sqlite3_column_text(st, 0), sqlite3_column_int(st, 1),
                    sqlite3_column_double(st, 2) / 1e6);
        }
    }
    sqlite3_finalize(st);
    fputs("\n", f);
}

static json_t *summary_json(const char *db_path, const RunStats *s, double ips_noise) {
    json_t *phases = json_array(), *memory = json_array();
    double wall = 0;
    for (int i = 0; i < s->n_steps; i++) wall += s->wall_ns[i];
    for (int i = 0; i < s->n_phases; i++) {
        const PhaseStat *p = &s->phases[i];
        json_array_append_new(phases, json_pack("{s:s, s:I, s:o, s:o, s:o}", "name", p->name, "ranges",
                                                (json_int_t)p->count, "ms_per_step",
                                                jreal(s->n_steps ? p->total_ns / s->n_steps / 1e6 : NAN),
                                                "pct_of_step", jreal(wall > 0 ? 100.0 * p->total_ns / wall : NAN),
                                                "total_ms", jreal(p->total_ns / 1e6)));
    }
    for (int i = 0; i < s->n_memory; i++)
        json_array_append_new(memory, json_pack("{s:s, s:I, s:I}", "category", s->memory[i].category, "peak_bytes",
                                                (json_int_t)s->memory[i].peak_bytes, "max_current_bytes",
                                                (json_int_t)s->memory[i].max_current_bytes));
    json_t *run = json_pack("{s:I, s:o, s:o, s:o, s:o, s:o, s:o, s:i, s:o, s:o, s:o, s:I, s:o}", "run_id",
                            (json_int_t)s->run_id, "status", jstr(s->status), "exit_code",
                            s->has_exit_code ? json_integer(s->exit_code) : json_null(), "command_line",
                            jstr(s->command_line), "git_revision", jstr(s->git_revision), "hostname",
                            jstr(s->hostname), "cpu_model", jstr(s->cpu_model), "cpu_cores", s->cpu_cores, "device",
                            jstr(s->device), "gpu", jstr(s->gpu), "level", jstr(s->level), "start_ns",
                            (json_int_t)s->start_ns, "end_ns", s->end_ns ? json_integer(s->end_ns) : json_null());
    json_t *steps = json_pack("{s:i, s:i, s:i, s:o, s:o, s:{s:o, s:o, s:o, s:o, s:o, s:o}}", "recorded",
                              s->n_steps_total, "warmup", s->warmup, "measured", s->n_steps, "images_per_s",
                              jreal(s->images_per_s), "images_per_s_noise", jreal(ips_noise), "step_ms", "p50",
                              jreal(s->p50_ms), "p90", jreal(s->p90_ms), "p99", jreal(s->p99_ms), "mean",
                              jreal(s->mean_ms), "min", jreal(s->min_ms), "max", jreal(s->max_ms));
    json_t *loader = json_pack("{s:o, s:i, s:i, s:{s:o, s:o, s:o, s:o, s:o}, s:I, s:I, s:I}", "wait_fraction",
                               jreal(s->wait_fraction), "batches", s->loader_batches, "starved_batches",
                               s->loader_starved, "mean_ms", "wait", jreal(s->loader_wait_ms), "read",
                               jreal(s->loader_read_ms), "decode", jreal(s->loader_decode_ms), "augment",
                               jreal(s->loader_augment_ms), "collate", jreal(s->loader_collate_ms), "skipped",
                               (json_int_t)s->loader_skipped, "dropped_boxes", (json_int_t)s->loader_dropped_boxes,
                               "bytes_read", (json_int_t)s->loader_bytes_read);
    json_t *eval = s->n_evals ? json_pack("{s:i, s:i, s:I, s:o, s:o}", "evaluations", s->n_evals, "epoch",
                                          s->eval_epoch, "step", (json_int_t)s->eval_step, "ap", jreal(s->eval_ap),
                                          "ap50", jreal(s->eval_ap50))
                              : json_null();
    json_t *records = json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:o}", "written",
                                (json_int_t)s->records_written, "dropped", (json_int_t)s->dropped_records,
                                "dropped_steps", (json_int_t)s->dropped_steps, "dropped_ranges",
                                (json_int_t)s->dropped_ranges, "write_failed", (json_int_t)s->write_failed_records,
                                "range_errors", (json_int_t)s->range_errors, "writer_cpu_ns",
                                (json_int_t)s->writer_cpu_ns, "writer_error", jstr(s->writer_error));
    json_t *scaling = s->loss_scaled_steps ? json_pack("{s:i, s:I, s:o}", "steps", s->loss_scaled_steps,
                                                       "skipped_updates", (json_int_t)s->skipped_updates,
                                                       "last_loss_scale", jreal(s->last_loss_scale))
                                           : json_null();
    return json_pack("{s:s, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o}", "database", db_path, "run", run, "steps", steps,
                     "phases", phases, "memory", memory, "loader", loader, "eval", eval, "loss_scaling", scaling,
                     "records", records);
}

static void usage(FILE *f) {
    fprintf(f, "usage: detr-prof summary RUN.db [--run ID] [--warmup N] [--json]\n"
               "Terminal tables of one run of a profile database: run header, images/s and step-time\n"
               "percentiles, phase breakdown (exclusive time), memory peaks, loader, evaluation and\n"
               "dropped records.\n\n"
               "  --run ID     the run (default: the newest)\n"
               "  --warmup N   steps left out at the start (default: min(2, 10%% of the steps))\n"
               "  --json       machine-readable output\n\n"
               "Definitions: docs/prof-summary.md. Exit codes: 0 ok, 1 failure, 2 bad usage or input.\n");
}

int prof_cmd_summary(int argc, char **argv) {
    const char *db_path = NULL;
    int64_t run_id = 0;
    int warmup = -1, as_json = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int has_value = i + 1 < argc;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(a, "--json") == 0) {
            as_json = 1;
        } else if (strcmp(a, "--run") == 0 && has_value) {
            if (stats_parse_run_id(argv[++i], &run_id) != 0) {
                fprintf(stderr, "detr-prof summary: --run '%s': expected a run id (a positive integer)\n", argv[i]);
                return 2;
            }
        } else if (strcmp(a, "--warmup") == 0 && has_value) {
            if ((warmup = stats_parse_count(argv[++i])) < 0) {
                fprintf(stderr, "detr-prof summary: --warmup '%s': expected a number of steps (>= 0)\n", argv[i]);
                return 2;
            }
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "detr-prof summary: unknown option or missing value: %s\n\n", a);
            usage(stderr);
            return 2;
        } else if (!db_path) {
            db_path = a;
        } else {
            fprintf(stderr, "detr-prof summary: one database only (got '%s' and '%s'; "
                            "detr-prof compare sets two side by side)\n", db_path, a);
            return 2;
        }
    }
    if (!db_path) {
        fprintf(stderr, "detr-prof summary: missing the database RUN.db\n\n");
        usage(stderr);
        return 2;
    }
    sqlite3 *db = stats_open_run("summary", db_path, &run_id);
    if (!db) return 2;
    RunStats s;
    char err[512];
    int rc = run_stats_load(db, run_id, warmup, &s, err, sizeof(err));
    if (rc != 0) {
        sqlite3_close(db);
        fprintf(stderr, "detr-prof summary: %s: %s\n", db_path, err);
        run_stats_free(&s);
        return 1;
    }
    double ips_noise = stats_metric_noise(&s, stats_fn_images_per_s, NULL);
    if (as_json) {
        json_t *j = summary_json(db_path, &s, ips_noise);
        rc = !j || json_dumpf(j, stdout, JSON_INDENT(2) | JSON_REAL_PRECISION(12)) != 0;
        fputc('\n', stdout);
        json_decref(j);
    } else {
        print_header(stdout, db_path, &s);
        print_steps(stdout, &s, ips_noise);
        print_phases(stdout, &s);
        print_memory(stdout, &s);
        print_loader(stdout, &s);
        print_gpu(stdout, db, s.run_id, s.n_steps_total);
        print_eval_and_records(stdout, &s);
    }
    sqlite3_close(db);
    run_stats_free(&s);
    if (rc) fprintf(stderr, "detr-prof summary: cannot write the JSON output\n");
    return rc ? 1 : 0;
}
