/* backend_cpu_dense.c - GEMM, linear layers, transpose, LayerNorm and softmax on the CPU.
 * GEMMs go to OpenBLAS (called outside any OpenMP region); row loops use OpenMP. */
#include <math.h>
#include "backend_cpu_internal.h"

static CBLAS_TRANSPOSE cblas_op(int trans) { return trans ? CblasTrans : CblasNoTrans; }

void cpu_gemm(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
              long strideA, const float *B, int ldb, long strideB, float beta, float *C, int ldc,
              long strideC, int batch) {
    for (int i = 0; i < batch; i++)
        cblas_sgemm(CblasRowMajor, cblas_op(transA), cblas_op(transB), M, N, K, alpha,
                    A + i * strideA, lda, B + i * strideB, ldb, beta, C + i * strideC, ldc);
}

/* y[T,O] = x[T,In] w[O,In]^T + b[O] */
void cpu_linear_forward(const float *x, const float *w, const float *b, float *y, int T, int In,
                        int O) {
    float beta = 0.0f;
    if (b) { /* rows of y start as the bias; the GEMM accumulates onto them */
#pragma omp parallel for schedule(static) if ((size_t)T * O > CPU_PAR_MIN)
        for (int t = 0; t < T; t++) {
            float *yt = y + (size_t)t * O;
#pragma omp simd
            for (int o = 0; o < O; o++) yt[o] = b[o];
        }
        beta = 1.0f;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, O, In, 1.0f, x, In, w, In, beta, y, O);
}

/* db[O] += column sums of dy [T, O]: threads own blocks of columns, so no two write the same db. */
#define COL_BLOCK 32

static void add_column_sums(const float *dy, float *db, int T, int O) {
    const int nblocks = (O + COL_BLOCK - 1) / COL_BLOCK;
#pragma omp parallel for schedule(static) if ((size_t)T * O > CPU_PAR_MIN)
    for (int bk = 0; bk < nblocks; bk++) {
        const int o0 = bk * COL_BLOCK, n = O - o0 < COL_BLOCK ? O - o0 : COL_BLOCK;
        double acc[COL_BLOCK] = {0};
        for (int t = 0; t < T; t++) {
            const float *row = dy + (size_t)t * O + o0;
            for (int j = 0; j < n; j++) acc[j] += row[j];
        }
        for (int j = 0; j < n; j++) db[o0 + j] += (float)acc[j];
    }
}

void cpu_linear_backward(const float *dy, const float *x, const float *w, float *dx, float *dw,
                         float *db, int T, int In, int O) {
    if (dx) /* dx [T,In] += dy [T,O] w [O,In] */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, In, O, 1.0f, dy, O, w, In, 1.0f,
                    dx, In);
    if (dw) /* dw [O,In] += dy^T [O,T] x [T,In] */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, O, In, T, 1.0f, dy, O, x, In, 1.0f,
                    dw, In);
    if (db) add_column_sums(dy, db, T, O);
}

/* y[C,R] = x[R,C]^T per matrix, in 32x32 tiles so both sides stay in cache. */
#define TR_TILE 32

void cpu_transpose(const float *x, float *y, int batch, int R, int C) {
    const int row_tiles = (R + TR_TILE - 1) / TR_TILE;
    const long items = (long)batch * row_tiles;
#pragma omp parallel for schedule(static) if ((size_t)batch * R * C > CPU_PAR_MIN)
    for (long it = 0; it < items; it++) {
        const int bt = (int)(it / row_tiles), r0 = (int)(it % row_tiles) * TR_TILE;
        const float *xb = x + (size_t)bt * R * C; /* [R, C] */
        float *yb = y + (size_t)bt * R * C;       /* [C, R] */
        const int r1 = r0 + TR_TILE < R ? r0 + TR_TILE : R;
        for (int c0 = 0; c0 < C; c0 += TR_TILE) {
            const int c1 = c0 + TR_TILE < C ? c0 + TR_TILE : C;
            for (int r = r0; r < r1; r++)
                for (int c = c0; c < c1; c++) yb[(size_t)c * R + r] = xb[(size_t)r * C + c];
        }
    }
}

/* ------------------------------------------------------------------------------------------ */
/* LayerNorm over the last dim (PyTorch: biased variance, eps inside the square root).        */

void cpu_layernorm_forward(const float *x, const float *gamma, const float *beta, float *y,
                           float *mean, float *rstd, int T, int D, float eps) {
#pragma omp parallel for schedule(static) if ((size_t)T * D > CPU_PAR_MIN)
    for (int t = 0; t < T; t++) {
        const float *xt = x + (size_t)t * D;
        float *yt = y + (size_t)t * D;
        double s = 0.0;
        for (int d = 0; d < D; d++) s += xt[d];
        const double mu = s / D;
        double ss = 0.0; /* two-pass variance: no cancellation for rows with a large mean */
        for (int d = 0; d < D; d++) {
            const double c = xt[d] - mu;
            ss += c * c;
        }
        const float m = (float)mu, r = (float)(1.0 / sqrt(ss / D + (double)eps));
        if (mean) mean[t] = m;
        if (rstd) rstd[t] = r;
#pragma omp simd
        for (int d = 0; d < D; d++) {
            const float xh = (xt[d] - m) * r;
            yt[d] = xh * (gamma ? gamma[d] : 1.0f) + (beta ? beta[d] : 0.0f);
        }
    }
}

/* dgamma[d] += sum_t dy*xhat, dbeta[d] += sum_t dy; threads own blocks of columns. */
static void layernorm_param_grads(const float *dy, const float *x, const float *mean,
                                  const float *rstd, float *dgamma, float *dbeta, int T, int D) {
    const int nblocks = (D + COL_BLOCK - 1) / COL_BLOCK;
#pragma omp parallel for schedule(static) if ((size_t)T * D > CPU_PAR_MIN)
    for (int bk = 0; bk < nblocks; bk++) {
        const int d0 = bk * COL_BLOCK, n = D - d0 < COL_BLOCK ? D - d0 : COL_BLOCK;
        double sg[COL_BLOCK] = {0}, sb[COL_BLOCK] = {0};
        for (int t = 0; t < T; t++) {
            const float *dyt = dy + (size_t)t * D + d0, *xt = x + (size_t)t * D + d0;
            const float m = mean[t], r = rstd[t];
            for (int j = 0; j < n; j++) {
                sg[j] += dyt[j] * ((xt[j] - m) * r);
                sb[j] += dyt[j];
            }
        }
        for (int j = 0; j < n; j++) {
            if (dgamma) dgamma[d0 + j] += (float)sg[j];
            if (dbeta) dbeta[d0 + j] += (float)sb[j];
        }
    }
}

/* dx = rstd * (g - mean(g) - xhat * mean(g * xhat)),  g = dy * gamma */
void cpu_layernorm_backward(const float *dy, const float *x, const float *mean, const float *rstd,
                            const float *gamma, float *dx, float *dgamma, float *dbeta, int T,
                            int D) {
    if (dgamma || dbeta) layernorm_param_grads(dy, x, mean, rstd, dgamma, dbeta, T, D);
    if (!dx) return;
#pragma omp parallel for schedule(static) if ((size_t)T * D > CPU_PAR_MIN)
    for (int t = 0; t < T; t++) {
        const float *dyt = dy + (size_t)t * D, *xt = x + (size_t)t * D;
        float *dxt = dx + (size_t)t * D;
        const float m = mean[t], r = rstd[t];
        float sum_g = 0.0f, sum_gx = 0.0f;
#pragma omp simd reduction(+ : sum_g, sum_gx)
        for (int d = 0; d < D; d++) {
            const float g = dyt[d] * (gamma ? gamma[d] : 1.0f);
            sum_g += g;
            sum_gx += g * ((xt[d] - m) * r);
        }
        const float mean_g = sum_g / D, mean_gx = sum_gx / D;
#pragma omp simd
        for (int d = 0; d < D; d++) {
            const float g = dyt[d] * (gamma ? gamma[d] : 1.0f);
            const float xh = (xt[d] - m) * r;
            dxt[d] += r * (g - mean_g - xh * mean_gx);
        }
    }
}

/* ------------------------------------------------------------------------------------------ */
/* softmax over rows                                                                          */

CPU_HOT void cpu_softmax_row_inplace(float *row, int N, const float *bias) {
    float mx = -INFINITY;
    if (bias) {
#pragma omp simd reduction(max : mx)
        for (int j = 0; j < N; j++) {
            const float v = row[j] + bias[j];
            row[j] = v;
            mx = v > mx ? v : mx;
        }
    } else {
#pragma omp simd reduction(max : mx)
        for (int j = 0; j < N; j++) mx = row[j] > mx ? row[j] : mx;
    }
    if (mx == -INFINITY) { /* every entry excluded: no distribution, all zeros */
        for (int j = 0; j < N; j++) row[j] = 0.0f;
        return;
    }
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int j = 0; j < N; j++) { /* excluded entries exactly 0 (cpu_expf(-inf) is ~1e-38) */
        const float e = row[j] == -INFINITY ? 0.0f : cpu_expf(row[j] - mx);
        row[j] = e;
        sum += e;
    }
    const float inv = 1.0f / sum;
#pragma omp simd
    for (int j = 0; j < N; j++) row[j] *= inv;
}

CPU_HOT void cpu_softmax_row_backward(const float *dy, const float *y, float *dx, int N) {
    float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
    for (int j = 0; j < N; j++) dot += dy[j] * y[j];
#pragma omp simd
    for (int j = 0; j < N; j++) dx[j] += y[j] * (dy[j] - dot);
}

void cpu_softmax_forward(const float *x, float *y, int R, int N) {
#pragma omp parallel for schedule(static) if ((size_t)R * N > CPU_PAR_MIN / 4)
    for (int r = 0; r < R; r++) {
        float *yr = y + (size_t)r * N;
        if (yr != x + (size_t)r * N) memcpy(yr, x + (size_t)r * N, (size_t)N * sizeof(float));
        cpu_softmax_row_inplace(yr, N, NULL);
    }
}

void cpu_softmax_backward(const float *dy, const float *y, float *dx, int R, int N) {
    if (!dx) return;
#pragma omp parallel for schedule(static) if ((size_t)R * N > CPU_PAR_MIN)
    for (int r = 0; r < R; r++)
        cpu_softmax_row_backward(dy + (size_t)r * N, y + (size_t)r * N, dx + (size_t)r * N, N);
}
