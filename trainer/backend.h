/* backend.h - the table of operations the model code calls. One table per backend (CPU now,
 * CUDA later); model code never touches memory except through these calls, so a backend plugs
 * in without model changes.
 *
 * Conventions (all backends):
 *  - float32 everywhere; pointers are in the backend's memory (host for CPU, device for CUDA).
 *  - Forward ops OVERWRITE their output. Backward ops ACCUMULATE (+=) into every gradient they
 *    write (input gradients and parameter gradients alike), as in llm.c: callers zero gradient
 *    buffers once, and residual branches simply add into the same buffer. A NULL gradient
 *    pointer means "not needed" and is skipped.
 *  - Image activations use the channel-major layout "CNHW": [C, B, H, W]. A convolution is then
 *    one GEMM [Cout, Cin*kh*kw] x [Cin*kh*kw, B*Ho*Wo] whose result is already CNHW.
 *  - Token activations are row-major [T, D] with T = B*S (batch-major: token b*S + s).
 *  - Masks are uint8, 1 = padding (the reference's True).
 *  - Mixed precision (set_precision): see Precision below.
 */
#ifndef DETR_BACKEND_H
#define DETR_BACKEND_H
#include <stddef.h>
#include <stdint.h>
#include "mem.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Convolution geometry; symmetric stride / padding / dilation. Fill the first block and call
 * conv_shape_init() to compute Ho, Wo. */
typedef struct {
    int B, Cin, H, W;       /* input  x: [Cin, B, H, W] */
    int Cout, kh, kw;       /* weight w: [Cout, Cin, kh, kw] (PyTorch layout) */
    int stride, pad, dil;
    int Ho, Wo;             /* output y: [Cout, B, Ho, Wo] */
} ConvShape;

static inline void conv_shape_init(ConvShape *s) {
    s->Ho = (s->H + 2 * s->pad - s->dil * (s->kh - 1) - 1) / s->stride + 1;
    s->Wo = (s->W + 2 * s->pad - s->dil * (s->kw - 1) - 1) / s->stride + 1;
}

/* Max-pool geometry (k x k window, symmetric stride/padding, padding never wins the max). */
typedef struct {
    int C, B, H, W;         /* input  x: [C, B, H, W] */
    int k, stride, pad;
    int Ho, Wo;             /* output y: [C, B, Ho, Wo] */
} PoolShape;

static inline void pool_shape_init(PoolShape *s) {
    s->Ho = (s->H + 2 * s->pad - s->k) / s->stride + 1;
    s->Wo = (s->W + 2 * s->pad - s->k) / s->stride + 1;
}

/* Multi-head attention core: out = Drop(softmax(Q K^T / sqrt(dh) + mask)) V, per batch b and
 * head h, where head h uses columns [h*dh, (h+1)*dh) of q, k, v and out (dh = D / H).
 *   q:   [B, Sq, ldq] (row b*Sq + i, columns 0..D-1 used)
 *   k:   [B, Sk, ldk]
 *   v:   [B, Sk, ldv]
 *   out: [B, Sq, D]
 *   key_padding_mask: [B, Sk] uint8 (1 = padding -> -inf), or NULL
 *   probs: [B, H, Sq, Sk] softmax probabilities BEFORE dropout, saved for backward
 * Dropout on the probabilities uses keep = rng_uniform(seed, flat index into probs) >= p,
 * scaled by 1/(1-p); backward regenerates the same mask from the seed. */
typedef struct {
    int B, Sq, Sk, D, H;
    int ldq, ldk, ldv;
    float dropout;          /* 0 = off */
    uint64_t seed;
} AttnShape;

/* Precision of the matrix products: conv2d_forward / _backward_data / _backward_weight,
 * linear_forward / _backward and gemm. Every other op always computes in float32.
 *   PRECISION_FP32: plain float32 (the default).
 *   PRECISION_BF16, PRECISION_FP16: PyTorch autocast's semantics for these ops. Each operand
 *     (x, w, bias, dy, A, B) is rounded to the low type (round to nearest even; fp16 overflows
 *     to +-inf, as a hardware conversion does), the products are summed in float32, and the
 *     result is rounded to the low type before it is written (forward ops, gemm's alpha*AB) or
 *     added in float32 to the gradient it accumulates into (backward ops). Buffers stay float32:
 *     what changes is the arithmetic (tensor cores on a GPU), not the storage.
 * On the CPU the low types are emulated (rounding passes around the float32 BLAS): the same
 * numbers, for checking, not for speed. */
typedef enum { PRECISION_FP32 = 0, PRECISION_BF16 = 1, PRECISION_FP16 = 2 } Precision;

typedef struct Backend {
    const char *name;

    /* ---- memory: every byte is charged to a category (mem.h) ---- */
    float *(*alloc)(MemCategory cat, size_t nfloats);
    void (*free)(float *p);
    void *(*alloc_bytes)(MemCategory cat, size_t bytes);
    void (*free_bytes)(void *p);
    void (*upload)(void *dst, const void *src_host, size_t bytes);   /* host -> backend */
    void (*download)(void *dst_host, const void *src, size_t bytes); /* backend -> host */
    void (*copy)(float *dst, const float *src, size_t n);
    void (*fill)(float *x, float value, size_t n);
    void (*synchronize)(void);
    /* Precision of the matrix products from now on (see Precision); process-wide. */
    void (*set_precision)(Precision p);

    /* ---- convolution, CNHW (see ConvShape) ---- */
    /* y = conv(x, w) (+ bias[Cout] if bias) */
    void (*conv2d_forward)(const ConvShape *s, const float *x, const float *w, const float *bias,
                           float *y);
    /* dx += conv_transpose(dy, w) */
    void (*conv2d_backward_data)(const ConvShape *s, const float *dy, const float *w, float *dx);
    /* dw += dy (x) x ; dbias[Cout] += sum of dy over B,Ho,Wo (if dbias) */
    void (*conv2d_backward_weight)(const ConvShape *s, const float *dy, const float *x, float *dw,
                                   float *dbias);

    /* ---- per-channel affine (FrozenBatchNorm) on x: [C, N] (N = B*H*W in CNHW) ----
     * y = x * scale[c] + shift[c], then ReLU if relu. In place (y == x) is allowed. */
    void (*channel_affine)(const float *x, const float *scale, const float *shift, float *y, int C,
                           size_t N, int relu);
    /* dx += dy * scale[c] * (relu ? (y > 0) : 1)   (y = the forward output) */
    void (*channel_affine_backward)(const float *dy, const float *y, const float *scale, float *dx,
                                    int C, size_t N, int relu);

    /* ---- elementwise, n floats ---- */
    void (*relu_forward)(const float *x, float *y, size_t n);                   /* y = max(x,0) */
    void (*relu_backward)(const float *dy, const float *y, float *dx, size_t n); /* dx += dy*(y>0) */
    void (*add)(const float *a, const float *b, float *y, size_t n);            /* y = a + b */
    void (*add_relu)(const float *a, const float *b, float *y, size_t n);       /* y = max(a+b,0) */
    void (*axpy)(float alpha, const float *x, float *y, size_t n);              /* y += alpha*x */
    void (*scale)(float *x, float alpha, size_t n);                             /* x *= alpha */
    void (*sigmoid_forward)(const float *x, float *y, size_t n);
    void (*sigmoid_backward)(const float *dy, const float *y, float *dx, size_t n); /* dx += dy*y*(1-y) */
    /* y = x * keep / (1-p), keep = rng_uniform(seed, i) >= p  (p == 0: plain copy) */
    void (*dropout_forward)(const float *x, float *y, size_t n, float p, uint64_t seed);
    void (*dropout_backward)(const float *dy, float *dx, size_t n, float p, uint64_t seed); /* dx += */

    /* ---- max-pool, CNHW ---- argmax: [C, B, Ho, Wo] int32 flat index into x's H*W plane */
    void (*maxpool_forward)(const PoolShape *s, const float *x, float *y, int32_t *argmax);
    void (*maxpool_backward)(const PoolShape *s, const float *dy, const int32_t *argmax, float *dx);

    /* ---- dense ---- */
    /* Strided batched GEMM, row-major: for i < batch,
     *   C_i = alpha * op(A_i) op(B_i) + beta * C_i,  op(A_i): [M,K], op(B_i): [K,N], C_i: [M,N]
     * with X_i = X + i * strideX and leading dimensions as in row-major cblas. */
    void (*gemm)(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
                 long strideA, const float *B, int ldb, long strideB, float beta, float *C, int ldc,
                 long strideC, int batch);
    /* y[T,O] = x[T,In] w[O,In]^T + b[O] (b may be NULL) */
    void (*linear_forward)(const float *x, const float *w, const float *b, float *y, int T, int In,
                           int O);
    /* dx[T,In] += dy w ; dw[O,In] += dy^T x ; db[O] += column sums of dy */
    void (*linear_backward)(const float *dy, const float *x, const float *w, float *dx, float *dw,
                            float *db, int T, int In, int O);
    /* y[C,R] = x[R,C]^T, for each of `batch` matrices (overwrite) */
    void (*transpose)(const float *x, float *y, int batch, int R, int C);

    /* ---- normalisation, softmax ---- */
    /* LayerNorm over the last dim: x [T,D] -> y; saves mean[T], rstd[T] (rstd = 1/sqrt(var+eps)) */
    void (*layernorm_forward)(const float *x, const float *gamma, const float *beta, float *y,
                              float *mean, float *rstd, int T, int D, float eps);
    /* dx += ..., dgamma += ..., dbeta += ... */
    void (*layernorm_backward)(const float *dy, const float *x, const float *mean, const float *rstd,
                               const float *gamma, float *dx, float *dgamma, float *dbeta, int T,
                               int D);
    /* rows of x [R,N]: y = softmax(x) */
    void (*softmax_forward)(const float *x, float *y, int R, int N);
    /* dx += y * (dy - sum(dy*y)) */
    void (*softmax_backward)(const float *dy, const float *y, float *dx, int R, int N);

    /* ---- attention core (see AttnShape) ---- */
    void (*attention_forward)(const AttnShape *s, const float *q, const float *k, const float *v,
                              const uint8_t *key_padding_mask, float *probs, float *out);
    /* dq, dk, dv (same layouts/leading dims as q, k, v) += gradients; any may be NULL */
    void (*attention_backward)(const AttnShape *s, const float *dout, const float *q, const float *k,
                               const float *v, const float *probs, float *dq, float *dk, float *dv);

    /* ---- reductions, optimizer ---- */
    double (*sum)(const float *x, size_t n);
    double (*sum_squares)(const float *x, size_t n);
    /* AdamW (PyTorch semantics) on n params with grad multiplier gscale (clipping):
     *   g = grad*gscale; p -= lr*wd*p; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
     *   p -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)          (t = step, from 1) */
    void (*adamw)(float *p, const float *grad, float *m, float *v, size_t n, float lr, float beta1,
                  float beta2, float eps, float wd, int step, float gscale);
} Backend;

/* The CPU backend (OpenBLAS + OpenMP). */
const Backend *backend_cpu(void);

#ifdef __cplusplus
}
#endif
#endif
