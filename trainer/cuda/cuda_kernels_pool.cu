/* cuda_kernels_pool.cu - max-pooling on the device, CNHW, with the CPU backend's exact
 * semantics (backend_cpu_conv.c): padding never wins, argmax = flat index into the input's H*W
 * plane, among equal maxima the earliest in row-major window order wins, and NaN handling
 * follows the CPU's two-pass order (column maxima top to bottom, then columns left to right),
 * so y and argmax are the CPU's bits.
 *
 * Forward: one thread per output element (grid-stride over C*B*Ho*Wo).
 * Backward: a gather, one thread per input element: it visits, in increasing output order,
 * the (at most ceil(k/stride)^2) windows that contain it and adds dy where the window's argmax
 * is this element. No atomics, so it is deterministic, and the additions happen in the CPU's
 * order (the CPU scatters in increasing output order), giving the CPU's bits. */
#include "cuda_kernels_internal.h"

static void pool_check_shape(const char *op, const PoolShape *s) {
    PoolShape t = *s;
    pool_shape_init(&t);
    if (s->C < 1 || s->B < 1 || s->H < 1 || s->W < 1 || s->k < 1 || s->stride < 1 || s->pad < 0)
        cuda_kernels_shape_error(op, "PoolShape has a non-positive size or stride");
    if (2 * s->pad > s->k) cuda_kernels_shape_error(op, "padding larger than half the kernel");
    if (t.Ho != s->Ho || t.Wo != s->Wo || s->Ho < 1 || s->Wo < 1)
        cuda_kernels_shape_error(op, "PoolShape Ho/Wo do not match pool_shape_init()");
    if ((size_t)s->H * s->W > (size_t)INT32_MAX)
        cuda_kernels_shape_error(op, "an H*W plane too large for int32 argmax indices");
}

/* Does (v, idx) replace the current (best, best_idx)? Larger, or equal and earlier, or NaN. */
__device__ __forceinline__ bool pool_takes(float v, int32_t idx, float best, int32_t best_idx) {
    return (v > best) | ((v == best) & (idx < best_idx)) | (v != v);
}

/* x: [C, B, H, W]; y, argmax: [C, B, Ho, Wo]. */
__global__ static void maxpool_forward_kernel(const float *x, float *y, int32_t *argmax, size_t n_out,
                                              int H, int W, int Ho, int Wo, int k, int stride,
                                              int pad) {
    const size_t plane_out = (size_t)Ho * Wo;
    for (size_t o = global_thread_index(); o < n_out; o += global_thread_count()) {
        const size_t pl = o / plane_out; /* c*B + b */
        const int rem = (int)(o - pl * plane_out);
        const int oy = rem / Wo, ox = rem - oy * Wo;
        const float *xp = x + pl * (size_t)H * W; /* [H, W] */
        const int h0 = oy * stride - pad, w0 = ox * stride - pad;
        const int hs = h0 < 0 ? 0 : h0, he = h0 + k < H ? h0 + k : H;
        const int ws = w0 < 0 ? 0 : w0, we = w0 + k < W ? w0 + k : W;
        /* pool_check_shape guarantees hs < he and ws < we (2*pad <= k) */
        float best = 0.0f;
        int32_t best_idx = 0;
        for (int iw = ws; iw < we; iw++) {
            /* the column's maximum, top-most among equals, a NaN wins (CPU column pass) */
            float cm = xp[(size_t)hs * W + iw];
            int32_t ci = hs * W + iw;
            for (int ih = hs + 1; ih < he; ih++) {
                const float v = xp[(size_t)ih * W + iw];
                if ((v > cm) | (v != v)) {
                    cm = v;
                    ci = ih * W + iw;
                }
            }
            /* across columns left to right (CPU row pass) */
            if (iw == ws || pool_takes(cm, ci, best, best_idx)) {
                best = cm;
                best_idx = ci;
            }
        }
        y[o] = best;
        argmax[o] = best_idx;
    }
}

/* dx: [C, B, H, W] += gather of dy [C, B, Ho, Wo] through argmax [C, B, Ho, Wo]. */
__global__ static void maxpool_backward_kernel(const float *dy, const int32_t *argmax, float *dx,
                                               size_t n_in, int H, int W, int Ho, int Wo, int k,
                                               int stride, int pad) {
    const size_t plane_in = (size_t)H * W, plane_out = (size_t)Ho * Wo;
    for (size_t i = global_thread_index(); i < n_in; i += global_thread_count()) {
        const size_t pl = i / plane_in;
        const int flat = (int)(i - pl * plane_in); /* index in the H*W plane */
        const int ih = flat / W, iw = flat - ih * W;
        /* windows oy with oy*stride - pad <= ih < oy*stride - pad + k */
        const int ylo_num = ih + pad - k + 1, xlo_num = iw + pad - k + 1;
        const int oy_lo = ylo_num <= 0 ? 0 : (ylo_num + stride - 1) / stride;
        const int ox_lo = xlo_num <= 0 ? 0 : (xlo_num + stride - 1) / stride;
        int oy_hi = (ih + pad) / stride, ox_hi = (iw + pad) / stride;
        if (oy_hi > Ho - 1) oy_hi = Ho - 1;
        if (ox_hi > Wo - 1) ox_hi = Wo - 1;
        if (oy_lo > oy_hi || ox_lo > ox_hi) continue;
        const float *dyp = dy + pl * plane_out;
        const int32_t *ap = argmax + pl * plane_out;
        float acc = dx[i];
        bool hit = false;
        for (int oy = oy_lo; oy <= oy_hi; oy++)
            for (int ox = ox_lo; ox <= ox_hi; ox++) {
                const size_t o = (size_t)oy * Wo + ox;
                if (ap[o] == flat) {
                    acc = __fadd_rn(acc, dyp[o]);
                    hit = true;
                }
            }
        if (hit) dx[i] = acc;
    }
}

void cuda_maxpool_forward(const PoolShape *s, const float *x, float *y, int32_t *argmax) {
    pool_check_shape("maxpool_forward", s);
    const size_t n_out = (size_t)s->C * s->B * s->Ho * s->Wo;
    maxpool_forward_kernel<<<grid_for_elements(n_out), KERNEL_THREADS, 0, cuda_stream()>>>(
        x, y, argmax, n_out, s->H, s->W, s->Ho, s->Wo, s->k, s->stride, s->pad);
    KERNEL_LAUNCH_CHECK();
}

void cuda_maxpool_backward(const PoolShape *s, const float *dy, const int32_t *argmax, float *dx) {
    if (!dx) return;
    pool_check_shape("maxpool_backward", s);
    const size_t n_in = (size_t)s->C * s->B * s->H * s->W;
    maxpool_backward_kernel<<<grid_for_elements(n_in), KERNEL_THREADS, 0, cuda_stream()>>>(
        dy, argmax, dx, n_in, s->H, s->W, s->Ho, s->Wo, s->k, s->stride, s->pad);
    KERNEL_LAUNCH_CHECK();
}
