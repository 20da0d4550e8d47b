/* prof_sweep_internal.h - what the files of `detr-prof sweep` share (docs/prof-sweep.md):
 * the trial record, the child-process runner (prof_sweep_child.c), the sweep tables and the
 * per-trial metrics (prof_sweep_db.c), the recommendation and the printed table
 * (prof_sweep_report.c). The command itself is prof_sweep.c. */
#ifndef DETR_PROF_SWEEP_INTERNAL_H
#define DETR_PROF_SWEEP_INTERNAL_H
#include <jansson.h>
#include <signal.h>
#include <sqlite3.h>
#include <stddef.h>
#include <stdint.h>

#define SWEEP_LOADER_WAIT_LIMIT 0.10 /* loader-wait fraction above which the loader is the limit */

/* One trial: a configuration, how it ended and what it measured. Unknown numbers are NaN
 * (reals) or -1 (integers), stored as NULL. */
typedef struct {
    int64_t trial_id, run_id, reused_from;
    int batch, accum, workers;
    char amp[8];
    const char *phase;        /* grid | auto-double | auto-bisect */
    char status[8];           /* ok | oom | error | timeout */
    int exit_code;            /* -1: none (signal, timeout, never started) */
    char *message;            /* last stderr lines when not ok (owned) */
    double images_per_s, loader_wait_fraction, mfu, padded_fraction, seconds;
    int64_t step_p50_ns, step_p90_ns, step_p99_ns, peak_bytes;
    char *peak_json;          /* {"category":bytes,...} (owned) */
    char *config_key;         /* (owned) */
    int64_t start_ns, end_ns;
    int recommended;
} SweepTrial;

/* The sweep's options and state, shared by prof_sweep.c (options, the search) and
 * prof_sweep_trial.c (one trial). */
#define SWEEP_MAX_LIST 64
typedef struct {
    int batches[SWEEP_MAX_LIST], n_batches, auto_batch, max_batch;
    char amps[SWEEP_MAX_LIST][8];
    int n_amps;
    int accums[SWEEP_MAX_LIST], n_accums;
    int workers[SWEEP_MAX_LIST], n_workers;
    int steps, warmup, target_batch, fresh;
    double margin, timeout_s;
    const char *db_path;
    char **train_opts;        /* the detr-train options after -- (borrowed from argv) */
    int n_train_opts;
    int64_t mem_limit;        /* their --mem-limit in bytes, 0 = none */
    int user_out;             /* they include --out: trials write there */
} SweepArgs;

typedef struct {
    const SweepArgs *a;
    sqlite3 *db;
    int64_t sweep_id;
    char train_path[4096];    /* the detr-train binary */
    char rev[256];            /* its revision, part of every config key */
    char tmpdir[4096];        /* per-trial --out folders when the user gives none ("" = none yet) */
    SweepTrial *trials;
    int n, cap;
    int planned;              /* trials planned (grid), 0 when unknown (auto search) */
    int stopped;              /* SIGINT/SIGTERM: stop starting trials */
    int failed;               /* a database write failed: stop */
} Sweep;

/* Runs (or reuses) one configuration and records it; returns its index in s->trials, or -1
 * when the sweep was stopped or could not record it. A configuration already run in this sweep
 * is not run again (its index is returned). prof_sweep_trial.c. */
int sweep_trial(Sweep *s, int batch, const char *amp, int accum, int workers, const char *phase);
/* The revision key of the detr-train binary (prof_sweep_trial.c). */
void sweep_binary_revision(const char *train_path, char *out, size_t n);
void sweep_trials_free(Sweep *s);

/* ---- the child process (prof_sweep_child.c) ---- */
typedef struct {
    int pid;
    int exit_code;            /* -1 when it did not exit normally */
    int term_signal;          /* the signal that ended it, 0 if none */
    int timed_out, interrupted;
    char *tail;               /* the last SWEEP_TAIL_LINES lines of its stderr (owned) */
} ChildResult;
#define SWEEP_TAIL_LINES 20

/* Set by SIGINT/SIGTERM while a sweep runs (prof_sweep_child.c installs the handler). */
extern volatile sig_atomic_t g_sweep_stop;
void sweep_install_signal_handlers(void);
void sweep_restore_signal_handlers(void);

/* Runs argv[0] with argv in its own process group, stdin and stdout on /dev/null (stdout into
 * the tail instead when capture_stdout), stderr captured. Kills the group after timeout_s
 * (timed_out) or when g_sweep_stop is set (interrupted). Returns 0, or -1 when it could not
 * start (err says why). */
int sweep_run_child(char *const argv[], double timeout_s, int capture_stdout, ChildResult *r,
                    char *err, size_t errlen);
void child_result_free(ChildResult *r);

/* ---- the database (prof_sweep_db.c) ---- */
/* Opens (creating if needed) path for writing: the profile schema, WAL, the sweep tables. */
sqlite3 *sweep_db_open(const char *path, char *err, size_t errlen);
int64_t sweep_db_begin(sqlite3 *db, const char *command_line, const char *git_rev,
                       int64_t mem_limit, double margin, int target_batch, char *err, size_t errlen);
/* The child's run: the newest DETR_RUNS row with this pid started at or after since_ns; -1. */
int64_t sweep_db_find_run(sqlite3 *db, int pid, int64_t since_ns);
/* Fills t's metrics from run_id's rows, skipping the first warmup steps. 0, or -1 if no steps. */
int sweep_db_metrics(sqlite3 *db, int64_t run_id, int warmup, SweepTrial *t);
/* The newest earlier trial with this config key and status ok/oom (not itself a reuse), copied
 * into *t (status, exit_code, message, run_id; trial_id in reused_from). 1 found, 0 none. */
int sweep_db_find_reusable(sqlite3 *db, const char *config_key, SweepTrial *t);
int sweep_db_insert_trial(sqlite3 *db, int64_t sweep_id, SweepTrial *t, char *err, size_t errlen);
/* Ends the sweep: status, end time, the recommendation, the revision its runs were built from
 * (NULL keeps the one given at the start), and recommended = 1 on that trial (if > 0). */
int sweep_db_finish(sqlite3 *db, int64_t sweep_id, const char *status, const char *rec_json,
                    const char *git_rev, int64_t recommended_trial, char *err, size_t errlen);
/* DETR_RUNS.git_revision of run_id (owned), or NULL. */
char *sweep_db_run_revision(sqlite3 *db, int64_t run_id);

/* ---- recommendation and printing (prof_sweep_report.c) ---- */
typedef struct {
    int64_t mem_limit;        /* bytes, 0 = none */
    double margin;
    int target_batch;         /* 0 = none */
    int workers_swept;        /* more than one --workers value */
    json_t *auto_results;     /* array of the auto searches' answers, or NULL (borrowed) */
    json_t *notes;            /* array of notes from the search, or NULL (borrowed) */
} SweepRecContext;

/* 1 when the trial ran ok and its peak is within (1 - margin) x limit (or there is no limit). */
int sweep_trial_within_margin(const SweepTrial *t, int64_t mem_limit, double margin);
/* The one-line reason of a failed trial: its first "error:" line, else its last line. */
void sweep_trial_reason(const SweepTrial *t, char *out, size_t n);
/* Builds the recommendation JSON (caller frees) and sets *recommended to the index of the
 * fastest fitting trial (-1 if none). */
char *sweep_recommend(SweepTrial *trials, int n, const SweepRecContext *c, int *recommended);
/* The ranked table (ok trials fastest first, then the failed ones with their reason), then the
 * recommendation in words. */
void sweep_print_results(const SweepTrial *trials, int n, const char *rec_json, int64_t mem_limit,
                         double margin);

#endif
