/* backend_cpu.c - the CPU backend: float32, OpenBLAS for GEMMs, OpenMP for loops.
 * This file holds memory, elementwise ops, dropout, reductions, AdamW and the op table; the
 * convolution / pooling, dense / normalisation and attention ops live in backend_cpu_conv.c,
 * backend_cpu_dense.c and backend_cpu_attn.c. Conventions: see backend.h (forward overwrites,
 * backward accumulates). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "backend_cpu_internal.h"
#include "rng.h"

/* ------------------------------------------------------------------------------------------ */
/* memory                                                                                     */

static float *cpu_alloc(MemCategory cat, size_t nfloats) {
    return host_alloc(cat, nfloats * sizeof(float));
}
static void cpu_free(float *p) { host_free(p); }
static void *cpu_alloc_bytes(MemCategory cat, size_t bytes) { return host_alloc(cat, bytes); }
static void cpu_free_bytes(void *p) { host_free(p); }
static void cpu_upload(void *dst, const void *src_host, size_t bytes) {
    memcpy(dst, src_host, bytes);
}
static void cpu_download(void *dst_host, const void *src, size_t bytes) {
    memcpy(dst_host, src, bytes);
}
static void cpu_copy(float *dst, const float *src, size_t n) {
    if (dst != src) memcpy(dst, src, n * sizeof(float));
}
static void cpu_synchronize(void) {}

static void cpu_fill(float *x, float value, size_t n) {
    long nn = (long)n;
#pragma omp parallel for simd if (nn > CPU_PAR_MIN)
    for (long i = 0; i < nn; i++) x[i] = value;
}

/* The workspace: grow-only, so after the first step of a given shape no allocation happens. */
static float *g_workspace;      /* [g_workspace_floats] */
static size_t g_workspace_floats;

float *cpu_workspace(size_t nfloats) {
    if (nfloats > g_workspace_floats) {
        host_free(g_workspace);
        g_workspace = host_alloc(MEM_WORKSPACE, nfloats * sizeof(float));
        g_workspace_floats = g_workspace ? nfloats : 0;
        if (!g_workspace) {
            fprintf(stderr, "error: backend_cpu: workspace of %zu floats refused\n", nfloats);
            exit(EXIT_OOM);
        }
    }
    return g_workspace;
}

void cpu_shape_error(const char *op, const char *what) {
    fprintf(stderr, "error: backend_cpu: %s: %s (a bug in the calling code)\n", op, what);
    exit(2);
}

/* ------------------------------------------------------------------------------------------ */
/* per-channel affine (FrozenBatchNorm), x: [C, N]                                            */

/* Work is split into (channel, chunk) items so that few channels still use every thread. */
#define AFFINE_CHUNK 16384

static void cpu_channel_affine(const float *x, const float *scale, const float *shift, float *y,
                               int C, size_t N, int relu) {
    long chunks = (long)((N + AFFINE_CHUNK - 1) / AFFINE_CHUNK);
    long items = (long)C * chunks;
#pragma omp parallel for schedule(static) if ((size_t)C * N > CPU_PAR_MIN)
    for (long it = 0; it < items; it++) {
        int c = (int)(it / chunks);
        size_t lo = (size_t)(it % chunks) * AFFINE_CHUNK;
        size_t hi = lo + AFFINE_CHUNK < N ? lo + AFFINE_CHUNK : N;
        const float a = scale[c], b = shift[c];
        const float *xc = x + (size_t)c * N;
        float *yc = y + (size_t)c * N;
        if (relu) {
#pragma omp simd
            for (size_t i = lo; i < hi; i++) {
                float v = xc[i] * a + b;
                yc[i] = v > 0.0f ? v : 0.0f;
            }
        } else {
#pragma omp simd
            for (size_t i = lo; i < hi; i++) yc[i] = xc[i] * a + b;
        }
    }
}

static void cpu_channel_affine_backward(const float *dy, const float *y, const float *scale,
                                        float *dx, int C, size_t N, int relu) {
    if (!dx) return;
    long chunks = (long)((N + AFFINE_CHUNK - 1) / AFFINE_CHUNK);
    long items = (long)C * chunks;
#pragma omp parallel for schedule(static) if ((size_t)C * N > CPU_PAR_MIN)
    for (long it = 0; it < items; it++) {
        int c = (int)(it / chunks);
        size_t lo = (size_t)(it % chunks) * AFFINE_CHUNK;
        size_t hi = lo + AFFINE_CHUNK < N ? lo + AFFINE_CHUNK : N;
        const float a = scale[c];
        const float *dyc = dy + (size_t)c * N;
        float *dxc = dx + (size_t)c * N;
        if (relu) {
            const float *yc = y + (size_t)c * N;
#pragma omp simd
            for (size_t i = lo; i < hi; i++) {
                const float g = dyc[i] * a; /* loaded unconditionally, so the select vectorises */
                dxc[i] += yc[i] > 0.0f ? g : 0.0f;
            }
        } else {
#pragma omp simd
            for (size_t i = lo; i < hi; i++) dxc[i] += dyc[i] * a;
        }
    }
}

/* ------------------------------------------------------------------------------------------ */
/* elementwise                                                                                */

static void cpu_relu_forward(const float *x, float *y, size_t n) {
    long nn = (long)n;
#pragma omp parallel for simd if (nn > CPU_PAR_MIN)
    for (long i = 0; i < nn; i++) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

static void cpu_relu_backward(const float *dy, const float *y, float *dx, size_t n) {
    if (!dx) return;
    long nn = (long)n;
#pragma omp parallel for simd if (nn > CPU_PAR_MIN)
    for (long i = 0; i < nn; i++) {
        const float g = dy[i]; /* loaded unconditionally, so the select vectorises */
        dx[i] += y[i] > 0.0f ? g : 0.0f;
    }
}

static void cpu_add(const float *a, const float *b, float *y, size_t n) {
    long nn = (long)n;
#pragma omp parallel for simd if (nn > CPU_PAR_MIN)
    for (long i = 0; i < nn; i++) y[i] = a[i] + b[i];
}

static void cpu_add_relu(const float *a, const float *b, float *y, size_t n) {
    long nn = (long)n;
#pragma omp parallel for simd if (nn > CPU_PAR_MIN)
    for (long i = 0; i < nn; i++) {
        float v = a[i] + b[i];
        y[i] = v > 0.0f ? v : 0.0f;
    }
}

static void cpu_axpy(float alpha, const float *x, float *y, size_t n) {
    long nn = (long)n;
#pragma omp parallel for simd if (nn > CPU_PAR_MIN)
    for (long i = 0; i < nn; i++) y[i] += alpha * x[i];
}

static void cpu_scale(float *x, float alpha, size_t n) {
    long nn = (long)n;
#pragma omp parallel for simd if (nn > CPU_PAR_MIN)
    for (long i = 0; i < nn; i++) x[i] *= alpha;
}

CPU_HOT static void sigmoid_span(const float *x, float *y, size_t n) {
#pragma omp simd
    for (size_t i = 0; i < n; i++) y[i] = 1.0f / (1.0f + cpu_expf(-x[i]));
}

static void cpu_sigmoid_forward(const float *x, float *y, size_t n) {
    const long spans = (long)((n + CPU_SPAN - 1) / CPU_SPAN);
#pragma omp parallel for schedule(static) if (n > CPU_PAR_MIN)
    for (long sp = 0; sp < spans; sp++) {
        const size_t lo = (size_t)sp * CPU_SPAN, len = n - lo < CPU_SPAN ? n - lo : CPU_SPAN;
        sigmoid_span(x + lo, y + lo, len);
    }
}

static void cpu_sigmoid_backward(const float *dy, const float *y, float *dx, size_t n) {
    if (!dx) return;
    long nn = (long)n;
#pragma omp parallel for simd if (nn > CPU_PAR_MIN)
    for (long i = 0; i < nn; i++) dx[i] += dy[i] * y[i] * (1.0f - y[i]);
}

/* Dropout: keep element i when rng_uniform(seed, i) >= p, scale kept ones by 1/(1-p). The mask
 * is never stored; backward draws the same numbers again. */
CPU_HOT void cpu_dropout_span(const float *x, float *y, size_t n, uint64_t first, float p,
                              uint64_t seed) {
    const float keep_scale = 1.0f / (1.0f - p);
#pragma omp simd
    for (size_t e = 0; e < n; e++) {
        const float kept = x[e] * keep_scale;
        y[e] = rng_uniform(seed, first + e) >= p ? kept : 0.0f;
    }
}

CPU_HOT void cpu_dropout_span_add(const float *dy, float *dx, size_t n, uint64_t first, float p,
                                  uint64_t seed) {
    const float keep_scale = 1.0f / (1.0f - p);
#pragma omp simd
    for (size_t e = 0; e < n; e++) {
        const float kept = dy[e] * keep_scale;
        dx[e] += rng_uniform(seed, first + e) >= p ? kept : 0.0f;
    }
}

static void cpu_dropout_forward(const float *x, float *y, size_t n, float p, uint64_t seed) {
    if (p <= 0.0f) {
        cpu_copy(y, x, n);
        return;
    }
    if (p >= 1.0f) { /* nothing is kept */
        cpu_fill(y, 0.0f, n);
        return;
    }
    const long spans = (long)((n + CPU_SPAN - 1) / CPU_SPAN);
#pragma omp parallel for schedule(static) if (n > CPU_PAR_MIN / 4)
    for (long sp = 0; sp < spans; sp++) {
        const size_t lo = (size_t)sp * CPU_SPAN, len = n - lo < CPU_SPAN ? n - lo : CPU_SPAN;
        cpu_dropout_span(x + lo, y + lo, len, lo, p, seed);
    }
}

static void cpu_dropout_backward(const float *dy, float *dx, size_t n, float p, uint64_t seed) {
    if (!dx || p >= 1.0f) return;
    if (p <= 0.0f) {
        cpu_axpy(1.0f, dy, dx, n);
        return;
    }
    const long spans = (long)((n + CPU_SPAN - 1) / CPU_SPAN);
#pragma omp parallel for schedule(static) if (n > CPU_PAR_MIN / 4)
    for (long sp = 0; sp < spans; sp++) {
        const size_t lo = (size_t)sp * CPU_SPAN, len = n - lo < CPU_SPAN ? n - lo : CPU_SPAN;
        cpu_dropout_span_add(dy + lo, dx + lo, len, lo, p, seed);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* reductions: double partial sums over blocks of REDUCE_BLOCK (vectorised), blocks added in   */
/* double, so the error stays ~1e-7 relative however long the vector.                          */

#define REDUCE_BLOCK 1024

static double cpu_sum(const float *x, size_t n) {
    long nblocks = (long)((n + REDUCE_BLOCK - 1) / REDUCE_BLOCK);
    double total = 0.0;
#pragma omp parallel for reduction(+ : total) if (n > CPU_PAR_MIN)
    for (long bk = 0; bk < nblocks; bk++) {
        size_t lo = (size_t)bk * REDUCE_BLOCK;
        size_t hi = lo + REDUCE_BLOCK < n ? lo + REDUCE_BLOCK : n;
        double part = 0.0; /* double partials: exact enough whatever the vector width */
#pragma omp simd reduction(+ : part)
        for (size_t i = lo; i < hi; i++) part += (double)x[i];
        total += part;
    }
    return total;
}

static double cpu_sum_squares(const float *x, size_t n) {
    long nblocks = (long)((n + REDUCE_BLOCK - 1) / REDUCE_BLOCK);
    double total = 0.0;
#pragma omp parallel for reduction(+ : total) if (n > CPU_PAR_MIN)
    for (long bk = 0; bk < nblocks; bk++) {
        size_t lo = (size_t)bk * REDUCE_BLOCK;
        size_t hi = lo + REDUCE_BLOCK < n ? lo + REDUCE_BLOCK : n;
        double part = 0.0; /* double partials: exact enough whatever the vector width */
#pragma omp simd reduction(+ : part)
        for (size_t i = lo; i < hi; i++) part += (double)x[i] * x[i];
        total += part;
    }
    return total;
}

/* ------------------------------------------------------------------------------------------ */
/* AdamW, the order of operations of PyTorch's single-tensor AdamW:                            */
/*   p *= 1 - lr*wd; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;                                */
/*   p -= (lr / (1-b1^t)) * m / (sqrt(v) / sqrt(1-b2^t) + eps)                                  */
/* The bias corrections are computed in double (PyTorch computes them as Python floats).       */

static void cpu_adamw(float *p, const float *grad, float *m, float *v, size_t n, float lr,
                      float beta1, float beta2, float eps, float wd, int step, float gscale) {
    const double bc1 = 1.0 - pow((double)beta1, (double)step);
    const double bc2 = 1.0 - pow((double)beta2, (double)step);
    const float step_size = (float)((double)lr / bc1);
    const float bc2_sqrt = (float)sqrt(bc2);
    const float decay = (float)(1.0 - (double)lr * wd);
    const float b1 = beta1, b2 = beta2, one_b1 = 1.0f - beta1, one_b2 = 1.0f - beta2;
    long nn = (long)n;
#pragma omp parallel for simd if (nn > CPU_PAR_MIN)
    for (long i = 0; i < nn; i++) {
        float g = grad[i] * gscale;
        float pi = p[i] * decay;
        float mi = b1 * m[i] + one_b1 * g;
        float vi = b2 * v[i] + one_b2 * g * g;
        float denom = sqrtf(vi) / bc2_sqrt + eps;
        p[i] = pi - step_size * (mi / denom);
        m[i] = mi;
        v[i] = vi;
    }
}

/* ------------------------------------------------------------------------------------------ */

static const Backend g_cpu_backend = {
    .name = "cpu",
    .alloc = cpu_alloc,
    .free = cpu_free,
    .alloc_bytes = cpu_alloc_bytes,
    .free_bytes = cpu_free_bytes,
    .upload = cpu_upload,
    .download = cpu_download,
    .copy = cpu_copy,
    .fill = cpu_fill,
    .synchronize = cpu_synchronize,
    .set_precision = cpu_set_precision,
    .conv2d_forward = cpu_amp_conv2d_forward,
    .conv2d_backward_data = cpu_amp_conv2d_backward_data,
    .conv2d_backward_weight = cpu_amp_conv2d_backward_weight,
    .channel_affine = cpu_channel_affine,
    .channel_affine_backward = cpu_channel_affine_backward,
    .relu_forward = cpu_relu_forward,
    .relu_backward = cpu_relu_backward,
    .add = cpu_add,
    .add_relu = cpu_add_relu,
    .axpy = cpu_axpy,
    .scale = cpu_scale,
    .sigmoid_forward = cpu_sigmoid_forward,
    .sigmoid_backward = cpu_sigmoid_backward,
    .dropout_forward = cpu_dropout_forward,
    .dropout_backward = cpu_dropout_backward,
    .maxpool_forward = cpu_maxpool_forward,
    .maxpool_backward = cpu_maxpool_backward,
    .gemm = cpu_amp_gemm,
    .linear_forward = cpu_amp_linear_forward,
    .linear_backward = cpu_amp_linear_backward,
    .transpose = cpu_transpose,
    .layernorm_forward = cpu_layernorm_forward,
    .layernorm_backward = cpu_layernorm_backward,
    .softmax_forward = cpu_softmax_forward,
    .softmax_backward = cpu_softmax_backward,
    .attention_forward = cpu_attention_forward,
    .attention_backward = cpu_attention_backward,
    .sum = cpu_sum,
    .sum_squares = cpu_sum_squares,
    .adamw = cpu_adamw,
};

const Backend *backend_cpu(void) { return &g_cpu_backend; }
