/* sgemm_peak.c - see sgemm_peak.h */
#include "sgemm_peak.h"
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "cache_dir.h"
#include "timer.h"

double sgemm_peak_flops(int n) {
    float *a = malloc(sizeof(float) * n * n), *b = malloc(sizeof(float) * n * n),
          *c = malloc(sizeof(float) * n * n);
    if (!a || !b || !c) {
        free(a); free(b); free(c);
        return 0;
    }
    for (long i = 0; i < (long)n * n; i++) a[i] = b[i] = 0.001f * (float)(i % 997), c[i] = 0;
    double best = 0;
    for (int r = 0; r < 4; r++) {
        double t0 = timer_now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
        double f = 2.0 * n * (double)n * n / (timer_now() - t0);
        if (r > 0 && f > best) best = f; /* the first call warms up the threads */
    }
    free(a); free(b); free(c);
    return best;
}

static void cpu_model(char *out, size_t len) {
    snprintf(out, len, "unknown");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return;
    char line[512];
    while (fgets(line, sizeof(line), f)) {
        char *colon = strchr(line, ':');
        if (strncmp(line, "model name", 10) == 0 && colon) {
            snprintf(out, len, "%s", colon + 2);
            out[strcspn(out, "\n")] = 0;
            break;
        }
    }
    fclose(f);
}

/* The project's cache folder (cache_dir.h), created; 0 or -1. */
static int cache_dir(char *out, size_t len) {
    if (cache_root_default(out, len) != 0) return -1;
    char *slash = strrchr(out, '/'); /* its parent ($XDG_CACHE_HOME or ~/.cache) may not exist yet */
    if (slash && slash != out) {
        *slash = 0;
        mkdir(out, 0755);
        *slash = '/';
    }
    return mkdir(out, 0755) == 0 || access(out, W_OK) == 0 ? 0 : -1;
}

double sgemm_peak_flops_best(int n, int threads) {
    double now = sgemm_peak_flops(n);
    char dir[4200], path[4400], tmp[4500], model[256], cached_model[256] = "";
    if (cache_dir(dir, sizeof(dir)) != 0) return now;
    snprintf(path, sizeof(path), "%s/sgemm-peak-t%d-n%d", dir, threads, n);
    cpu_model(model, sizeof(model));
    double best = 0;
    FILE *f = fopen(path, "r");
    if (f) {
        if (fscanf(f, "%lf\n", &best) != 1 || !fgets(cached_model, sizeof(cached_model), f)) best = 0;
        cached_model[strcspn(cached_model, "\n")] = 0;
        fclose(f);
        if (strcmp(cached_model, model) != 0 || !(best > 0 && best < 1e16)) best = 0; /* another machine */
    }
    if (now <= best) return best;
    snprintf(tmp, sizeof(tmp), "%s.%d.tmp", path, (int)getpid());
    f = fopen(tmp, "w");
    if (f) {
        int ok = fprintf(f, "%.6e\n%s\n", now, model) > 0;
        ok &= fclose(f) == 0;
        if (!ok || rename(tmp, path) != 0) unlink(tmp);
    }
    return now;
}
