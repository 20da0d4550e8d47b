/* backend_cpu_internal.h - shared pieces of the CPU backend (backend_cpu*.c), not a public API.
 *
 * Threading rule of the CPU backend: OpenMP parallelises the loops, OpenBLAS the GEMMs, and cblas
 * is never called from inside an OpenMP parallel region (there it would run on one thread). The
 * Makefile links OpenBLAS's OpenMP build, so both draw on the same pool of threads. */
#ifndef DETR_BACKEND_CPU_INTERNAL_H
#define DETR_BACKEND_CPU_INTERNAL_H
#include <stddef.h>
#include <stdint.h>
#include <string.h>
/* OpenBLAS's cblas.h includes <complex.h>, whose macro `I` breaks any later use of I as a name;
 * nothing in the backend uses complex numbers. */
#include <cblas.h>
#undef I
#include "backend.h"

/* Below this many elements a loop runs on one thread: a parallel region costs a few
 * microseconds, more than the work itself. */
#define CPU_PAR_MIN 16384

/* Grow-only scratch buffer charged to MEM_WORKSPACE, kept between calls (never shrinks; lives
 * until the process exits). One buffer for the whole backend: ops run one at a time on the model
 * thread, and no op holds it across calls. Returns at least nfloats floats, 64-byte aligned,
 * contents undefined. Not thread-safe. */
float *cpu_workspace(size_t nfloats);

/* The backend never inspects floating-point exception flags. Without this, gcc keeps the clamps
 * of cpu_expf as branches (an FP multiply "could trap" once it sits in one) and will not
 * vectorise the exp loops of softmax / sigmoid / attention. */
#pragma GCC optimize("no-trapping-math")

/* exp(x) for float, written so that `#pragma omp simd` loops vectorise it with plain SSE2
 * (libm's expf is a scalar call). exp(x) = 2^n exp(r), n = round(x / ln2), |r| <= ln2/2, exp(r)
 * by its degree-6 Taylor polynomial: relative error below 3e-7 (tests/unit/test_ops.c checks it).
 * x is clamped to [-87.3, 88.0]: results below FLT_MIN come out as ~1e-38 instead of a
 * denormal or 0, which no caller can tell apart from 0 next to a sum >= 1. */
static inline float cpu_expf(float x) {
    const float lo = -87.33654f, hi = 88.0f;
    x = x < lo ? lo : x;
    x = x > hi ? hi : x;
    /* round x/ln2 to nearest by adding 1.5*2^23: the low mantissa bits of t then hold n as an
     * integer (bits(t) = 0x4B400000 + n), so no float->int conversion is needed */
    union { float f; int32_t i; } t;
    t.f = x * 1.44269504088896341f + 12582912.0f;
    const float n = t.f - 12582912.0f;
    /* Cody-Waite: ln2 split into an exactly representable high part and a small low part */
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    union { int32_t i; float f; } two_n; /* unions, not memcpy: gcc vectorises only these */
    two_n.i = (t.i - 0x4B400000 + 127) << 23; /* 2^n, n in [-126, 127] */
    return p * two_n.f;
}

/* Compute-bound inner loops (exp, the dropout hash) of a portable build (plain x86-64, SSE2:
 * `make ARCH=`) are compiled for several instruction sets and the loader picks the best one the
 * CPU has (GNU ifunc); with SSE2 alone the 64-bit multiplies of the dropout hash do not
 * vectorise, and AVX-512 runs that loop ~12x and softmax rows ~4x faster. A build for the
 * machine itself (-march=native, the Makefile default) already has its best instructions, and
 * there clones would hurt: the inline helpers (cpu_expf) carry the native target options, which
 * a clone's target does not include, so gcc refuses to inline them and the loops stop
 * vectorising (measured 10x slower). Clones differ only in the order of float additions. */
#ifndef CPU_HOT /* -DCPU_HOT= turns the clones off, e.g. to test the baseline on an AVX-512 CPU */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(__AVX2__)
#define CPU_HOT __attribute__((target_clones("default", "avx2", "arch=x86-64-v4")))
#else
#define CPU_HOT
#endif
#endif

/* Elements per work item when a threaded loop is split into contiguous spans. */
#define CPU_SPAN 8192

/* ---- backend_cpu.c: single-threaded span kernels (callers split the work across threads) ---- */
/* y[e] = x[e] / (1-p) if rng_uniform(seed, first + e) >= p else 0, for e < n  (0 <= p < 1) */
void cpu_dropout_span(const float *x, float *y, size_t n, uint64_t first, float p, uint64_t seed);
/* dx[e] += dy[e] / (1-p) where rng_uniform(seed, first + e) >= p, for e < n  (0 <= p < 1) */
void cpu_dropout_span_add(const float *dy, float *dx, size_t n, uint64_t first, float p,
                          uint64_t seed);

/* ---- backend_cpu_conv.c ---- */
void cpu_conv2d_forward(const ConvShape *s, const float *x, const float *w, const float *bias,
                        float *y);
void cpu_conv2d_backward_data(const ConvShape *s, const float *dy, const float *w, float *dx);
void cpu_conv2d_backward_weight(const ConvShape *s, const float *dy, const float *x, float *dw,
                                float *dbias);
/* Size of an im2col chunk in floats (0 = the default, 8 MiB); a chunk holds at least one output
 * row. Only tests change it, to reach chunk boundaries inside and across images. */
void cpu_conv_set_col_limit(size_t floats);
void cpu_maxpool_forward(const PoolShape *s, const float *x, float *y, int32_t *argmax);
void cpu_maxpool_backward(const PoolShape *s, const float *dy, const int32_t *argmax, float *dx);

/* ---- backend_cpu_dense.c ---- */
void cpu_gemm(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
              long strideA, const float *B, int ldb, long strideB, float beta, float *C, int ldc,
              long strideC, int batch);
void cpu_linear_forward(const float *x, const float *w, const float *b, float *y, int T, int In,
                        int O);
void cpu_linear_backward(const float *dy, const float *x, const float *w, float *dx, float *dw,
                         float *db, int T, int In, int O);
void cpu_transpose(const float *x, float *y, int batch, int R, int C);
void cpu_layernorm_forward(const float *x, const float *gamma, const float *beta, float *y,
                           float *mean, float *rstd, int T, int D, float eps);
void cpu_layernorm_backward(const float *dy, const float *x, const float *mean, const float *rstd,
                            const float *gamma, float *dx, float *dgamma, float *dbeta, int T,
                            int D);
void cpu_softmax_forward(const float *x, float *y, int R, int N);
void cpu_softmax_backward(const float *dy, const float *y, float *dx, int R, int N);
/* Softmax of one row in place after adding bias [N] (NULL = none; entries 0 or -inf, -inf =
 * excluded, probability exactly 0). A row with every entry excluded becomes all zeros. An
 * additive float bias rather than a uint8 mask: the mixed-width loop ran ~10x slower. */
void cpu_softmax_row_inplace(float *row, int N, const float *bias);
/* Adds to dx [N] the softmax backward of one row: dx += y * (dy - sum(dy*y)). */
void cpu_softmax_row_backward(const float *dy, const float *y, float *dx, int N);

/* ---- backend_cpu_attn.c ---- */
void cpu_attention_forward(const AttnShape *s, const float *q, const float *k, const float *v,
                           const uint8_t *key_padding_mask, float *probs, float *out);
void cpu_attention_backward(const AttnShape *s, const float *dout, const float *q, const float *k,
                            const float *v, const float *probs, float *dq, float *dk, float *dv);

/* ---- backend_cpu_amp.c: the matrix products under set_precision (backend.h, Precision); the
 * op table points at these, which call the float32 ops above directly at PRECISION_FP32 ---- */
void cpu_set_precision(Precision p);
void cpu_amp_gemm(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
                  long strideA, const float *B, int ldb, long strideB, float beta, float *C, int ldc,
                  long strideC, int batch);
void cpu_amp_linear_forward(const float *x, const float *w, const float *b, float *y, int T, int In,
                            int O);
void cpu_amp_linear_backward(const float *dy, const float *x, const float *w, float *dx, float *dw,
                             float *db, int T, int In, int O);
void cpu_amp_conv2d_forward(const ConvShape *s, const float *x, const float *w, const float *bias,
                            float *y);
void cpu_amp_conv2d_backward_data(const ConvShape *s, const float *dy, const float *w, float *dx);
void cpu_amp_conv2d_backward_weight(const ConvShape *s, const float *dy, const float *x, float *dw,
                                    float *dbias);

/* Stops the program with a message naming the op when a caller passes an impossible shape
 * (a bug in the calling model code, never user input). */
void cpu_shape_error(const char *op, const char *what);

#endif
