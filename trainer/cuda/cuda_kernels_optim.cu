/* cuda_kernels_optim.cu - the reductions (sum, sum of squares) and AdamW on the device, with
 * the CPU backend's semantics (backend_cpu.c).
 *
 * Reductions accumulate in double, as the CPU does, in two deterministic passes: a grid of at
 * most REDUCE_MAX_BLOCKS blocks (the count depends only on n) writes one double partial per
 * block (grid-stride per thread, then a fixed-order block reduction), and one block adds the
 * partials in a fixed order. The same n therefore gives the same bits every run. The result
 * returns to the host, so these calls synchronise the stream.
 *
 * AdamW: one thread per parameter (grid-stride), the CPU's order of operations with the bias
 * corrections computed in double on the host; every float operation uses the _rn intrinsics
 * (no FMA contraction) and sqrt / division are IEEE-rounded, so the update is the CPU's bits. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include "cuda_kernels_internal.h"

#define REDUCE_MAX_BLOCKS 1024
#define REDUCE_ITEMS_PER_THREAD 8 /* about this many elements per thread before capping */

/* partials[blockIdx.x] = sum over this block's grid-stride elements of x (or x^2), in double */
template <bool SQUARES>
__global__ static void reduce_partials_kernel(const float *x, size_t n, double *partials) {
    double acc = 0.0;
    for (size_t i = global_thread_index(); i < n; i += global_thread_count()) {
        const double v = (double)x[i];
        acc += SQUARES ? v * v : v;
    }
    const double total = block_sum_double(acc);
    if (threadIdx.x == 0) partials[blockIdx.x] = total;
}

/* One block: *out = sum of partials [count] in a fixed order. */
__global__ static void reduce_finish_kernel(const double *partials, int count, double *out) {
    double acc = 0.0;
    for (int i = threadIdx.x; i < count; i += blockDim.x) acc += partials[i];
    const double total = block_sum_double(acc);
    if (threadIdx.x == 0) *out = total;
}

/* Device buffer [REDUCE_MAX_BLOCKS partials + 1 result] doubles, allocated on first use. */
static double *reduce_buffer(void) {
    static double *buf;
    if (!buf) {
        buf = (double *)cuda_alloc_bytes(MEM_WORKSPACE, (REDUCE_MAX_BLOCKS + 1) * sizeof(double));
        if (!buf) {
            fprintf(stderr, "error: backend_cuda: the reduction buffer (%zu bytes) was refused by "
                            "the memory budget\nHINT: raise --mem-limit.\n",
                    (size_t)(REDUCE_MAX_BLOCKS + 1) * sizeof(double));
            exit(EXIT_OOM);
        }
    }
    return buf;
}

template <bool SQUARES>
static double reduce(const float *x, size_t n) {
    if (n == 0) return 0.0;
    double *partials = reduce_buffer(), *result = partials + REDUCE_MAX_BLOCKS;
    const size_t per_block = (size_t)KERNEL_THREADS * REDUCE_ITEMS_PER_THREAD;
    size_t blocks = (n + per_block - 1) / per_block;
    if (blocks > REDUCE_MAX_BLOCKS) blocks = REDUCE_MAX_BLOCKS;
    reduce_partials_kernel<SQUARES><<<(unsigned)blocks, KERNEL_THREADS, 0, cuda_stream()>>>(
        x, n, partials);
    KERNEL_LAUNCH_CHECK();
    reduce_finish_kernel<<<1, KERNEL_THREADS, 0, cuda_stream()>>>(partials, (int)blocks, result);
    KERNEL_LAUNCH_CHECK();
    double host = 0.0;
    cudaCheck(cudaMemcpyAsync(&host, result, sizeof host, cudaMemcpyDeviceToHost, cuda_stream()));
    cudaCheck(cudaStreamSynchronize(cuda_stream()));
    return host;
}

double cuda_sum(const float *x, size_t n) { return reduce<false>(x, n); }
double cuda_sum_squares(const float *x, size_t n) { return reduce<true>(x, n); }

/* ------------------------------------------------------------------------------------------ */
/* AdamW (PyTorch single-tensor order):                                                        */
/*   g = grad*gscale; p *= 1 - lr*wd; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;               */
/*   p -= (lr / (1-b1^t)) * m / (sqrt(v) / sqrt(1-b2^t) + eps)                                  */

__global__ static void adamw_kernel(float *p, const float *grad, float *m, float *v, size_t n,
                                    float b1, float b2, float one_b1, float one_b2, float eps,
                                    float gscale, float step_size, float bc2_sqrt, float decay) {
    for (size_t i = global_thread_index(); i < n; i += global_thread_count()) {
        const float g = __fmul_rn(grad[i], gscale);
        const float pi = __fmul_rn(p[i], decay);
        const float mi = __fadd_rn(__fmul_rn(b1, m[i]), __fmul_rn(one_b1, g));
        const float vi = __fadd_rn(__fmul_rn(b2, v[i]), __fmul_rn(__fmul_rn(one_b2, g), g));
        const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), bc2_sqrt), eps);
        p[i] = __fsub_rn(pi, __fmul_rn(step_size, __fdiv_rn(mi, denom)));
        m[i] = mi;
        v[i] = vi;
    }
}

void cuda_adamw(float *p, const float *grad, float *m, float *v, size_t n, float lr, float beta1,
                float beta2, float eps, float wd, int step, float gscale) {
    if (n == 0) return;
    /* the same host arithmetic as cpu_adamw, so both backends use the same constants */
    const double bc1 = 1.0 - pow((double)beta1, (double)step);
    const double bc2 = 1.0 - pow((double)beta2, (double)step);
    const float step_size = (float)((double)lr / bc1);
    const float bc2_sqrt = (float)sqrt(bc2);
    const float decay = (float)(1.0 - (double)lr * wd);
    adamw_kernel<<<grid_for_elements(n), KERNEL_THREADS, 0, cuda_stream()>>>(
        p, grad, m, v, n, beta1, beta2, 1.0f - beta1, 1.0f - beta2, eps, gscale, step_size,
        bc2_sqrt, decay);
    KERNEL_LAUNCH_CHECK();
}
