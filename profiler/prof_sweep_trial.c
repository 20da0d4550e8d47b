/* prof_sweep_trial.c - one trial of `detr-prof sweep`: its configuration key, reuse of an
 * earlier identical trial, the child `detr-train --profile` process, its status and metrics,
 * and its row in DETR_SWEEP_TRIALS (docs/prof-sweep.md). */
#include <errno.h>
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "mem.h" /* EXIT_OOM: detr-train's out-of-memory exit code */
#include "prof.h"
#include "prof_sweep_internal.h"

/* 64-bit FNV-1a of the file's bytes, or 0 if unreadable. */
static uint64_t file_hash(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    uint64_t h = 1469598103934665603ULL;
    unsigned char buf[65536];
    size_t got;
    while ((got = fread(buf, 1, sizeof(buf), f)) > 0)
        for (size_t i = 0; i < got; i++) h = (h ^ buf[i]) * 1099511628211ULL;
    fclose(f);
    return h;
}

/* The git revision from `detr-train --version` when it prints one ("revision X" line), else the
 * binary's hash; a revision of a modified tree ("-modified") gets the hash too, since two
 * builds of different uncommitted changes share that name. */
void sweep_binary_revision(const char *train_path, char *out, size_t n) {
    char rev[128] = "";
    char *argv[] = {(char *)train_path, "--version", NULL};
    ChildResult r;
    char err[256];
    if (sweep_run_child(argv, 30, 1, &r, err, sizeof(err)) == 0) {
        for (const char *p = r.tail; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL) {
            const char *w = strstr(p, "revision");
            const char *eol = strchr(p, '\n');
            if (w && (!eol || w < eol) && sscanf(w + 8, " %127s", rev) == 1) break;
        }
        child_result_free(&r);
    }
    uint64_t h = file_hash(train_path);
    if (!rev[0]) snprintf(out, n, "bin:%016llx", (unsigned long long)h);
    else if (strstr(rev, "modified")) snprintf(out, n, "%s+bin:%016llx", rev, (unsigned long long)h);
    else snprintf(out, n, "%s", rev);
}

/* Text builder that grows. */
typedef struct {
    char *s;
    size_t len, cap;
} Text;

static void text_add(Text *t, const char *v) {
    size_t n = strlen(v);
    if (t->len + n + 1 > t->cap) {
        size_t cap = (t->len + n + 1) * 2;
        char *s = realloc(t->s, cap);
        if (!s) return;
        t->s = s, t->cap = cap;
    }
    memcpy(t->s + t->len, v, n + 1);
    t->len += n;
}

/* "batch=B accum=A workers=W amp=P steps=S | the detr-train options | rev=R": "--x=v" is written
 * "--x v" and --out is left out (it names where files go, not what runs). */
static char *config_key(const Sweep *s, int batch, const char *amp, int accum, int workers) {
    const SweepArgs *a = s->a;
    Text t = {0};
    char head[160];
    snprintf(head, sizeof(head), "batch=%d accum=%d workers=%d amp=%s steps=%d |", batch, accum, workers,
             amp, a->warmup + a->steps);
    text_add(&t, head);
    for (int i = 0; i < a->n_train_opts; i++) {
        const char *o = a->train_opts[i];
        if (!strcmp(o, "--out")) {
            i++;
            continue;
        }
        if (!strncmp(o, "--out=", 6)) continue;
        const char *eq = !strncmp(o, "--", 2) ? strchr(o, '=') : NULL;
        text_add(&t, " ");
        if (eq) {
            char name[128];
            snprintf(name, sizeof(name), "%.*s", (int)(eq - o) < 127 ? (int)(eq - o) : 127, o);
            text_add(&t, name);
            text_add(&t, " ");
            text_add(&t, eq + 1);
        } else {
            text_add(&t, o);
        }
    }
    text_add(&t, " | rev=");
    text_add(&t, s->rev);
    return t.s;
}

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    remove(path);
    return 0;
}

static void remove_tree(const char *path) { nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS); }

static void trial_init(SweepTrial *t, int batch, const char *amp, int accum, int workers, const char *phase) {
    memset(t, 0, sizeof(*t));
    t->trial_id = t->run_id = t->reused_from = -1;
    t->batch = batch, t->accum = accum, t->workers = workers;
    snprintf(t->amp, sizeof(t->amp), "%s", amp);
    t->phase = phase;
    t->exit_code = -1;
    t->images_per_s = t->loader_wait_fraction = t->mfu = t->padded_fraction = NAN;
    t->step_p50_ns = t->step_p90_ns = t->step_p99_ns = t->peak_bytes = -1;
}

static void trial_free(SweepTrial *t) {
    free(t->message);
    free(t->peak_json);
    free(t->config_key);
}

void sweep_trials_free(Sweep *s) {
    for (int i = 0; i < s->n; i++) trial_free(&s->trials[i]);
    free(s->trials);
    s->trials = NULL;
    s->n = s->cap = 0;
}

static char *joined_message(const char *first, const char *tail) {
    size_t n = strlen(first) + (tail ? strlen(tail) : 0) + 2;
    char *m = malloc(n);
    if (m) snprintf(m, n, "%s%s%s", first, tail && *tail ? "\n" : "", tail ? tail : "");
    return m;
}

/* Runs the child; fills status, exit code, message, run id and metrics. 1 if interrupted. */
static int run_child_trial(Sweep *s, SweepTrial *t, int index) {
    const SweepArgs *a = s->a;
    char out_dir[4200] = "", nums[5][16];
    if (!a->user_out) {
        if (!s->tmpdir[0]) {
            const char *base = getenv("TMPDIR");
            snprintf(s->tmpdir, sizeof(s->tmpdir), "%s/detr-sweep-XXXXXX", base && *base ? base : "/tmp");
            if (!mkdtemp(s->tmpdir)) {
                fprintf(stderr, "detr-prof sweep: cannot create a folder for the trials' outputs (%s): %s; "
                        "HINT: set TMPDIR, or give --out after --\n", s->tmpdir, strerror(errno));
                s->tmpdir[0] = 0;
                s->failed = 1;
                return 0;
            }
        }
        snprintf(out_dir, sizeof(out_dir), "%s/trial-%d", s->tmpdir, index + 1);
    }
    int total = a->warmup + a->steps;
    snprintf(nums[0], 16, "%d", total);
    snprintf(nums[1], 16, "%d", t->batch);
    snprintf(nums[2], 16, "%d", t->accum);
    snprintf(nums[3], 16, "%d", t->workers);
    char **argv = calloc(32 + a->n_train_opts, sizeof(char *));
    if (!argv) {
        s->failed = 1;
        return 0;
    }
    int k = 0;
    argv[k++] = s->train_path;
    argv[k++] = "--profile";
    argv[k++] = "--db";
    argv[k++] = (char *)a->db_path;
    /* defaults the detr-train options may override: enough epochs for the steps, no evaluation,
     * one checkpoint */
    argv[k++] = "--epochs", argv[k++] = nums[0];
    argv[k++] = "--eval-every", argv[k++] = "0";
    argv[k++] = "--checkpoint-every", argv[k++] = nums[0];
    argv[k++] = "--log-every", argv[k++] = nums[0];
    if (out_dir[0]) argv[k++] = "--out", argv[k++] = out_dir;
    for (int i = 0; i < a->n_train_opts; i++) argv[k++] = a->train_opts[i];
    argv[k++] = "--steps", argv[k++] = nums[0];
    argv[k++] = "--batch", argv[k++] = nums[1];
    argv[k++] = "--accum", argv[k++] = nums[2];
    argv[k++] = "--workers", argv[k++] = nums[3];
    argv[k++] = "--amp", argv[k++] = t->amp;
    argv[k] = NULL;

    ChildResult r;
    char err[512];
    t->start_ns = prof_now_ns();
    int rc = sweep_run_child(argv, a->timeout_s, 0, &r, err, sizeof(err));
    t->end_ns = prof_now_ns();
    free(argv);
    if (out_dir[0]) remove_tree(out_dir);
    if (rc != 0) {
        snprintf(t->status, sizeof(t->status), "error");
        t->message = strdup(err);
        return 0;
    }
    if (r.interrupted) {
        child_result_free(&r);
        return 1;
    }
    t->exit_code = r.exit_code;
    t->run_id = sweep_db_find_run(s->db, r.pid, t->start_ns);
    char first[256];
    if (r.timed_out) {
        snprintf(t->status, sizeof(t->status), "timeout");
        snprintf(first, sizeof(first), "error: no exit within --timeout %.0f s: killed its process group",
                 a->timeout_s);
        t->message = joined_message(first, r.tail);
    } else if (r.exit_code == 0) {
        snprintf(t->status, sizeof(t->status), "ok");
        if (t->run_id < 0 || sweep_db_metrics(s->db, t->run_id, a->warmup, t) != 0)
            t->message = joined_message(t->run_id < 0 ? "warning: no profile run of this process in the database"
                                                      : "warning: no steps recorded after the warm-up", r.tail);
    } else {
        snprintf(t->status, sizeof(t->status), "%s", r.exit_code == EXIT_OOM ? "oom" : "error");
        if (r.term_signal) {
            snprintf(first, sizeof(first), "error: killed by signal %d (%s)", r.term_signal,
                     strsignal(r.term_signal));
            t->message = joined_message(first, r.tail);
        } else {
            t->message = r.tail && *r.tail ? strdup(r.tail) : NULL;
        }
        /* a run that died on its budget mid-way still tells how far its memory got */
        if (t->run_id >= 0) {
            SweepTrial m;
            trial_init(&m, t->batch, t->amp, t->accum, t->workers, t->phase);
            sweep_db_metrics(s->db, t->run_id, 0, &m);
            t->peak_bytes = m.peak_bytes;
            t->peak_json = m.peak_json;
        }
    }
    child_result_free(&r);
    return 0;
}

static void print_outcome(const SweepTrial *t) {
    printf("%s", t->status);
    if (t->reused_from > 0) printf(" (reused trial %lld)", (long long)t->reused_from);
    if (isfinite(t->images_per_s)) printf("  %.1f images/s", t->images_per_s);
    if (t->peak_bytes >= 0) printf("  peak %.1f MiB", t->peak_bytes / 1048576.0);
    if (strcmp(t->status, "ok")) {
        char reason[300];
        sweep_trial_reason(t, reason, sizeof(reason));
        printf("  [%s]", reason);
    } else if (t->reused_from < 0) {
        printf("  (%.1f s)", (t->end_ns - t->start_ns) * 1e-9);
    }
    printf("\n");
    fflush(stdout);
}

int sweep_trial(Sweep *s, int batch, const char *amp, int accum, int workers, const char *phase) {
    for (int i = 0; i < s->n; i++) {
        const SweepTrial *u = &s->trials[i];
        if (u->batch == batch && u->accum == accum && u->workers == workers && !strcmp(u->amp, amp)) return i;
    }
    if (s->stopped || s->failed || g_sweep_stop) {
        s->stopped |= g_sweep_stop != 0;
        return -1;
    }
    if (s->n == s->cap) {
        int cap = s->cap ? 2 * s->cap : 16;
        SweepTrial *grown = realloc(s->trials, cap * sizeof(SweepTrial));
        if (!grown) {
            s->failed = 1;
            return -1;
        }
        s->trials = grown, s->cap = cap;
    }
    SweepTrial *t = &s->trials[s->n];
    trial_init(t, batch, amp, accum, workers, phase);
    t->config_key = config_key(s, batch, amp, accum, workers);
    if (s->planned) printf("[%d/%d] ", s->n + 1, s->planned);
    else printf("[%d %s] ", s->n + 1, phase);
    printf("batch %d amp %s accum %d workers %d ... ", batch, amp, accum, workers);
    fflush(stdout);
    if (!s->a->fresh && sweep_db_find_reusable(s->db, t->config_key, t)) {
        t->start_ns = t->end_ns = prof_now_ns();
        if (!strcmp(t->status, "ok")) {
            free(t->message);
            t->message = NULL;
            sweep_db_metrics(s->db, t->run_id, s->a->warmup, t); /* with this sweep's --warmup */
        } else if (t->run_id >= 0) {
            sweep_db_metrics(s->db, t->run_id, 0, t);
            t->images_per_s = t->loader_wait_fraction = t->mfu = t->padded_fraction = NAN;
            t->step_p50_ns = t->step_p90_ns = t->step_p99_ns = -1;
        }
    } else if (run_child_trial(s, t, s->n)) {
        printf("interrupted\n");
        trial_free(t);
        s->stopped = 1;
        return -1;
    }
    if (s->failed) {
        trial_free(t);
        return -1;
    }
    char err[512];
    if (sweep_db_insert_trial(s->db, s->sweep_id, t, err, sizeof(err)) != 0) {
        printf("\n");
        fprintf(stderr, "detr-prof sweep: %s\n", err);
        trial_free(t);
        s->failed = 1;
        return -1;
    }
    print_outcome(t);
    return s->n++;
}
