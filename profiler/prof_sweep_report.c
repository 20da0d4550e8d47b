/* prof_sweep_report.c - the sweep's recommendation (the JSON stored in
 * DETR_SWEEPS.recommendation_json) and the ranked table it prints (docs/prof-sweep.md). */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "prof_sweep_internal.h"

int sweep_trial_within_margin(const SweepTrial *t, int64_t mem_limit, double margin) {
    if (strcmp(t->status, "ok") != 0) return 0;
    if (mem_limit <= 0 || t->peak_bytes < 0) return 1; /* nothing to compare with: it ran */
    return (double)t->peak_bytes <= (1.0 - margin) * (double)mem_limit;
}

void sweep_trial_reason(const SweepTrial *t, char *out, size_t n) {
    const char *m = t->message ? t->message : "";
    const char *line = NULL, *p = m;
    while (p && *p) { /* the first line that says "error" */
        if (strncmp(p, "error", 5) == 0) {
            line = p;
            break;
        }
        p = strchr(p, '\n');
        if (p) p++;
    }
    if (!line) { /* else the last non-empty line */
        const char *end = m + strlen(m);
        while (end > m && (end[-1] == '\n' || end[-1] == ' ')) end--;
        line = end;
        while (line > m && line[-1] != '\n') line--;
    }
    size_t len = strcspn(line, "\n");
    if (len == 0) {
        snprintf(out, n, "exit code %d, no message", t->exit_code);
        return;
    }
    /* detr-train's refusal lists the estimate per category: add its total and the budget */
    const char *total = len && line[len - 1] == ':' ? strstr(line, "\n  total") : NULL;
    const char *budget = total ? strstr(total, "\n  budget") : NULL;
    if (total && budget) {
        const char *tp = strchr(total, '('), *bp = strchr(budget, '(');
        while (tp && tp[1] == ' ') tp++;
        while (bp && bp[1] == ' ') bp++;
        if (tp && bp) {
            snprintf(out, n, "%.*s total %.*s, budget %.*s", (int)len - 1, line, (int)strcspn(tp + 1, ")"),
                     tp + 1, (int)strcspn(bp + 1, ")"), bp + 1);
            return;
        }
    }
    snprintf(out, n, "%.*s", (int)len, line);
}

static int faster(const SweepTrial *a, const SweepTrial *b) {
    double x = isfinite(a->images_per_s) ? a->images_per_s : -1;
    double y = isfinite(b->images_per_s) ? b->images_per_s : -1;
    return x > y;
}

static json_t *trial_json(const SweepTrial *t) {
    json_t *o = json_object();
    json_object_set_new(o, "trial_id", json_integer(t->trial_id));
    json_object_set_new(o, "batch", json_integer(t->batch));
    json_object_set_new(o, "amp", json_string(t->amp));
    json_object_set_new(o, "accum", json_integer(t->accum));
    json_object_set_new(o, "workers", json_integer(t->workers));
    json_object_set_new(o, "images_per_s", isfinite(t->images_per_s) ? json_real(t->images_per_s) : json_null());
    return o;
}

static void add_text(json_t *arr, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void add_text(json_t *arr, const char *fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    json_array_append_new(arr, json_string(buf));
}

/* --target-batch T: the fastest fitting (batch, accum) with batch x accum = T; when no trial ran
 * with that accum, the fastest fitting batch dividing T, measured with another accum (said so). */
static json_t *target_json(const SweepTrial *tr, int n, const SweepRecContext *c, json_t *warnings) {
    int T = c->target_batch, exact = -1, other = -1;
    for (int i = 0; i < n; i++) {
        if (!sweep_trial_within_margin(&tr[i], c->mem_limit, c->margin) || T % tr[i].batch) continue;
        if (tr[i].batch * tr[i].accum == T) {
            if (exact < 0 || faster(&tr[i], &tr[exact])) exact = i;
        } else if (other < 0 || faster(&tr[i], &tr[other])) {
            other = i;
        }
    }
    int pick = exact >= 0 ? exact : other;
    if (pick < 0) {
        add_text(warnings, "--target-batch %d: no trial that fits divides it (batch x accum = %d needs a "
                 "batch that divides %d); sweep such batches", T, T, T);
        return json_null();
    }
    const SweepTrial *t = &tr[pick];
    json_t *o = json_object();
    json_object_set_new(o, "batch", json_integer(t->batch));
    json_object_set_new(o, "accum", json_integer(T / t->batch));
    json_object_set_new(o, "trial_id", exact >= 0 ? json_integer(t->trial_id) : json_null());
    json_object_set_new(o, "images_per_s", isfinite(t->images_per_s) ? json_real(t->images_per_s) : json_null());
    json_object_set_new(o, "measured_with_accum", json_boolean(exact >= 0));
    char note[512];
    if (exact >= 0)
        snprintf(note, sizeof(note), "batch %d x accum %d reaches %d images per optimizer step fastest: "
                 "%.1f images/s (trial %lld, amp %s, workers %d)", t->batch, t->accum, T, t->images_per_s,
                 (long long)t->trial_id, t->amp, t->workers);
    else
        snprintf(note, sizeof(note), "batch %d x accum %d for %d images per step: not run with --accum %d; "
                 "%.1f images/s is batch %d measured with --accum %d (trial %lld); sweep --accum %d to "
                 "measure it", t->batch, T / t->batch, T, T / t->batch, t->images_per_s, t->batch, t->accum,
                 (long long)t->trial_id, T / t->batch);
    json_object_set_new(o, "note", json_string(note));
    return o;
}

/* Groups of trials that differ only in --workers: a loader-wait above the limit in one of them,
 * and the worker count that brought it under the limit, if any. */
static void loader_warnings(const SweepTrial *tr, int n, const SweepTrial *best, const SweepRecContext *c,
                            json_t *warnings) {
    for (int i = 0; i < n; i++) {
        const SweepTrial *t = &tr[i];
        if (strcmp(t->status, "ok") || !(t->loader_wait_fraction > SWEEP_LOADER_WAIT_LIMIT)) continue;
        int seen = 0, fix = -1;
        for (int j = 0; j < n; j++) {
            const SweepTrial *u = &tr[j];
            if (u->batch != t->batch || u->accum != t->accum || strcmp(u->amp, t->amp) || strcmp(u->status, "ok"))
                continue;
            if (j < i && u->loader_wait_fraction > SWEEP_LOADER_WAIT_LIMIT) seen = 1; /* group reported */
            if (!(u->loader_wait_fraction > SWEEP_LOADER_WAIT_LIMIT) && (fix < 0 || faster(u, &tr[fix]))) fix = j;
        }
        if (seen) continue;
        char where[160];
        snprintf(where, sizeof(where), "batch %d, amp %s, accum %d, workers %d", t->batch, t->amp, t->accum,
                 t->workers);
        if (fix >= 0)
            add_text(warnings, "the loader limits %s: the model waited %.0f%% of the step time for data; "
                     "--workers %d fixed it (%.1f%% wait, %.1f images/s)", where, 100 * t->loader_wait_fraction,
                     tr[fix].workers, 100 * tr[fix].loader_wait_fraction, tr[fix].images_per_s);
        else
            add_text(warnings, "the loader, not the model, limits %s%s: the model waited %.0f%% of the step "
                     "time for data (> %.0f%%); %s", where, t == best ? " (the recommended configuration)" : "",
                     100 * t->loader_wait_fraction, 100 * SWEEP_LOADER_WAIT_LIMIT,
                     c->workers_swept ? "no swept --workers value brought it under the limit: try more workers "
                                        "or a faster decode (detr-data bench)"
                                      : "sweep --workers (e.g. --workers 1,2,4) to find the count that fixes it");
    }
}

char *sweep_recommend(SweepTrial *tr, int n, const SweepRecContext *c, int *recommended) {
    json_t *rec = json_object(), *warnings = json_array(), *notes = json_array();
    int best = -1;
    for (int i = 0; i < n; i++)
        if (sweep_trial_within_margin(&tr[i], c->mem_limit, c->margin) && isfinite(tr[i].images_per_s) &&
            (best < 0 || faster(&tr[i], &tr[best])))
            best = i;
    *recommended = best;
    json_object_set_new(rec, "fastest", best >= 0 ? trial_json(&tr[best]) : json_null());
    if (best < 0)
        add_text(warnings, "no trial ran ok%s: nothing to recommend (see the failed trials' reasons)",
                 c->mem_limit > 0 ? " within the memory margin" : "");
    json_object_set_new(rec, "target", c->target_batch > 0 ? target_json(tr, n, c, warnings) : json_null());
    if (c->auto_results) json_object_set(rec, "auto", c->auto_results);
    loader_warnings(tr, n, best >= 0 ? &tr[best] : NULL, c, warnings);
    for (int i = 0; i < n; i++)
        if (!strcmp(tr[i].status, "ok") && !sweep_trial_within_margin(&tr[i], c->mem_limit, c->margin)) {
            add_text(notes, "batch %d (amp %s, accum %d, workers %d) ran but its peak %.1f MiB is above "
                     "%.0f%% of --mem-limit (%.1f MiB): not recommended", tr[i].batch, tr[i].amp, tr[i].accum,
                     tr[i].workers, tr[i].peak_bytes / 1048576.0, 100 * (1 - c->margin),
                     (1 - c->margin) * c->mem_limit / 1048576.0);
        }
    if (c->notes) json_array_extend(notes, c->notes);
    add_text(notes, "learning rate: the reference DETR does not rescale the learning rate with the total "
             "batch size, and neither does detr-train: if you change the effective batch (batch x accum), "
             "--lr and --lr-backbone stay the reference's unless you choose to scale them");
    json_object_set_new(rec, "warnings", warnings);
    json_object_set_new(rec, "notes", notes);
    char *text = json_dumps(rec, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(rec);
    return text;
}

static int by_speed(const void *a, const void *b) {
    const SweepTrial *x = *(const SweepTrial *const *)a, *y = *(const SweepTrial *const *)b;
    if (faster(x, y)) return -1;
    if (faster(y, x)) return 1;
    return (x->trial_id > y->trial_id) - (x->trial_id < y->trial_id);
}

static void print_ms(int64_t ns) {
    if (ns >= 0) printf(" %8.1f", ns / 1e6);
    else printf(" %8s", "-");
}
static void print_pct(double f) {
    if (isfinite(f)) printf(" %6.1f", 100 * f);
    else printf(" %6s", "-");
}

void sweep_print_results(const SweepTrial *tr, int n, const char *rec_json, int64_t mem_limit, double margin) {
    const SweepTrial **order = malloc((n ? n : 1) * sizeof(*order));
    if (!order) return;
    int n_ok = 0;
    for (int i = 0; i < n; i++)
        if (!strcmp(tr[i].status, "ok")) order[n_ok++] = &tr[i];
    qsort(order, n_ok, sizeof(*order), by_speed);
    if (n_ok)
        printf("\n%4s %6s %6s %5s %5s %7s %9s %8s %8s %8s %9s %6s %6s %6s\n", "rank", "trial", "batch", "amp",
           "accum", "workers", "images/s", "p50 ms", "p90 ms", "p99 ms", "peak MiB", "wait%", "MFU%", "pad%");
    for (int r = 0; r < n_ok; r++) {
        const SweepTrial *t = order[r];
        printf("%4d %6lld %6d %5s %5d %7d", r + 1, (long long)t->trial_id, t->batch, t->amp, t->accum, t->workers);
        if (isfinite(t->images_per_s)) printf(" %9.1f", t->images_per_s);
        else printf(" %9s", "-");
        print_ms(t->step_p50_ns);
        print_ms(t->step_p90_ns);
        print_ms(t->step_p99_ns);
        if (t->peak_bytes >= 0) printf(" %9.1f", t->peak_bytes / 1048576.0);
        else printf(" %9s", "-");
        print_pct(t->loader_wait_fraction);
        print_pct(t->mfu);
        print_pct(t->padded_fraction);
        printf("%s%s%s\n", t->recommended ? "  <- recommended" : "",
               sweep_trial_within_margin(t, mem_limit, margin) ? "" : "  (over the margin)",
               t->reused_from > 0 ? "  (reused)" : "");
    }
    if (n_ok < n) printf("%sfailed:\n", n_ok ? "" : "\n");
    for (int i = 0; i < n; i++) {
        if (!strcmp(tr[i].status, "ok")) continue;
        char reason[512];
        sweep_trial_reason(&tr[i], reason, sizeof(reason));
        printf("  trial %lld  batch %d amp %s accum %d workers %d: %s%s - %s\n", (long long)tr[i].trial_id,
               tr[i].batch, tr[i].amp, tr[i].accum, tr[i].workers, tr[i].status,
               tr[i].reused_from > 0 ? " (reused)" : "", reason);
    }
    free(order);
    json_t *rec = rec_json ? json_loads(rec_json, 0, NULL) : NULL;
    if (!rec) return;
    json_t *f = json_object_get(rec, "fastest");
    printf("\n");
    if (json_is_object(f))
        printf("recommendation: batch %lld, amp %s, accum %lld, workers %lld: %.1f images/s (trial %lld)\n",
               json_integer_value(json_object_get(f, "batch")), json_string_value(json_object_get(f, "amp")),
               json_integer_value(json_object_get(f, "accum")), json_integer_value(json_object_get(f, "workers")),
               json_number_value(json_object_get(f, "images_per_s")),
               json_integer_value(json_object_get(f, "trial_id")));
    json_t *t = json_object_get(rec, "target");
    if (json_is_object(t)) printf("target: %s\n", json_string_value(json_object_get(t, "note")));
    size_t k;
    json_t *v;
    json_array_foreach(json_object_get(rec, "auto"), k, v) {
        printf("auto: %s\n", json_string_value(json_object_get(v, "summary")));
    }
    json_array_foreach(json_object_get(rec, "warnings"), k, v) printf("warning: %s\n", json_string_value(v));
    json_array_foreach(json_object_get(rec, "notes"), k, v) printf("note: %s\n", json_string_value(v));
    json_decref(rec);
}
