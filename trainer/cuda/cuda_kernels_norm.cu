/* cuda_kernels_norm.cu - layer norm and row softmax on the device, with the CPU backend's
 * semantics (backend_cpu_dense.c).
 *
 * Row kernels use one warp per row (WARPS_PER_BLOCK rows per block, grid-stride over rows):
 * lane l handles columns l, l+32, ..., so every pass over a row is a coalesced 128-byte read,
 * and the row statistics are warp butterfly reductions (fixed order: deterministic).
 *  - layernorm_forward: mean and variance accumulated in double, two-pass variance, as the CPU;
 *  - layernorm_backward: dx per row (float sums, as the CPU); dgamma / dbeta are column sums
 *    over the T rows, computed without atomics in two deterministic passes: blocks of 32
 *    columns x LN_CHUNK_ROWS-row chunks write double partials to the workspace, then one thread
 *    per column adds its chunks in order and accumulates into dgamma / dbeta;
 *  - softmax: max, sum of exp, then the normalised values (three passes over the row). */
#include "cuda_kernels_internal.h"

/* ------------------------------------------------------------------------------------------ */
/* layer norm                                                                                 */

/* x, y: [T, D]; gamma, beta: [D] or NULL; mean, rstd: [T] or NULL. */
__global__ static void layernorm_forward_kernel(const float *x, const float *gamma,
                                                const float *beta, float *y, float *mean,
                                                float *rstd, int T, int D, float eps) {
    const int lane = threadIdx.x & 31;
    const int nwarps = (int)(global_thread_count() >> 5);
    for (int t = (int)(global_thread_index() >> 5); t < T; t += nwarps) {
        const float *xt = x + (size_t)t * D;
        float *yt = y + (size_t)t * D;
        double s = 0.0;
        for (int d = lane; d < D; d += 32) s += xt[d];
        const double mu = warp_sum_double(s) / D;
        double ss = 0.0; /* two-pass variance: no cancellation for rows with a large mean */
        for (int d = lane; d < D; d += 32) {
            const double c = xt[d] - mu;
            ss += c * c;
        }
        ss = warp_sum_double(ss);
        const float m = (float)mu, r = (float)(1.0 / sqrt(ss / D + (double)eps));
        if (lane == 0) {
            if (mean) mean[t] = m;
            if (rstd) rstd[t] = r;
        }
        for (int d = lane; d < D; d += 32) {
            const float xh = __fmul_rn(__fsub_rn(xt[d], m), r);
            yt[d] = mul_add_rn(xh, gamma ? gamma[d] : 1.0f, beta ? beta[d] : 0.0f);
        }
    }
}

void cuda_layernorm_forward(const float *x, const float *gamma, const float *beta, float *y,
                            float *mean, float *rstd, int T, int D, float eps) {
    if (T <= 0 || D <= 0) return;
    layernorm_forward_kernel<<<grid_for_rows((size_t)T), KERNEL_THREADS, 0, cuda_stream()>>>(
        x, gamma, beta, y, mean, rstd, T, D, eps);
    KERNEL_LAUNCH_CHECK();
}

/* dx [T, D] += rstd * (g - mean(g) - xhat * mean(g * xhat)),  g = dy * gamma */
__global__ static void layernorm_backward_dx_kernel(const float *dy, const float *x,
                                                    const float *mean, const float *rstd,
                                                    const float *gamma, float *dx, int T, int D) {
    const int lane = threadIdx.x & 31;
    const int nwarps = (int)(global_thread_count() >> 5);
    for (int t = (int)(global_thread_index() >> 5); t < T; t += nwarps) {
        const float *dyt = dy + (size_t)t * D, *xt = x + (size_t)t * D;
        float *dxt = dx + (size_t)t * D;
        const float m = mean[t], r = rstd[t];
        float sum_g = 0.0f, sum_gx = 0.0f;
        for (int d = lane; d < D; d += 32) {
            const float g = dyt[d] * (gamma ? gamma[d] : 1.0f);
            sum_g += g;
            sum_gx += g * ((xt[d] - m) * r);
        }
        const float mean_g = warp_sum(sum_g) / D, mean_gx = warp_sum(sum_gx) / D;
        for (int d = lane; d < D; d += 32) {
            const float g = __fmul_rn(dyt[d], gamma ? gamma[d] : 1.0f);
            const float xh = __fmul_rn(__fsub_rn(xt[d], m), r);
            const float inner = __fsub_rn(__fsub_rn(g, mean_g), __fmul_rn(xh, mean_gx));
            dxt[d] = mul_add_rn(r, inner, dxt[d]);
        }
    }
}

#define LN_COLS 32           /* columns per block of the parameter-gradient pass (= blockDim.x) */
#define LN_ROW_LANES 8       /* threads per column (blockDim.y), striding over the chunk's rows */
#define LN_CHUNK_ROWS 64     /* rows per chunk (grid.y), at least; more when T is very large */
#define LN_MAX_CHUNKS 1024

/* Pass 1, grid (ceil(D / LN_COLS), chunks), block (LN_COLS, LN_ROW_LANES): thread (tx, ty)
 * sums column d = blockIdx.x*LN_COLS + tx over rows chunk_start + ty, + LN_ROW_LANES, ...; the
 * LN_ROW_LANES sums are added in order of ty. partial_g, partial_b: [chunks, D] doubles. */
__global__ static void layernorm_param_partials_kernel(const float *dy, const float *x,
                                                       const float *mean, const float *rstd,
                                                       double *partial_g, double *partial_b,
                                                       int T, int D, int chunk_rows) {
    __shared__ double sg[LN_ROW_LANES][LN_COLS], sb[LN_ROW_LANES][LN_COLS];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int d = blockIdx.x * LN_COLS + tx;
    const int chunk = blockIdx.y;
    const int t0 = chunk * chunk_rows, t1 = t0 + chunk_rows < T ? t0 + chunk_rows : T;
    double acc_g = 0.0, acc_b = 0.0;
    if (d < D)
        for (int t = t0 + ty; t < t1; t += LN_ROW_LANES) {
            const float g = dy[(size_t)t * D + d];
            const float xh = (x[(size_t)t * D + d] - mean[t]) * rstd[t];
            acc_g += __fmul_rn(g, xh); /* float product, double sum, as on the CPU */
            acc_b += g;
        }
    sg[ty][tx] = acc_g;
    sb[ty][tx] = acc_b;
    __syncthreads();
    if (ty == 0 && d < D) {
        for (int j = 1; j < LN_ROW_LANES; j++) {
            acc_g += sg[j][tx];
            acc_b += sb[j][tx];
        }
        partial_g[(size_t)chunk * D + d] = acc_g;
        partial_b[(size_t)chunk * D + d] = acc_b;
    }
}

/* Pass 2, one thread per column: dgamma[d] += sum over chunks in order (NULL = skipped). */
__global__ static void layernorm_param_finish_kernel(const double *partial_g,
                                                     const double *partial_b, float *dgamma,
                                                     float *dbeta, int D, int chunks) {
    for (size_t i = global_thread_index(); i < (size_t)D; i += global_thread_count()) {
        double g = 0.0, b = 0.0;
        for (int c = 0; c < chunks; c++) {
            g += partial_g[(size_t)c * D + i];
            b += partial_b[(size_t)c * D + i];
        }
        if (dgamma) dgamma[i] += (float)g;
        if (dbeta) dbeta[i] += (float)b;
    }
}

void cuda_layernorm_backward(const float *dy, const float *x, const float *mean, const float *rstd,
                             const float *gamma, float *dx, float *dgamma, float *dbeta, int T,
                             int D) {
    if (T <= 0 || D <= 0) return;
    if (dgamma || dbeta) {
        int chunk_rows = LN_CHUNK_ROWS;
        if ((T + chunk_rows - 1) / chunk_rows > LN_MAX_CHUNKS)
            chunk_rows = (T + LN_MAX_CHUNKS - 1) / LN_MAX_CHUNKS;
        const int chunks = (T + chunk_rows - 1) / chunk_rows;
        /* two [chunks, D] double arrays = 4 * chunks * D floats */
        double *partial_g = (double *)cuda_kernels_workspace((size_t)4 * chunks * D);
        double *partial_b = partial_g + (size_t)chunks * D;
        const dim3 grid((unsigned)((D + LN_COLS - 1) / LN_COLS), (unsigned)chunks, 1);
        layernorm_param_partials_kernel<<<grid, dim3(LN_COLS, LN_ROW_LANES, 1), 0,
                                          cuda_stream()>>>(dy, x, mean, rstd, partial_g,
                                                           partial_b, T, D, chunk_rows);
        KERNEL_LAUNCH_CHECK();
        layernorm_param_finish_kernel<<<grid_for_elements((size_t)D), KERNEL_THREADS, 0,
                                        cuda_stream()>>>(partial_g, partial_b, dgamma, dbeta, D,
                                                         chunks);
        KERNEL_LAUNCH_CHECK();
    }
    if (!dx) return;
    layernorm_backward_dx_kernel<<<grid_for_rows((size_t)T), KERNEL_THREADS, 0, cuda_stream()>>>(
        dy, x, mean, rstd, gamma, dx, T, D);
    KERNEL_LAUNCH_CHECK();
}

/* ------------------------------------------------------------------------------------------ */
/* softmax over rows                                                                          */

/* x, y: [R, N] (y == x allowed: each element is read and written by the same lane);
 * mask: [R / rows_per_mask, N] uint8 or NULL. */
__global__ static void softmax_rows_kernel(const float *x, float *y, size_t R, int N,
                                           const uint8_t *mask, size_t rows_per_mask) {
    const int lane = threadIdx.x & 31;
    const size_t nwarps = global_thread_count() >> 5;
    for (size_t r = global_thread_index() >> 5; r < R; r += nwarps) {
        const float *xr = x + r * N;
        float *yr = y + r * N;
        const uint8_t *mr = mask ? mask + (r / rows_per_mask) * N : NULL;
        float mx = -INFINITY;
        for (int j = lane; j < N; j += 32) {
            const float v = (mr && mr[j]) ? -INFINITY : xr[j];
            mx = v > mx ? v : mx;
        }
        mx = warp_max(mx);
        if (mx == -INFINITY) { /* every entry excluded: no distribution, all zeros */
            for (int j = lane; j < N; j += 32) yr[j] = 0.0f;
            continue;
        }
        float sum = 0.0f;
        for (int j = lane; j < N; j += 32) {
            const float v = (mr && mr[j]) ? -INFINITY : xr[j];
            sum += v == -INFINITY ? 0.0f : expf(v - mx);
        }
        const float inv = 1.0f / warp_sum(sum);
        for (int j = lane; j < N; j += 32) {
            const float v = (mr && mr[j]) ? -INFINITY : xr[j];
            const float e = v == -INFINITY ? 0.0f : expf(v - mx); /* excluded entries exactly 0 */
            yr[j] = __fmul_rn(e, inv);
        }
    }
}

void cuda_softmax_rows(const float *x, float *y, size_t R, int N, const uint8_t *mask,
                       size_t rows_per_mask) {
    if (R == 0 || N <= 0) return;
    if (mask && rows_per_mask == 0) cuda_kernels_shape_error("softmax", "rows_per_mask is 0");
    softmax_rows_kernel<<<grid_for_rows(R), KERNEL_THREADS, 0, cuda_stream()>>>(
        x, y, R, N, mask, rows_per_mask ? rows_per_mask : 1);
    KERNEL_LAUNCH_CHECK();
}

void cuda_softmax_forward(const float *x, float *y, int R, int N) {
    if (R <= 0) return;
    cuda_softmax_rows(x, y, (size_t)R, N, NULL, 1);
}

/* dx [R, N] += y * (dy - sum(dy * y)) per row */
__global__ static void softmax_backward_kernel(const float *dy, const float *y, float *dx,
                                               size_t R, int N) {
    const int lane = threadIdx.x & 31;
    const size_t nwarps = global_thread_count() >> 5;
    for (size_t r = global_thread_index() >> 5; r < R; r += nwarps) {
        const float *dyr = dy + r * N, *yr = y + r * N;
        float *dxr = dx + r * N;
        float dot = 0.0f;
        for (int j = lane; j < N; j += 32) dot += dyr[j] * yr[j];
        dot = warp_sum(dot);
        for (int j = lane; j < N; j += 32)
            dxr[j] = mul_add_rn(yr[j], __fsub_rn(dyr[j], dot), dxr[j]);
    }
}

void cuda_softmax_backward(const float *dy, const float *y, float *dx, int R, int N) {
    if (!dx || R <= 0 || N <= 0) return;
    softmax_backward_kernel<<<grid_for_rows((size_t)R), KERNEL_THREADS, 0, cuda_stream()>>>(
        dy, y, dx, (size_t)R, N);
    KERNEL_LAUNCH_CHECK();
}
