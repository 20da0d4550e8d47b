/* prof_sweep.c - detr-prof sweep: runs detr-train trials over batch size x precision x gradient
 * accumulation x loader workers (or searches the largest batch that fits), each in its own
 * process, records them in DETR_SWEEPS / DETR_SWEEP_TRIALS and recommends a configuration.
 * This file: the options, the grid and the auto search. docs/prof-sweep.md is the manual. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "detr_prof.h"
#include "mem.h"
#include "prof_sweep_internal.h"

static const char USAGE[] =
    "usage: detr-prof sweep --batch LIST|auto [options] [-- detr-train options]\n"
    "Runs one child `detr-train --profile --db DB --steps WARMUP+N --batch B --accum A --workers W\n"
    "--amp P [detr-train options]` per configuration (an out-of-memory or a crash ends only that\n"
    "trial), reads each trial's run from DB and prints them ranked, fastest first, with a\n"
    "recommendation. Trials and the recommendation are stored in DB (DETR_SWEEPS, DETR_SWEEP_TRIALS).\n"
    "\n"
    "Options:\n"
    "  --batch LIST|auto    batch sizes, e.g. 1,2,4,8,16; auto: double from 1 until out of memory,\n"
    "                       bisect, then keep the margin below --mem-limit (default auto)\n"
    "  --max-batch N        cap of the auto search (default 4096)\n"
    "  --amp LIST           precisions off,bf16,fp16 (default off)\n"
    "  --accum LIST         gradient accumulation steps (default 1)\n"
    "  --workers LIST       data loader threads (default 2)\n"
    "  --steps N            measured steps per trial (default 5)\n"
    "  --warmup W           steps run first and left out of the metrics (default 2)\n"
    "  --target-batch T     also recommend the fastest batch x accum = T\n"
    "  --margin F           keep peak memory <= (1 - F) x --mem-limit (default 0.05)\n"
    "  --timeout SEC        per-trial limit; the trial's process group is killed (default 600)\n"
    "  --fresh              run every trial, even one the database already holds\n"
    "  --db FILE            database for the trials' runs and the sweep (default sweep.sqlite)\n"
    "  --help               show this help\n"
    "\n"
    "After --: detr-train options for every trial (dataset, model, --mem-limit, ...); not --batch,\n"
    "--accum, --workers, --amp, --steps, --profile or --db, which the sweep sets. --mem-limit SIZE\n"
    "plays the device memory on the CPU: trials above it end with exit code 3 (status oom).\n"
    "detr-train is found next to detr-prof, or at $DETR_TRAIN.\n"
    "Statuses: ok, oom (exit 3), error (other exit code or a signal), timeout.\n"
    "Exit codes: 0 done, 1 no trial ran ok or the database failed, 2 bad usage, 130 interrupted.\n";

/* Parses "1,2,4" into positive ints. 0, or -1 with err naming the option and the bad entry. */
static int parse_int_list(const char *opt, const char *v, int *out, int *n, char *err, size_t errlen) {
    *n = 0;
    const char *p = v;
    if (!*v) {
        snprintf(err, errlen, "--%s: empty list; give comma-separated values, e.g. --%s 1,2,4", opt, opt);
        return -1;
    }
    for (;;) {
        char *end;
        errno = 0;
        long x = strtol(p, &end, 10);
        if (end == p || (*end && *end != ',') || errno || x < 1 || x > 1 << 20) {
            snprintf(err, errlen, "--%s '%s': '%.*s' is not an integer >= 1 (comma-separated list, no "
                     "spaces or empty entries)", opt, v, (int)strcspn(p, ","), p);
            return -1;
        }
        if (*n == SWEEP_MAX_LIST) {
            snprintf(err, errlen, "--%s: more than %d values", opt, SWEEP_MAX_LIST);
            return -1;
        }
        for (int i = 0; i < *n; i++)
            if (out[i] == (int)x) {
                snprintf(err, errlen, "--%s '%s': %ld appears twice", opt, v, x);
                return -1;
            }
        out[(*n)++] = (int)x;
        if (!*end) return 0;
        p = end + 1;
    }
}

static int parse_amp_list(const char *v, SweepArgs *a, char *err, size_t errlen) {
    a->n_amps = 0;
    const char *p = v;
    for (;;) {
        size_t len = strcspn(p, ",");
        char word[8] = "";
        if (len < sizeof(word)) snprintf(word, sizeof(word), "%.*s", (int)len, p);
        if (strcmp(word, "off") && strcmp(word, "bf16") && strcmp(word, "fp16")) {
            snprintf(err, errlen, "--amp '%s': '%.*s' is not one of off, bf16, fp16 (comma-separated)", v,
                     (int)len, p);
            return -1;
        }
        if (a->n_amps == SWEEP_MAX_LIST) {
            snprintf(err, errlen, "--amp: more than %d values", SWEEP_MAX_LIST);
            return -1;
        }
        snprintf(a->amps[a->n_amps], 8, "%s", word);
        for (int i = 0; i < a->n_amps; i++)
            if (!strcmp(a->amps[i], a->amps[a->n_amps])) {
                snprintf(err, errlen, "--amp '%s': %s appears twice", v, a->amps[i]);
                return -1;
            }
        a->n_amps++;
        if (!p[len]) return 0;
        p += len + 1;
    }
}

static int parse_int(const char *opt, const char *v, int lo, int *out, char *err, size_t errlen) {
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (end == v || *end || errno || x < lo || x > INT_MAX) {
        snprintf(err, errlen, "--%s '%s': expected an integer >= %d", opt, v, lo);
        return -1;
    }
    *out = (int)x;
    return 0;
}

static int parse_double(const char *opt, const char *v, double lo, double hi, double *out, char *err,
                        size_t errlen) {
    char *end;
    double x = strtod(v, &end);
    if (end == v || *end || !(x >= lo && x < hi)) {
        snprintf(err, errlen, "--%s '%s': expected a number in [%g, %g)", opt, v, lo, hi);
        return -1;
    }
    *out = x;
    return 0;
}

/* The detr-train options: refuses the ones the sweep sets, picks up --mem-limit and --out. */
static int check_train_opts(SweepArgs *a, char *err, size_t errlen) {
    static const char *const owned[] = {"batch", "accum", "workers", "amp", "steps", "profile", "db"};
    for (int i = 0; i < a->n_train_opts; i++) {
        const char *o = a->train_opts[i];
        if (strncmp(o, "--", 2)) continue;
        size_t len = strcspn(o + 2, "=");
        for (size_t k = 0; k < sizeof(owned) / sizeof(owned[0]); k++)
            if (strlen(owned[k]) == len && !strncmp(o + 2, owned[k], len)) {
                snprintf(err, errlen, "detr-train option %s after --: the sweep sets --%s for every trial; "
                         "give it to detr-prof sweep (before --)%s", o, owned[k],
                         !strcmp(owned[k], "profile") ? " or leave it out" : "");
                return -1;
            }
        if (len == 3 && !strncmp(o + 2, "out", 3)) a->user_out = 1;
        if (len == 9 && !strncmp(o + 2, "mem-limit", 9)) {
            const char *v = o[11] == '=' ? o + 12 : i + 1 < a->n_train_opts ? a->train_opts[i + 1] : NULL;
            size_t bytes = 0;
            if (!v || mem_parse_size(v, &bytes) != 0) {
                snprintf(err, errlen, "detr-train option --mem-limit after --: '%s' is not a size (e.g. 512M, "
                         "2G, or bytes)", v ? v : "(missing)");
                return -1;
            }
            a->mem_limit = (int64_t)bytes;
        }
    }
    return 0;
}

static int parse_args(int argc, char **argv, SweepArgs *a, char *err, size_t errlen) {
    memset(a, 0, sizeof(*a));
    a->auto_batch = 1;
    a->max_batch = 4096;
    snprintf(a->amps[0], 8, "off");
    a->n_amps = 1;
    a->accums[0] = 1, a->n_accums = 1;
    a->workers[0] = 2, a->n_workers = 1;
    a->steps = 5, a->warmup = 2;
    a->margin = 0.05, a->timeout_s = 600;
    a->db_path = "sweep.sqlite";
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (!strcmp(arg, "--")) {
            a->train_opts = argv + i + 1;
            a->n_train_opts = argc - i - 1;
            break;
        }
        if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) return 1;
        if (!strcmp(arg, "--fresh")) {
            a->fresh = 1;
            continue;
        }
        if (strncmp(arg, "--", 2)) {
            snprintf(err, errlen, "unexpected argument '%s' (detr-train options go after --)", arg);
            return -1;
        }
        char name[64];
        const char *eq = strchr(arg, '='), *v;
        snprintf(name, sizeof(name), "%.*s", (int)(eq ? eq - arg - 2 : (long)strlen(arg) - 2), arg + 2);
        if (eq) {
            v = eq + 1;
        } else if (i + 1 < argc) {
            v = argv[++i];
        } else {
            snprintf(err, errlen, "--%s needs a value (detr-prof sweep --help)", name);
            return -1;
        }
        int r = 0;
        if (!strcmp(name, "batch")) {
            a->auto_batch = !strcmp(v, "auto");
            if (!a->auto_batch) r = parse_int_list(name, v, a->batches, &a->n_batches, err, errlen);
        } else if (!strcmp(name, "amp")) {
            r = parse_amp_list(v, a, err, errlen);
        } else if (!strcmp(name, "accum")) {
            r = parse_int_list(name, v, a->accums, &a->n_accums, err, errlen);
        } else if (!strcmp(name, "workers")) {
            r = parse_int_list(name, v, a->workers, &a->n_workers, err, errlen);
        } else if (!strcmp(name, "steps")) {
            r = parse_int(name, v, 1, &a->steps, err, errlen);
        } else if (!strcmp(name, "warmup")) {
            r = parse_int(name, v, 0, &a->warmup, err, errlen);
        } else if (!strcmp(name, "target-batch")) {
            r = parse_int(name, v, 1, &a->target_batch, err, errlen);
        } else if (!strcmp(name, "max-batch")) {
            r = parse_int(name, v, 1, &a->max_batch, err, errlen);
        } else if (!strcmp(name, "margin")) {
            r = parse_double(name, v, 0, 1, &a->margin, err, errlen);
        } else if (!strcmp(name, "timeout")) {
            r = parse_double(name, v, 1, 1e7, &a->timeout_s, err, errlen);
        } else if (!strcmp(name, "db")) {
            if (!*v) {
                snprintf(err, errlen, "--db: empty path");
                return -1;
            }
            a->db_path = v;
        } else {
            snprintf(err, errlen, "unknown option --%s (detr-prof sweep --help; detr-train options go after --)",
                     name);
            return -1;
        }
        if (r) return -1;
    }
    return check_train_opts(a, err, errlen);
}

/* $DETR_TRAIN, else detr-train in the folder of this program. */
static int find_train(char *out, size_t n, char *err, size_t errlen) {
    const char *env = getenv("DETR_TRAIN");
    if (env && *env) {
        snprintf(out, n, "%s", env);
        if (access(out, X_OK) == 0) return 0;
        snprintf(err, errlen, "detr-train not found: $DETR_TRAIN is '%.2048s' (%s); HINT: point it at the "
                 "detr-train binary, or unset it to use the one next to detr-prof", env, strerror(errno));
        return -1;
    }
    char self[2048];
    ssize_t len = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (len <= 0) {
        snprintf(err, errlen, "detr-train not found: cannot read /proc/self/exe (%s); HINT: set "
                 "DETR_TRAIN=/path/to/detr-train", strerror(errno));
        return -1;
    }
    self[len] = 0;
    char *slash = strrchr(self, '/');
    if (slash) *slash = 0;
    snprintf(out, n, "%s/detr-train", self);
    if (access(out, X_OK) == 0) return 0;
    snprintf(err, errlen, "detr-train not found: %.2048s (%s); HINT: build it (make) or set "
             "DETR_TRAIN=/path/to/detr-train", out, strerror(errno));
    return -1;
}

static int trial_ok(const Sweep *s, int i) { return i >= 0 && !strcmp(s->trials[i].status, "ok"); }

/* The auto search for one (amp, accum, workers): double from 1 while trials run ok, bisect
 * between the last success and the first failure, then, with a --mem-limit, bisect below the
 * largest success until the answer's peak is within (1 - margin) x limit. Appends its answer
 * (with a one-sentence summary) to results. */
static void auto_search(Sweep *s, const char *amp, int accum, int workers, json_t *results) {
    const SweepArgs *a = s->a;
    int lo = 0, hi = 0, b = 1, stop_index = -1;
    for (;;) {
        int i = sweep_trial(s, b, amp, accum, workers, "auto-double");
        if (i < 0) return;
        if (!trial_ok(s, i)) {
            hi = b, stop_index = i;
            break;
        }
        lo = b;
        if (b >= a->max_batch) break;
        b = b * 2 > a->max_batch ? a->max_batch : b * 2;
    }
    while (hi - lo > 1) {
        int mid = lo + (hi - lo) / 2;
        int i = sweep_trial(s, mid, amp, accum, workers, "auto-bisect");
        if (i < 0) return;
        if (trial_ok(s, i)) lo = mid;
        else hi = mid;
    }
    int largest_fit = lo, answer = lo;
    if (a->mem_limit > 0 && lo > 0) {
        /* good: largest tried batch within the margin; bad: smallest tried one above good that is not */
        int good = 0, bad = lo + 1;
        for (int i = 0; i < s->n; i++) {
            const SweepTrial *t = &s->trials[i];
            if (t->accum != accum || t->workers != workers || strcmp(t->amp, amp) || t->batch > lo) continue;
            if (sweep_trial_within_margin(t, a->mem_limit, a->margin)) {
                if (t->batch > good) good = t->batch;
            }
        }
        for (int i = 0; i < s->n; i++) {
            const SweepTrial *t = &s->trials[i];
            if (t->accum != accum || t->workers != workers || strcmp(t->amp, amp)) continue;
            if (t->batch > good && t->batch < bad && !sweep_trial_within_margin(t, a->mem_limit, a->margin))
                bad = t->batch;
        }
        while (bad - good > 1) {
            int mid = good + (bad - good) / 2;
            int i = sweep_trial(s, mid, amp, accum, workers, "auto-bisect");
            if (i < 0) return;
            if (sweep_trial_within_margin(&s->trials[i], a->mem_limit, a->margin)) good = mid;
            else bad = mid;
        }
        answer = good;
    }
    const char *stopped_by = stop_index >= 0 ? s->trials[stop_index].status : "cap";
    char summary[1024], limit_text[160] = "";
    if (a->mem_limit > 0)
        snprintf(limit_text, sizeof(limit_text), "; largest with peak <= %.0f%% of --mem-limit %.1f MiB: %d",
                 100 * (1 - a->margin), a->mem_limit / 1048576.0, answer);
    else
        snprintf(limit_text, sizeof(limit_text), "; no --mem-limit: no margin applied (the search stops only "
                 "at a real failure or --max-batch %d)", a->max_batch);
    if (stop_index >= 0)
        snprintf(summary, sizeof(summary), "amp %s, accum %d, workers %d: largest batch that ran: %d (batch %d "
                 "ended %s)%s", amp, accum, workers, largest_fit, hi, stopped_by, limit_text);
    else
        snprintf(summary, sizeof(summary), "amp %s, accum %d, workers %d: every batch up to the cap --max-batch "
                 "%d ran%s", amp, accum, workers, a->max_batch, limit_text);
    json_t *o = json_object();
    json_object_set_new(o, "amp", json_string(amp));
    json_object_set_new(o, "accum", json_integer(accum));
    json_object_set_new(o, "workers", json_integer(workers));
    json_object_set_new(o, "largest_fitting", largest_fit ? json_integer(largest_fit) : json_null());
    json_object_set_new(o, "largest_within_margin", answer ? json_integer(answer) : json_null());
    json_object_set_new(o, "stopped_by", json_string(stopped_by));
    json_object_set_new(o, "summary", json_string(summary));
    json_array_append_new(results, o);
}

static void join_command_line(int argc, char **argv, char *out, size_t n) {
    size_t used = (size_t)snprintf(out, n, "detr-prof");
    for (int i = 0; i < argc && used < n; i++) used += (size_t)snprintf(out + used, n - used, " %s", argv[i]);
}

int prof_cmd_sweep(int argc, char **argv) {
    SweepArgs a;
    char err[4096];
    int rc = parse_args(argc, argv, &a, err, sizeof(err));
    if (rc > 0) {
        fputs(USAGE, stdout);
        return 0;
    }
    if (rc < 0) {
        fprintf(stderr, "detr-prof sweep: %s\n", err);
        return 2;
    }
    if (!a.auto_batch && a.n_batches == 0) {
        fprintf(stderr, "detr-prof sweep: --batch: empty list\n");
        return 2;
    }
    Sweep s;
    memset(&s, 0, sizeof(s));
    s.a = &a;
    if (find_train(s.train_path, sizeof(s.train_path), err, sizeof(err)) != 0) {
        fprintf(stderr, "detr-prof sweep: %s\n", err);
        return 2;
    }
    s.db = sweep_db_open(a.db_path, err, sizeof(err));
    if (!s.db) {
        fprintf(stderr, "detr-prof sweep: %s\n", err);
        return 1;
    }
    sweep_binary_revision(s.train_path, s.rev, sizeof(s.rev));
    char cmdline[8192];
    join_command_line(argc, argv, cmdline, sizeof(cmdline));
    s.sweep_id = sweep_db_begin(s.db, cmdline, s.rev, a.mem_limit, a.margin, a.target_batch, err, sizeof(err));
    if (s.sweep_id < 0) {
        fprintf(stderr, "detr-prof sweep: %s\n", err);
        sqlite3_close(s.db);
        return 1;
    }
    printf("sweep %lld: %s, detr-train %s (revision key %s), database %s\n", (long long)s.sweep_id,
           a.auto_batch ? "batch auto" : "batch grid", s.train_path, s.rev, a.db_path);
    if (a.mem_limit > 0)
        printf("memory limit %.1f MiB, margin %.0f%%: recommended trials keep their peak <= %.1f MiB\n",
               a.mem_limit / 1048576.0, 100 * a.margin, (1 - a.margin) * a.mem_limit / 1048576.0);
    fflush(stdout);

    g_sweep_stop = 0;
    sweep_install_signal_handlers();
    json_t *auto_results = a.auto_batch ? json_array() : NULL;
    if (!a.auto_batch) s.planned = a.n_batches * a.n_amps * a.n_accums * a.n_workers;
    for (int p = 0; p < a.n_amps && !s.stopped && !s.failed; p++)
        for (int c = 0; c < a.n_accums && !s.stopped && !s.failed; c++)
            for (int w = 0; w < a.n_workers && !s.stopped && !s.failed; w++) {
                if (a.auto_batch) {
                    auto_search(&s, a.amps[p], a.accums[c], a.workers[w], auto_results);
                    continue;
                }
                for (int b = 0; b < a.n_batches && !s.stopped && !s.failed; b++)
                    sweep_trial(&s, a.batches[b], a.amps[p], a.accums[c], a.workers[w], "grid");
            }
    sweep_restore_signal_handlers();
    if (g_sweep_stop) s.stopped = 1;

    SweepRecContext rc_ctx = {.mem_limit = a.mem_limit, .margin = a.margin, .target_batch = a.target_batch,
                              .workers_swept = a.n_workers > 1, .auto_results = auto_results};
    json_t *notes = json_array();
    if (s.stopped)
        json_array_append_new(notes, json_string("the sweep was interrupted: the recommendation covers the "
                                                 "trials that completed"));
    rc_ctx.notes = notes;
    int best = -1;
    char *rec = sweep_recommend(s.trials, s.n, &rc_ctx, &best);
    if (best >= 0) s.trials[best].recommended = 1;
    char *run_rev = NULL;
    for (int i = 0; i < s.n && !run_rev; i++)
        if (s.trials[i].run_id >= 0) run_rev = sweep_db_run_revision(s.db, s.trials[i].run_id);
    if (sweep_db_finish(s.db, s.sweep_id, s.stopped ? "interrupted" : "done", rec, run_rev,
                        best >= 0 ? s.trials[best].trial_id : -1, err, sizeof(err)) != 0) {
        fprintf(stderr, "detr-prof sweep: %s\n", err);
        s.failed = 1;
    }
    sweep_print_results(s.trials, s.n, rec, a.mem_limit, a.margin);
    printf("sweep %lld %s: %d trial(s) in %s (DETR_SWEEPS, DETR_SWEEP_TRIALS)\n", (long long)s.sweep_id,
           s.stopped ? "interrupted" : "done", s.n, a.db_path);
    free(run_rev);
    free(rec);
    json_decref(notes);
    json_decref(auto_results);
    int ok = best >= 0;
    sweep_trials_free(&s);
    if (s.tmpdir[0]) rmdir(s.tmpdir);
    sqlite3_close(s.db);
    if (s.stopped) return 130;
    return s.failed || !ok ? 1 : 0;
}
