/* cuda_kernels_internal.h - shared pieces of the CUDA backend's own kernels (cuda_kernels_*.cu),
 * not a public API: the counter RNG on the device, launch-configuration helpers, warp / block
 * reductions, float arithmetic that rounds like the CPU build, the grow-only device workspace,
 * and host-side helpers one kernel file calls in another (kernels themselves are never launched
 * across files: the build has no relocatable device code).
 * CUDA build only (-DDETR_CUDA); see docs/cuda-kernels.md. */
#ifndef DETR_CUDA_KERNELS_INTERNAL_H
#define DETR_CUDA_KERNELS_INTERNAL_H
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <cuda_runtime.h>
#include "backend_cuda.h"
#include "cuda_check.h"
#include "cuda_ops.h"

/* ------------------------------------------------------------------------------------------ */
/* counter RNG: the same arithmetic as rng_hash64 / rng_uniform of trainer/rng.h, so a dropout */
/* mask drawn here is bit-identical to the CPU's (64-bit integer multiplies wrap identically,  */
/* the 24-bit integer converts to float exactly and the scale is a power of two).              */

__host__ __device__ __forceinline__ uint64_t cuda_rng_hash64(uint64_t seed, uint64_t index) {
    uint64_t z = seed * 0x9E3779B97F4A7C15ull + index + 0x632BE59BD9B4E019ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform in [0, 1) with 24 bits. */
__host__ __device__ __forceinline__ float cuda_rng_uniform(uint64_t seed, uint64_t index) {
    return (float)(cuda_rng_hash64(seed, index) >> 40) * (1.0f / 16777216.0f);
}

/* ------------------------------------------------------------------------------------------ */
/* float arithmetic rounded like the CPU build: gcc -std=c11 never contracts a*b+c into an FMA */
/* (-ffp-contract=off in ISO C mode) while nvcc does by default; the _rn intrinsics are never  */
/* contracted, so elementwise ops written with them give the CPU's bits exactly.               */

__device__ __forceinline__ float mul_add_rn(float a, float b, float c) {
    return __fadd_rn(__fmul_rn(a, b), c);
}

/* ------------------------------------------------------------------------------------------ */
/* launch configuration                                                                       */

#define KERNEL_THREADS 256           /* threads per block of every 1-D kernel */
#define WARPS_PER_BLOCK (KERNEL_THREADS / 32)
#define GRID_STRIDE_MAX_BLOCKS 8192  /* grid-stride loops cover elements beyond this grid */
#define ROW_KERNEL_MAX_BLOCKS 32768  /* warp-per-row kernels stride over rows beyond this */

/* Blocks for n elements, one per thread, capped (kernels use grid-stride loops); n > 0. */
static inline unsigned grid_for_elements(size_t n) {
    size_t blocks = (n + KERNEL_THREADS - 1) / KERNEL_THREADS;
    return (unsigned)(blocks > GRID_STRIDE_MAX_BLOCKS ? GRID_STRIDE_MAX_BLOCKS : blocks);
}

/* Blocks for `rows` rows handled one warp each (WARPS_PER_BLOCK rows per block), capped. */
static inline unsigned grid_for_rows(size_t rows) {
    size_t blocks = (rows + WARPS_PER_BLOCK - 1) / WARPS_PER_BLOCK;
    return (unsigned)(blocks > ROW_KERNEL_MAX_BLOCKS ? ROW_KERNEL_MAX_BLOCKS : blocks);
}

/* After every launch: a bad configuration is reported at the launch site. */
#define KERNEL_LAUNCH_CHECK() cudaCheck(cudaGetLastError())

/* Grid-stride index helpers (64-bit: n may exceed 2^31). */
__device__ __forceinline__ size_t global_thread_index(void) {
    return (size_t)blockIdx.x * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ size_t global_thread_count(void) {
    return (size_t)gridDim.x * blockDim.x;
}

/* ------------------------------------------------------------------------------------------ */
/* warp and block reductions (butterfly: every lane ends with the same, fixed-order result)    */

__device__ __forceinline__ float warp_sum(float v) {
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}
__device__ __forceinline__ double warp_sum_double(double v) {
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}
/* Max that ignores NaN like the CPU's `v > m ? v : m` (m starts at -inf, so it is never NaN). */
__device__ __forceinline__ float warp_max(float v) {
    for (int off = 16; off > 0; off >>= 1) {
        const float o = __shfl_xor_sync(0xffffffffu, v, off);
        v = o > v ? o : v;
    }
    return v;
}

/* Sum of one double per thread over a block of KERNEL_THREADS threads, in a fixed order
 * (warp butterflies, then warp 0 over the warp totals). Returns the total in thread 0 (other
 * threads get partial values). Contains __syncthreads(): every thread must call it. */
__device__ __forceinline__ double block_sum_double(double v) {
    __shared__ double warp_totals[WARPS_PER_BLOCK];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum_double(v);
    if (lane == 0) warp_totals[warp] = v;
    __syncthreads();
    double total = 0.0;
    if (warp == 0) {
        total = lane < WARPS_PER_BLOCK ? warp_totals[lane] : 0.0;
        total = warp_sum_double(total);
    }
    __syncthreads(); /* warp_totals may be reused by a later call in the same kernel */
    return total;
}

/* ------------------------------------------------------------------------------------------ */
/* host-side helpers (cuda_kernels_common.cu)                                                  */

/* Grow-only device scratch buffer charged to MEM_WORKSPACE, kept between calls. One buffer for
 * all own kernels: ops are issued one at a time on cuda_stream(), and no op holds it across
 * calls (the stream orders every use). Growing waits for the stream before freeing the old
 * buffer. Returns at least nfloats floats (256-byte aligned), contents undefined; out of memory
 * exits with EXIT_OOM after the report. Not thread-safe (ops run on the model thread). */
float *cuda_kernels_workspace(size_t nfloats);

/* Stops the program with a message naming the op when a caller passes an impossible shape
 * (a bug in the calling model code, never user input), as the CPU backend does. */
void cuda_kernels_shape_error(const char *op, const char *what) __attribute__((noreturn));

/* ---- cuda_kernels_elementwise.cu ---- */
/* Dropout over `planes` planes of plane_len floats: for pl < planes, e < plane_len,
 *   dst[pl*dst_stride + e] = src[pl*src_stride + e] / (1-p)  if rng_uniform(seed, i) >= p, else 0
 * with i = first_index + pl*src_stride + e (the element's flat index in the tensor src points
 * into, when first_index is src's own offset in it). 0 < p < 1. dst may equal src (same strides). */
void cuda_dropout_planes(const float *src, long src_stride, float *dst, long dst_stride,
                         size_t plane_len, int planes, uint64_t first_index, float p,
                         uint64_t seed);

/* ---- cuda_kernels_norm.cu ---- */
/* Row softmax of x [R, N] into y (y == x allowed). mask (NULL = none): uint8 [R / rows_per_mask,
 * N], row r uses mask row r / rows_per_mask, and an entry 1 excludes that column (probability
 * exactly 0). A row with every entry excluded (or -inf) becomes all zeros, as on the CPU. */
void cuda_softmax_rows(const float *x, float *y, size_t R, int N, const uint8_t *mask,
                       size_t rows_per_mask);

/* ---- cuda_amp.cu: mixed precision (backend.h, Precision; docs/cuda-ops.md) ----
 * Layouts: a batch of `batch` row-major matrices [rows, cols]; element (b, r, c) is at
 * b*stride + r*ld + c (rows == batch == 1: one contiguous run, ld and stride unused). "Low" is
 * bf16 (__nv_bfloat16) or fp16 (__half) as p says; p must be one of those two. All asynchronous
 * on cuda_stream(). */
/* Current precision of the matrix products and its name ("fp32", "bf16", "fp16"). */
Precision cuda_precision(void);
const char *cuda_precision_name(Precision p);
/* Grow-only device scratch (MEM_WORKSPACE) for one op: parts[i] gets bytes[i] bytes (NULL for
 * 0), each 256-byte aligned. A later call may move the buffer, so an op asks once for all its
 * parts and keeps none across calls. Growing does not synchronise (stream order protects
 * the old block). Not thread-safe (ops run on the model thread); out of budget exits EXIT_OOM. */
void cuda_amp_scratch(int nparts, const size_t *bytes, void **parts);
/* dst (low) = round(src (fp32)), round to nearest even, overflow -> +-inf. */
void cuda_amp_pack(Precision p, const float *src, size_t src_ld, size_t src_stride, void *dst,
                   size_t dst_ld, size_t dst_stride, size_t rows, size_t cols, size_t batch);
/* dst (fp32) = round(src + round(bias[c])) if beta == 0 (dst never read), else
 * beta*dst + round(src + round(bias[c])); the bias term only when bias != NULL (bias [cols]);
 * src (fp32, may be dst itself) is a product computed in fp32. */
void cuda_amp_round_store(Precision p, const float *src, size_t src_ld, size_t src_stride,
                          const float *bias, float beta, float *dst, size_t dst_ld,
                          size_t dst_stride, size_t rows, size_t cols, size_t batch);
/* dst (fp32) = src (low), or += when accumulate. */
void cuda_amp_unpack(Precision p, const void *src, size_t src_ld, size_t src_stride, float *dst,
                     size_t dst_ld, size_t dst_stride, size_t rows, size_t cols, size_t batch,
                     int accumulate);
/* dst (low) [n]: element e = round(bias[(e / inner) % C]) (bias [C]): a per-channel constant
 * in CNHW (inner = B*H*W) or NCHW (inner = H*W). */
void cuda_amp_fill_channels(Precision p, void *dst, const float *bias, size_t C, size_t inner,
                            size_t n);
/* partial [R] = row sums of round(x) over x [R, N] (fp32 sums; partial is zeroed first). */
void cuda_amp_rounded_row_sums(Precision p, const float *x, size_t R, size_t N, float *partial);
/* partial [O] = column sums of round(x) over x [rows, O] (fp32 sums; zeroed first). */
void cuda_amp_rounded_column_sums(Precision p, const float *x, size_t rows, size_t O,
                                  float *partial);

#endif
