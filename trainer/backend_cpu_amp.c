/* backend_cpu_amp.c - the CPU backend's matrix products under mixed precision (backend.h,
 * Precision): bf16 / fp16 emulated around the float32 BLAS. Each operand is rounded to the low
 * type into a scratch copy, the float32 product is computed (OpenBLAS sums in float32, as tensor
 * cores do for these types), and the result is rounded to the low type before it is written or
 * added. With PRECISION_FP32 every entry calls the float32 op directly, unchanged.
 *
 * This is an emulation for checking numerics (the CUDA backend against it, the trainer's loss
 * scaling, what bf16/fp16 do to a run) and it is slower than float32: every operand is copied. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include "backend_cpu_internal.h"

static Precision g_precision = PRECISION_FP32;

void cpu_set_precision(Precision p) { g_precision = p; }

/* Round to nearest even bfloat16 (the top 16 bits of a float). NaN stays NaN; values past the
 * largest bf16 round to inf, as the hardware conversion does. */
static inline float round_bf16(float x) {
    union { float f; uint32_t u; } v = {x};
    if ((v.u & 0x7fffffffu) > 0x7f800000u) return x; /* NaN */
    v.u += 0x7fffu + ((v.u >> 16) & 1u);
    v.u &= 0xffff0000u;
    return v.f;
}

/* Round to nearest even IEEE half: |x| >= 65520 becomes inf, small values become half
 * subnormals or zero (the C conversion is IEEE's). */
static inline float round_fp16(float x) { return (float)(_Float16)x; }

/* dst[i] = round(src[i]) */
static void round_copy(float *dst, const float *src, size_t n, Precision p) {
    long nn = (long)n;
    if (p == PRECISION_BF16) {
#pragma omp parallel for simd if (nn > CPU_PAR_MIN)
        for (long i = 0; i < nn; i++) dst[i] = round_bf16(src[i]);
    } else {
#pragma omp parallel for simd if (nn > CPU_PAR_MIN)
        for (long i = 0; i < nn; i++) dst[i] = round_fp16(src[i]);
    }
}

/* dst[i] += round(src[i]) */
static void add_rounded(float *dst, const float *src, size_t n, Precision p) {
    long nn = (long)n;
    if (p == PRECISION_BF16) {
#pragma omp parallel for simd if (nn > CPU_PAR_MIN)
        for (long i = 0; i < nn; i++) dst[i] += round_bf16(src[i]);
    } else {
#pragma omp parallel for simd if (nn > CPU_PAR_MIN)
        for (long i = 0; i < nn; i++) dst[i] += round_fp16(src[i]);
    }
}

/* Grow-only scratch for the rounded copies (MEM_WORKSPACE), separate from cpu_workspace, which
 * the float32 convolution uses while these copies are alive. */
static float *g_scratch;
static size_t g_scratch_floats;

/* Scratch of n floats carved into consecutive 16-float-aligned parts. */
typedef struct {
    float *base;
    size_t used;
} Carve;

static Carve scratch_begin(size_t total_floats) {
    if (total_floats > g_scratch_floats) {
        host_free(g_scratch);
        g_scratch = host_alloc(MEM_WORKSPACE, total_floats * sizeof(float));
        g_scratch_floats = g_scratch ? total_floats : 0;
        if (!g_scratch) {
            fprintf(stderr, "error: backend_cpu: mixed-precision scratch of %zu floats refused\n",
                    total_floats);
            exit(EXIT_OOM);
        }
    }
    return (Carve){g_scratch, 0};
}

static void zero(float *x, size_t n) {
    long nn = (long)n;
#pragma omp parallel for simd if (nn > CPU_PAR_MIN)
    for (long i = 0; i < nn; i++) x[i] = 0.0f;
}

static size_t padded(size_t n) { return (n + 15) & ~(size_t)15; }

static float *carve(Carve *c, size_t n) {
    float *p = c->base + c->used;
    c->used += padded(n);
    return p;
}

/* Rounded copy of src (n floats) from the scratch; NULL stays NULL. */
static const float *rounded(Carve *c, const float *src, size_t n, Precision p) {
    if (!src) return NULL;
    float *dst = carve(c, n);
    round_copy(dst, src, n, p);
    return dst;
}

/* Floats spanned by `batch` row-major matrices of rows x cols with leading dimension ld, stride
 * between matrices (0: one shared matrix). */
static size_t matrix_span(int rows, int cols, int ld, long stride, int batch) {
    if (rows <= 0 || cols <= 0 || batch <= 0) return 0;
    size_t one = (size_t)(rows - 1) * (size_t)ld + (size_t)cols;
    return (size_t)(batch - 1) * (size_t)stride + one;
}

/* ---- gemm: C_i = round(alpha op(A_i) op(B_i)) + beta C_i ---- */
void cpu_amp_gemm(int transA, int transB, int M, int N, int K, float alpha, const float *A,
                     int lda, long strideA, const float *B, int ldb, long strideB, float beta,
                     float *C, int ldc, long strideC, int batch) {
    Precision p = g_precision;
    if (p == PRECISION_FP32) {
        cpu_gemm(transA, transB, M, N, K, alpha, A, lda, strideA, B, ldb, strideB, beta, C, ldc,
                 strideC, batch);
        return;
    }
    size_t na = matrix_span(transA ? K : M, transA ? M : K, lda, strideA, batch);
    size_t nb = matrix_span(transB ? N : K, transB ? K : N, ldb, strideB, batch);
    size_t nt = (size_t)M * N; /* one product at a time, [M, N] contiguous */
    Carve c = scratch_begin(padded(na) + padded(nb) + padded(nt));
    const float *ar = rounded(&c, A, na, p), *br = rounded(&c, B, nb, p);
    float *tmp = carve(&c, nt);
    for (int i = 0; i < batch; i++) {
        cpu_gemm(transA, transB, M, N, K, alpha, ar + i * strideA, lda, 0, br + i * strideB, ldb,
                 0, 0.0f, tmp, N, 0, 1);
        float *Ci = C + i * strideC;
        for (int r = 0; r < M; r++) {
            float *row = Ci + (size_t)r * ldc;
            const float *t = tmp + (size_t)r * N;
            if (beta == 0.0f) { /* C may hold garbage (even NaN): never read it */
                round_copy(row, t, (size_t)N, p);
            } else {
                for (int j = 0; j < N; j++) row[j] *= beta;
                add_rounded(row, t, (size_t)N, p);
            }
        }
    }
}

/* ---- linear ---- */
void cpu_amp_linear_forward(const float *x, const float *w, const float *b, float *y, int T,
                               int In, int O) {
    Precision p = g_precision;
    if (p == PRECISION_FP32) {
        cpu_linear_forward(x, w, b, y, T, In, O);
        return;
    }
    size_t nx = (size_t)T * In, nw = (size_t)O * In;
    Carve c = scratch_begin(padded(nx) + padded(nw) + padded((size_t)O));
    const float *xr = rounded(&c, x, nx, p), *wr = rounded(&c, w, nw, p);
    const float *br = rounded(&c, b, (size_t)O, p);
    cpu_linear_forward(xr, wr, br, y, T, In, O);
    round_copy(y, y, (size_t)T * O, p);
}

void cpu_amp_linear_backward(const float *dy, const float *x, const float *w, float *dx,
                                float *dw, float *db, int T, int In, int O) {
    Precision p = g_precision;
    if (p == PRECISION_FP32) {
        cpu_linear_backward(dy, x, w, dx, dw, db, T, In, O);
        return;
    }
    size_t ndy = (size_t)T * O, nx = (size_t)T * In, nw = (size_t)O * In;
    Carve c = scratch_begin(padded(ndy) + (dw ? padded(nx) : 0) + (dx ? padded(nw) : 0) +
                            padded(nx > nw ? nx : nw) + padded((size_t)O));
    const float *dyr = rounded(&c, dy, ndy, p);
    const float *xr = dw ? rounded(&c, x, nx, p) : NULL;
    const float *wr = dx ? rounded(&c, w, nw, p) : NULL;
    float *tmp = carve(&c, nx > nw ? nx : nw);
    float *tdb = carve(&c, (size_t)O);
    if (dx) { /* dx [T,In] += round(dy w) */
        zero(tmp, nx);
        cpu_linear_backward(dyr, NULL, wr, tmp, NULL, NULL, T, In, O);
        add_rounded(dx, tmp, nx, p);
    }
    if (dw) { /* dw [O,In] += round(dy^T x) */
        zero(tmp, nw);
        cpu_linear_backward(dyr, xr, NULL, NULL, tmp, NULL, T, In, O);
        add_rounded(dw, tmp, nw, p);
    }
    if (db) { /* db [O] += round(column sums of round(dy)) */
        zero(tdb, (size_t)O);
        cpu_linear_backward(dyr, NULL, NULL, NULL, NULL, tdb, T, In, O);
        add_rounded(db, tdb, (size_t)O, p);
    }
}

/* ---- convolution, CNHW ---- */
void cpu_amp_conv2d_forward(const ConvShape *s, const float *x, const float *w,
                               const float *bias, float *y) {
    Precision p = g_precision;
    if (p == PRECISION_FP32) {
        cpu_conv2d_forward(s, x, w, bias, y);
        return;
    }
    size_t nx = (size_t)s->Cin * s->B * s->H * s->W, nw = (size_t)s->Cout * s->Cin * s->kh * s->kw;
    Carve c = scratch_begin(padded(nx) + padded(nw) + padded((size_t)s->Cout));
    const float *xr = rounded(&c, x, nx, p), *wr = rounded(&c, w, nw, p);
    const float *br = rounded(&c, bias, (size_t)s->Cout, p);
    cpu_conv2d_forward(s, xr, wr, br, y);
    round_copy(y, y, (size_t)s->Cout * s->B * s->Ho * s->Wo, p);
}

void cpu_amp_conv2d_backward_data(const ConvShape *s, const float *dy, const float *w,
                                     float *dx) {
    Precision p = g_precision;
    if (p == PRECISION_FP32) {
        cpu_conv2d_backward_data(s, dy, w, dx);
        return;
    }
    size_t ndy = (size_t)s->Cout * s->B * s->Ho * s->Wo, nw = (size_t)s->Cout * s->Cin * s->kh * s->kw;
    size_t nx = (size_t)s->Cin * s->B * s->H * s->W;
    Carve c = scratch_begin(padded(ndy) + padded(nw) + padded(nx));
    const float *dyr = rounded(&c, dy, ndy, p), *wr = rounded(&c, w, nw, p);
    float *tmp = carve(&c, nx);
    zero(tmp, nx);
    cpu_conv2d_backward_data(s, dyr, wr, tmp);
    add_rounded(dx, tmp, nx, p);
}

void cpu_amp_conv2d_backward_weight(const ConvShape *s, const float *dy, const float *x,
                                       float *dw, float *dbias) {
    Precision p = g_precision;
    if (p == PRECISION_FP32) {
        cpu_conv2d_backward_weight(s, dy, x, dw, dbias);
        return;
    }
    size_t ndy = (size_t)s->Cout * s->B * s->Ho * s->Wo, nw = (size_t)s->Cout * s->Cin * s->kh * s->kw;
    size_t nx = (size_t)s->Cin * s->B * s->H * s->W;
    Carve c = scratch_begin(padded(ndy) + padded(nx) + padded(nw) + padded((size_t)s->Cout));
    const float *dyr = rounded(&c, dy, ndy, p), *xr = rounded(&c, x, nx, p);
    float *tw = carve(&c, nw), *tb = dbias ? carve(&c, (size_t)s->Cout) : NULL;
    zero(tw, nw);
    if (tb) zero(tb, (size_t)s->Cout);
    cpu_conv2d_backward_weight(s, dyr, xr, tw, tb);
    add_rounded(dw, tw, nw, p);
    if (dbias) add_rounded(dbias, tb, (size_t)s->Cout, p);
}
