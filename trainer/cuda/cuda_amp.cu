/* cuda_amp.cu - mixed precision (backend.h, Precision) for the CUDA backend's matrix products:
 * the process-wide precision, the grow-only scratch memory that holds the bf16 / fp16 copies,
 * and the conversion kernels around cuBLAS and cuDNN (docs/cuda-ops.md, "Mixed precision"):
 *
 *   pack         fp32 -> low type (round to nearest even, __float2bfloat16_rn / __float2half_rn;
 *                beyond the type's range -> +-inf, NaN stays NaN), a batch of row-major
 *                matrices with any leading dimension and batch stride into another such layout
 *                (so a conversion can also permute CNHW <-> NCHW);
 *   round_store  fp32 product -> fp32 buffer through the low type: dst = round(src (+ round(bias)))
 *                (beta == 0: dst is never read) or dst = beta*dst + round(...) (beta == 1: the
 *                accumulate of the backward ops);
 *   unpack       low type -> fp32 buffer, written or added (cuDNN's outputs, already rounded);
 *   fill_channels, rounded row / column sums: the bias of a convolution and the bias gradients.
 *
 * The rounding is the same as the CPU emulation's (backend_cpu_amp.c): IEEE round to nearest
 * even for both types, so operands rounded here equal the CPU's bit for bit. Every kernel is a
 * grid-stride loop with 64-bit indices on cuda_stream(); nothing here synchronises the host.
 * CUDA build only (-DDETR_CUDA). */
#include <stdio.h>
#include <stdlib.h>
#include <atomic>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include "cuda_kernels_internal.h"

/* ------------------------------------------------------------------------------------------ */
/* the precision                                                                              */

static std::atomic<int> g_precision{PRECISION_FP32};

void cuda_set_precision(Precision p) {
    if (p != PRECISION_FP32 && p != PRECISION_BF16 && p != PRECISION_FP16) {
        fprintf(stderr,
                "error: backend_cuda: set_precision(%d): not a Precision (0 fp32, 1 bf16, 2 fp16; "
                "a bug in the calling code)\n",
                (int)p);
        exit(2);
    }
    g_precision.store((int)p, std::memory_order_relaxed);
}

Precision cuda_precision(void) { return (Precision)g_precision.load(std::memory_order_relaxed); }

const char *cuda_precision_name(Precision p) {
    return p == PRECISION_BF16 ? "bf16" : p == PRECISION_FP16 ? "fp16" : "fp32";
}

/* The helpers below only make sense for a low type; anything else is a caller's bug. */
static void require_low(Precision p, const char *fn) {
    if (p == PRECISION_BF16 || p == PRECISION_FP16) return;
    fprintf(stderr, "error: backend_cuda: %s called with precision %d, not bf16/fp16 (a bug)\n", fn,
            (int)p);
    exit(2);
}

/* ------------------------------------------------------------------------------------------ */
/* scratch memory                                                                             */

#define AMP_SCRATCH_ALIGN 256 /* bytes: cuBLAS / cuDNN want 16; 256 keeps every part like cudaMalloc's */

static void *g_scratch; /* device [g_scratch_bytes] bytes, MEM_WORKSPACE */
static size_t g_scratch_bytes;

static size_t align_up(size_t n) { return (n + AMP_SCRATCH_ALIGN - 1) & ~(size_t)(AMP_SCRATCH_ALIGN - 1); }

void cuda_amp_scratch(int nparts, const size_t *bytes, void **parts) {
    size_t total = 0;
    for (int i = 0; i < nparts; i++) {
        const size_t b = align_up(bytes[i]);
        if (b < bytes[i] || total + b < total) {
            fprintf(stderr, "error: backend_cuda: mixed-precision scratch size overflows size_t\n");
            exit(2);
        }
        total += b;
    }
    if (total > g_scratch_bytes) {
        /* No synchronisation: kernels issued earlier may still use the old block, but the caching
         * allocator hands a freed block only to work issued later on the same stream (every op
         * runs on cuda_stream()), as for the cuDNN workspace in cuda_conv.cu. */
        cuda_free_bytes(g_scratch);
        g_scratch = NULL;
        g_scratch_bytes = 0;
        g_scratch = cuda_alloc_bytes(MEM_WORKSPACE, total);
        if (!g_scratch) { /* the --mem-limit budget refused it (exit_on_oom off) */
            fprintf(stderr,
                    "error: backend_cuda: a mixed-precision scratch buffer of %zu bytes (the bf16/fp16 "
                    "copies of one matrix product's operands) was refused by the memory budget\n"
                    "HINT: raise --mem-limit, lower --batch / the image size, or train in fp32.\n",
                    total);
            exit(EXIT_OOM);
        }
        g_scratch_bytes = total;
    }
    size_t off = 0;
    for (int i = 0; i < nparts; i++) {
        parts[i] = bytes[i] ? (void *)((char *)g_scratch + off) : NULL;
        off += align_up(bytes[i]);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* element types                                                                              */

template <typename T> struct LowType;
template <> struct LowType<__nv_bfloat16> {
    static __device__ __forceinline__ __nv_bfloat16 from_float(float x) { return __float2bfloat16_rn(x); }
    static __device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
};
template <> struct LowType<__half> {
    static __device__ __forceinline__ __half from_float(float x) { return __float2half_rn(x); }
    static __device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
};

/* x rounded to T and back: exact in float (both types are subsets of float). */
template <typename T> __device__ __forceinline__ float round_to(float x) {
    return LowType<T>::to_float(LowType<T>::from_float(x));
}

/* Element e of a batch of row-major matrices [rows, cols]: offset b*stride + r*ld + c. */
__device__ __forceinline__ size_t matrix_offset(size_t e, size_t rows, size_t cols, size_t ld,
                                                size_t stride) {
    const size_t c = e % cols, t = e / cols;
    return (t / rows) * stride + (t % rows) * ld + c;
}

/* ------------------------------------------------------------------------------------------ */
/* kernels (the element count `total` = batch * rows * cols; cols == total means one contiguous */
/* run, where the index arithmetic is skipped)                                                */

template <typename T>
__global__ static void pack_kernel(const float *src, size_t sld, size_t sstride, T *dst,
                                   size_t dld, size_t dstride, size_t rows, size_t cols,
                                   size_t total) {
    for (size_t e = global_thread_index(); e < total; e += global_thread_count()) {
        if (cols == total) {
            dst[e] = LowType<T>::from_float(src[e]);
        } else {
            dst[matrix_offset(e, rows, cols, dld, dstride)] =
                LowType<T>::from_float(src[matrix_offset(e, rows, cols, sld, sstride)]);
        }
    }
}

/* dst = round(src + round(bias[c]))  (beta == 0; dst not read)
 * dst = beta*dst + round(src + round(bias[c]))  (otherwise)
 * with the bias term only when bias != NULL. _rn intrinsics: never contracted into an FMA, so
 * each operation rounds like the CPU's separate multiply and add. src may equal dst. */
template <typename T>
__global__ static void round_store_kernel(const float *src, size_t sld, size_t sstride,
                                          const float *bias, float beta, float *dst, size_t dld,
                                          size_t dstride, size_t rows, size_t cols, size_t total) {
    for (size_t e = global_thread_index(); e < total; e += global_thread_count()) {
        const size_t so = cols == total ? e : matrix_offset(e, rows, cols, sld, sstride);
        const size_t dof = cols == total ? e : matrix_offset(e, rows, cols, dld, dstride);
        float v = src[so];
        if (bias) v = __fadd_rn(v, round_to<T>(bias[e % cols]));
        const float r = round_to<T>(v);
        dst[dof] = beta == 0.0f ? r : __fadd_rn(__fmul_rn(beta, dst[dof]), r);
    }
}

template <typename T>
__global__ static void unpack_kernel(const T *src, size_t sld, size_t sstride, float *dst,
                                     size_t dld, size_t dstride, size_t rows, size_t cols,
                                     size_t total, int accumulate) {
    for (size_t e = global_thread_index(); e < total; e += global_thread_count()) {
        const size_t so = cols == total ? e : matrix_offset(e, rows, cols, sld, sstride);
        const size_t dof = cols == total ? e : matrix_offset(e, rows, cols, dld, dstride);
        const float v = LowType<T>::to_float(src[so]);
        if (accumulate)
            dst[dof] += v;
        else
            dst[dof] = v;
    }
}

/* dst[e] = round(bias[(e / inner) % C]) for e < n */
template <typename T>
__global__ static void fill_channels_kernel(T *dst, const float *bias, size_t C, size_t inner,
                                            size_t n) {
    for (size_t e = global_thread_index(); e < n; e += global_thread_count())
        dst[e] = LowType<T>::from_float(bias[(e / inner) % C]);
}

/* partial[r] += sum over n of round(x[r*N + n]): block (chunk, row) sums one chunk of a row,
 * KERNEL_THREADS threads, one atomicAdd per block. Loop bounds depend only on block indices,
 * so the __syncthreads inside are reached by every thread. */
#define ROWSUM_CHUNK 65536

template <typename T>
__global__ static void rounded_row_sums_kernel(const float *x, size_t R, size_t N,
                                               float *partial) {
    __shared__ float warp_totals[WARPS_PER_BLOCK];
    const size_t chunks = (N + ROWSUM_CHUNK - 1) / ROWSUM_CHUNK;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (size_t r = blockIdx.y; r < R; r += gridDim.y)
        for (size_t ch = blockIdx.x; ch < chunks; ch += gridDim.x) {
            const size_t lo = ch * ROWSUM_CHUNK, hi = lo + ROWSUM_CHUNK < N ? lo + ROWSUM_CHUNK : N;
            const float *row = x + r * N;
            float s = 0.0f;
            for (size_t i = lo + threadIdx.x; i < hi; i += blockDim.x) s += round_to<T>(row[i]);
            s = warp_sum(s);
            if (lane == 0) warp_totals[warp] = s;
            __syncthreads();
            if (threadIdx.x == 0) {
                float t = 0.0f;
                for (int w = 0; w < WARPS_PER_BLOCK; w++) t += warp_totals[w];
                atomicAdd(&partial[r], t);
            }
            __syncthreads(); /* warp_totals is refilled by the next chunk */
        }
}

/* partial[o] += sum over t of round(x[t*O + o]). Block (32, 8): threadIdx.x a column of a
 * 32-column tile (coalesced row segments), threadIdx.y and blockIdx.y stride over rows; one
 * atomicAdd per column and block. */
#define COLSUM_TILE 32
#define COLSUM_ROWS 8

template <typename T>
__global__ static void rounded_column_sums_kernel(const float *x, size_t rows, size_t O,
                                                  float *partial) {
    __shared__ float part[COLSUM_ROWS][COLSUM_TILE + 1];
    for (size_t tile = blockIdx.x; tile * COLSUM_TILE < O; tile += gridDim.x) {
        const size_t o = tile * COLSUM_TILE + threadIdx.x;
        float s = 0.0f;
        if (o < O)
            for (size_t t = (size_t)blockIdx.y * COLSUM_ROWS + threadIdx.y; t < rows;
                 t += (size_t)gridDim.y * COLSUM_ROWS)
                s += round_to<T>(x[t * O + o]);
        part[threadIdx.y][threadIdx.x] = s;
        __syncthreads();
        if (threadIdx.y == 0 && o < O) {
            float total = 0.0f;
            for (int r = 0; r < COLSUM_ROWS; r++) total += part[r][threadIdx.x];
            atomicAdd(&partial[o], total);
        }
        __syncthreads(); /* part is reused by the next tile */
    }
}

/* ------------------------------------------------------------------------------------------ */
/* host entry points (cuda_kernels_internal.h)                                                */

/* Runs KERNEL<__nv_bfloat16> or KERNEL<__half> for p with the given launch configuration. */
#define AMP_LAUNCH(p, KERNEL, grid, block, ...)                                                  \
    do {                                                                                         \
        if ((p) == PRECISION_BF16)                                                               \
            KERNEL<__nv_bfloat16><<<(grid), (block), 0, cuda_stream()>>>(__VA_ARGS__);           \
        else                                                                                     \
            KERNEL<__half><<<(grid), (block), 0, cuda_stream()>>>(__VA_ARGS__);                  \
        KERNEL_LAUNCH_CHECK();                                                                   \
    } while (0)

void cuda_amp_pack(Precision p, const float *src, size_t src_ld, size_t src_stride, void *dst,
                   size_t dst_ld, size_t dst_stride, size_t rows, size_t cols, size_t batch) {
    require_low(p, "cuda_amp_pack");
    const size_t total = rows * cols * batch;
    if (total == 0) return;
    if (p == PRECISION_BF16) {
        pack_kernel<__nv_bfloat16><<<grid_for_elements(total), KERNEL_THREADS, 0, cuda_stream()>>>(
            src, src_ld, src_stride, (__nv_bfloat16 *)dst, dst_ld, dst_stride, rows, cols, total);
    } else {
        pack_kernel<__half><<<grid_for_elements(total), KERNEL_THREADS, 0, cuda_stream()>>>(
            src, src_ld, src_stride, (__half *)dst, dst_ld, dst_stride, rows, cols, total);
    }
    KERNEL_LAUNCH_CHECK();
}

void cuda_amp_round_store(Precision p, const float *src, size_t src_ld, size_t src_stride,
                          const float *bias, float beta, float *dst, size_t dst_ld,
                          size_t dst_stride, size_t rows, size_t cols, size_t batch) {
    require_low(p, "cuda_amp_round_store");
    const size_t total = rows * cols * batch;
    if (total == 0) return;
    AMP_LAUNCH(p, round_store_kernel, grid_for_elements(total), KERNEL_THREADS, src, src_ld,
               src_stride, bias, beta, dst, dst_ld, dst_stride, rows, cols, total);
}

void cuda_amp_unpack(Precision p, const void *src, size_t src_ld, size_t src_stride, float *dst,
                     size_t dst_ld, size_t dst_stride, size_t rows, size_t cols, size_t batch,
                     int accumulate) {
    require_low(p, "cuda_amp_unpack");
    const size_t total = rows * cols * batch;
    if (total == 0) return;
    if (p == PRECISION_BF16) {
        unpack_kernel<__nv_bfloat16><<<grid_for_elements(total), KERNEL_THREADS, 0,
                                       cuda_stream()>>>((const __nv_bfloat16 *)src, src_ld,
                                                        src_stride, dst, dst_ld, dst_stride, rows,
                                                        cols, total, accumulate);
    } else {
        unpack_kernel<__half><<<grid_for_elements(total), KERNEL_THREADS, 0, cuda_stream()>>>(
            (const __half *)src, src_ld, src_stride, dst, dst_ld, dst_stride, rows, cols, total,
            accumulate);
    }
    KERNEL_LAUNCH_CHECK();
}

void cuda_amp_fill_channels(Precision p, void *dst, const float *bias, size_t C, size_t inner,
                            size_t n) {
    require_low(p, "cuda_amp_fill_channels");
    if (n == 0) return;
    if (C == 0 || inner == 0) cuda_kernels_shape_error("cuda_amp_fill_channels", "C or inner is 0");
    if (p == PRECISION_BF16) {
        fill_channels_kernel<__nv_bfloat16><<<grid_for_elements(n), KERNEL_THREADS, 0,
                                              cuda_stream()>>>((__nv_bfloat16 *)dst, bias, C,
                                                               inner, n);
    } else {
        fill_channels_kernel<__half><<<grid_for_elements(n), KERNEL_THREADS, 0, cuda_stream()>>>(
            (__half *)dst, bias, C, inner, n);
    }
    KERNEL_LAUNCH_CHECK();
}

void cuda_amp_rounded_row_sums(Precision p, const float *x, size_t R, size_t N, float *partial) {
    require_low(p, "cuda_amp_rounded_row_sums");
    if (R == 0) return;
    cudaCheck(cudaMemsetAsync(partial, 0, R * sizeof(float), cuda_stream()));
    if (N == 0) return;
    size_t chunks = (N + ROWSUM_CHUNK - 1) / ROWSUM_CHUNK;
    if (chunks > 65535) chunks = 65535; /* the kernel loops over the rest */
    const dim3 grid((unsigned)chunks, (unsigned)(R < 65535 ? R : 65535));
    AMP_LAUNCH(p, rounded_row_sums_kernel, grid, KERNEL_THREADS, x, R, N, partial);
}

void cuda_amp_rounded_column_sums(Precision p, const float *x, size_t rows, size_t O,
                                  float *partial) {
    require_low(p, "cuda_amp_rounded_column_sums");
    if (O == 0) return;
    cudaCheck(cudaMemsetAsync(partial, 0, O * sizeof(float), cuda_stream()));
    if (rows == 0) return;
    size_t tiles = (O + COLSUM_TILE - 1) / COLSUM_TILE;
    if (tiles > 65535) tiles = 65535; /* the kernel loops over the remaining tiles */
    size_t row_blocks = (rows + 255) / 256; /* ~256 rows per block, at most 1024 row blocks */
    if (row_blocks > 1024) row_blocks = 1024;
    const dim3 grid((unsigned)tiles, (unsigned)row_blocks), block(COLSUM_TILE, COLSUM_ROWS);
    AMP_LAUNCH(p, rounded_column_sums_kernel, grid, block, x, rows, O, partial);
}
