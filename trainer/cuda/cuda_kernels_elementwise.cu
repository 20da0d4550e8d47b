/* cuda_kernels_elementwise.cu - per-channel affine (FrozenBatchNorm), ReLU, add, axpy, scale,
 * sigmoid and dropout on the device, with the CPU backend's semantics (backend.h: forward
 * overwrites, backward accumulates, a NULL gradient is skipped).
 *
 * Every kernel is a grid-stride loop (64-bit indices) of KERNEL_THREADS threads per block,
 * one element per thread per iteration: consecutive threads touch consecutive floats, so every
 * access is coalesced. Arithmetic uses the _rn intrinsics where the CPU multiplies then adds,
 * so results are the CPU's bits (sigmoid differs by its exp: libdevice expf vs cpu_expf).
 * Dropout draws the CPU's counter RNG (cuda_rng_uniform), so masks are identical. */
#include "cuda_kernels_internal.h"

/* ------------------------------------------------------------------------------------------ */
/* per-channel affine, x: [C, N] (CNHW with N = B*H*W)                                        */

/* Grid: y over channels (strided past 65535), x over the channel's N floats (grid-stride). */
__global__ static void channel_affine_kernel(const float *x, const float *scale,
                                             const float *shift, float *y, int C, size_t N,
                                             int relu) {
    for (int c = blockIdx.y; c < C; c += gridDim.y) {
        const float a = scale[c], b = shift[c];
        const float *xc = x + (size_t)c * N; /* [N] */
        float *yc = y + (size_t)c * N;       /* [N], may be xc */
        for (size_t i = global_thread_index(); i < N; i += global_thread_count()) {
            const float v = mul_add_rn(xc[i], a, b);
            yc[i] = relu ? (v > 0.0f ? v : 0.0f) : v;
        }
    }
}

__global__ static void channel_affine_backward_kernel(const float *dy, const float *y,
                                                      const float *scale, float *dx, int C,
                                                      size_t N, int relu) {
    for (int c = blockIdx.y; c < C; c += gridDim.y) {
        const float a = scale[c];
        const size_t off = (size_t)c * N;
        for (size_t i = global_thread_index(); i < N; i += global_thread_count()) {
            const float g = __fmul_rn(dy[off + i], a);
            if (!relu || y[off + i] > 0.0f) dx[off + i] = __fadd_rn(dx[off + i], g);
        }
    }
}

/* 2-D grid for [C, N]: one block row per channel (up to 65535), about 16K blocks in all. */
static dim3 channel_grid(int C, size_t N) {
    const unsigned gy = (unsigned)(C < 65535 ? C : 65535);
    size_t gx = (N + KERNEL_THREADS - 1) / KERNEL_THREADS;
    const size_t cap = 16384 / gy > 0 ? 16384 / gy : 1;
    if (gx > cap) gx = cap;
    return dim3((unsigned)gx, gy, 1);
}

void cuda_channel_affine(const float *x, const float *scale, const float *shift, float *y, int C,
                         size_t N, int relu) {
    if (C <= 0 || N == 0) return;
    channel_affine_kernel<<<channel_grid(C, N), KERNEL_THREADS, 0, cuda_stream()>>>(
        x, scale, shift, y, C, N, relu);
    KERNEL_LAUNCH_CHECK();
}

void cuda_channel_affine_backward(const float *dy, const float *y, const float *scale, float *dx,
                                  int C, size_t N, int relu) {
    if (!dx || C <= 0 || N == 0) return;
    channel_affine_backward_kernel<<<channel_grid(C, N), KERNEL_THREADS, 0, cuda_stream()>>>(
        dy, y, scale, dx, C, N, relu);
    KERNEL_LAUNCH_CHECK();
}

/* ------------------------------------------------------------------------------------------ */
/* elementwise over n floats                                                                  */

#define GRID_STRIDE_LOOP(i, n) \
    for (size_t i = global_thread_index(); i < (n); i += global_thread_count())

__global__ static void relu_forward_kernel(const float *x, float *y, size_t n) {
    GRID_STRIDE_LOOP(i, n) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
}
__global__ static void relu_backward_kernel(const float *dy, const float *y, float *dx, size_t n) {
    GRID_STRIDE_LOOP(i, n) if (y[i] > 0.0f) dx[i] = __fadd_rn(dx[i], dy[i]);
}
__global__ static void add_kernel(const float *a, const float *b, float *y, size_t n) {
    GRID_STRIDE_LOOP(i, n) y[i] = __fadd_rn(a[i], b[i]);
}
__global__ static void add_relu_kernel(const float *a, const float *b, float *y, size_t n) {
    GRID_STRIDE_LOOP(i, n) {
        const float v = __fadd_rn(a[i], b[i]);
        y[i] = v > 0.0f ? v : 0.0f;
    }
}
__global__ static void axpy_kernel(float alpha, const float *x, float *y, size_t n) {
    GRID_STRIDE_LOOP(i, n) y[i] = mul_add_rn(alpha, x[i], y[i]);
}
__global__ static void scale_kernel(float *x, float alpha, size_t n) {
    GRID_STRIDE_LOOP(i, n) x[i] = __fmul_rn(x[i], alpha);
}
__global__ static void sigmoid_forward_kernel(const float *x, float *y, size_t n) {
    GRID_STRIDE_LOOP(i, n) y[i] = __fdiv_rn(1.0f, __fadd_rn(1.0f, expf(-x[i])));
}
/* dx += dy * y * (1 - y), evaluated left to right as on the CPU */
__global__ static void sigmoid_backward_kernel(const float *dy, const float *y, float *dx,
                                               size_t n) {
    GRID_STRIDE_LOOP(i, n) {
        const float t = __fmul_rn(__fmul_rn(dy[i], y[i]), __fsub_rn(1.0f, y[i]));
        dx[i] = __fadd_rn(dx[i], t);
    }
}

/* Launches kernel over n elements on the op stream (n == 0: nothing). */
#define LAUNCH_ELEMENTWISE(kernel, n, ...)                                                   \
    do {                                                                                     \
        if ((n) == 0) break;                                                                 \
        kernel<<<grid_for_elements(n), KERNEL_THREADS, 0, cuda_stream()>>>(__VA_ARGS__);     \
        KERNEL_LAUNCH_CHECK();                                                               \
    } while (0)

void cuda_relu_forward(const float *x, float *y, size_t n) {
    LAUNCH_ELEMENTWISE(relu_forward_kernel, n, x, y, n);
}
void cuda_relu_backward(const float *dy, const float *y, float *dx, size_t n) {
    if (!dx) return;
    LAUNCH_ELEMENTWISE(relu_backward_kernel, n, dy, y, dx, n);
}
void cuda_add(const float *a, const float *b, float *y, size_t n) {
    LAUNCH_ELEMENTWISE(add_kernel, n, a, b, y, n);
}
void cuda_add_relu(const float *a, const float *b, float *y, size_t n) {
    LAUNCH_ELEMENTWISE(add_relu_kernel, n, a, b, y, n);
}
void cuda_axpy(float alpha, const float *x, float *y, size_t n) {
    LAUNCH_ELEMENTWISE(axpy_kernel, n, alpha, x, y, n);
}
void cuda_scale(float *x, float alpha, size_t n) {
    LAUNCH_ELEMENTWISE(scale_kernel, n, x, alpha, n);
}
void cuda_sigmoid_forward(const float *x, float *y, size_t n) {
    LAUNCH_ELEMENTWISE(sigmoid_forward_kernel, n, x, y, n);
}
void cuda_sigmoid_backward(const float *dy, const float *y, float *dx, size_t n) {
    if (!dx) return;
    LAUNCH_ELEMENTWISE(sigmoid_backward_kernel, n, dy, y, dx, n);
}

/* ------------------------------------------------------------------------------------------ */
/* dropout: keep element i when rng_uniform(seed, i) >= p, kept ones scaled by 1/(1-p) (the    */
/* scale is computed once on the host in float, exactly as the CPU does). No mask is stored.   */

/* Grid: y over planes (strided), x over the plane's elements (grid-stride). */
__global__ static void dropout_planes_kernel(const float *src, long src_stride, float *dst,
                                             long dst_stride, size_t plane_len, int planes,
                                             uint64_t first_index, float p, float keep_scale,
                                             uint64_t seed) {
    for (int pl = blockIdx.y; pl < planes; pl += gridDim.y) {
        const float *s = src + (size_t)pl * src_stride; /* [plane_len] */
        float *d = dst + (size_t)pl * dst_stride;       /* [plane_len] */
        const uint64_t base = first_index + (uint64_t)pl * (uint64_t)src_stride;
        for (size_t e = global_thread_index(); e < plane_len; e += global_thread_count()) {
            const float kept = __fmul_rn(s[e], keep_scale);
            d[e] = cuda_rng_uniform(seed, base + e) >= p ? kept : 0.0f;
        }
    }
}

/* dx[i] += dy[i] / (1-p) where rng_uniform(seed, i) >= p */
__global__ static void dropout_backward_kernel(const float *dy, float *dx, size_t n, float p,
                                               float keep_scale, uint64_t seed) {
    GRID_STRIDE_LOOP(i, n) {
        const float kept = __fmul_rn(dy[i], keep_scale);
        dx[i] = __fadd_rn(dx[i], cuda_rng_uniform(seed, i) >= p ? kept : 0.0f);
    }
}

void cuda_dropout_planes(const float *src, long src_stride, float *dst, long dst_stride,
                         size_t plane_len, int planes, uint64_t first_index, float p,
                         uint64_t seed) {
    if (plane_len == 0 || planes <= 0) return;
    const float keep_scale = 1.0f / (1.0f - p);
    const unsigned gy = (unsigned)(planes < 65535 ? planes : 65535);
    unsigned gx = grid_for_elements(plane_len);
    const unsigned cap = 16384 / gy > 0 ? 16384 / gy : 1;
    if (gx > cap) gx = cap;
    dropout_planes_kernel<<<dim3(gx, gy, 1), KERNEL_THREADS, 0, cuda_stream()>>>(
        src, src_stride, dst, dst_stride, plane_len, planes, first_index, p, keep_scale, seed);
    KERNEL_LAUNCH_CHECK();
}

void cuda_dropout_forward(const float *x, float *y, size_t n, float p, uint64_t seed) {
    if (n == 0) return;
    if (p <= 0.0f) {
        cuda_copy(y, x, n); /* no-op when y == x */
        return;
    }
    if (p >= 1.0f) { /* nothing is kept */
        cuda_fill(y, 0.0f, n);
        return;
    }
    cuda_dropout_planes(x, 0, y, 0, n, 1, 0, p, seed);
}

void cuda_dropout_backward(const float *dy, float *dx, size_t n, float p, uint64_t seed) {
    if (!dx || n == 0 || p >= 1.0f) return;
    if (p <= 0.0f) {
        cuda_axpy(1.0f, dy, dx, n);
        return;
    }
    const float keep_scale = 1.0f / (1.0f - p);
    LAUNCH_ELEMENTWISE(dropout_backward_kernel, n, dy, dx, n, p, keep_scale, seed);
}
