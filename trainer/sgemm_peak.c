/* sgemm_peak.c - see sgemm_peak.h */
#include "sgemm_peak.h"
#include <cblas.h>
#include <stdlib.h>
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
