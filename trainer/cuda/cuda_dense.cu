/* cuda_dense.cu - the dense ops of the CUDA backend (cuda_ops.h): strided batched GEMM and
 * linear layers on cuBLAS, bias broadcast / column sums / transpose as own kernels.
 *
 * Row-major on column-major cuBLAS: a row-major matrix X [r, c] with leading dimension ld is,
 * read column-major, X^T [c, r] with the same ld. So the row-major product C = op(A) op(B)
 * [M, N] is computed as the column-major product C^T = op(B)^T op(A)^T [N, M]: cuBLAS gets B
 * first, A second, m = N, n = M, and the same transpose flags and leading dimensions. The
 * leading-dimension rules of cuBLAS then are exactly those of row-major cblas.
 *
 * Precision: CUBLAS_DEFAULT_MATH, i.e. true fp32 FMA (cuBLAS uses TF32 for sgemm only under
 * CUBLAS_TF32_TENSOR_OP_MATH), so results match the CPU backend to fp32 rounding. DETR_TF32=1
 * in the environment switches to TF32 tensor cores (10-bit mantissa inputs: faster on Ampere and
 * later, ~1e-3 relative error, and test_backend_ops's 1e-4 GEMM threshold no longer holds).
 *
 * cuBLAS's workspace is our own buffer charged to MEM_WORKSPACE (cublasSetWorkspace), so the
 * memory report sees it. One handle, bound to cuda_stream(); ops are asynchronous. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include "backend_cuda.h"
#include "cuda_check.h"
#include "cuda_ops.h"

/* 32 MiB: what NVIDIA recommends for cuBLAS on Hopper (4 MiB would do before it). */
#define CUBLAS_WORKSPACE_BYTES ((size_t)32 << 20)

static cublasHandle_t g_cublas;
static cudaStream_t g_cublas_stream;
static void *g_cublas_ws; /* [CUBLAS_WORKSPACE_BYTES] bytes, MEM_WORKSPACE */

static int tf32_allowed(void) {
    const char *e = getenv("DETR_TF32");
    return e && strcmp(e, "1") == 0;
}

/* The handle, created on first use (after cuda_device_init(), so on the selected GPU) and kept
 * bound to cuda_stream(). cublasSetStream resets the workspace to cuBLAS's own pool, so ours
 * is set again after it. */
static cublasHandle_t cublas(void) {
    if (!g_cublas) {
        cublasCheck(cublasCreate(&g_cublas));
        cublasCheck(cublasSetMathMode(g_cublas, tf32_allowed() ? CUBLAS_TF32_TENSOR_OP_MATH
                                                               : CUBLAS_DEFAULT_MATH));
        cublasCheck(cublasSetPointerMode(g_cublas, CUBLAS_POINTER_MODE_HOST));
        g_cublas_ws = cuda_alloc_bytes(MEM_WORKSPACE, CUBLAS_WORKSPACE_BYTES);
        g_cublas_stream = cuda_stream();
        cublasCheck(cublasSetStream(g_cublas, g_cublas_stream));
        cublasCheck(cublasSetWorkspace(g_cublas, g_cublas_ws, CUBLAS_WORKSPACE_BYTES));
    } else if (g_cublas_stream != cuda_stream()) {
        g_cublas_stream = cuda_stream();
        cublasCheck(cublasSetStream(g_cublas, g_cublas_stream));
        cublasCheck(cublasSetWorkspace(g_cublas, g_cublas_ws, CUBLAS_WORKSPACE_BYTES));
    }
    return g_cublas;
}

static void dense_shape_error(const char *op, const char *what) {
    fprintf(stderr, "error: backend_cuda: %s: %s (a bug in the calling code)\n", op, what);
    exit(2);
}

/* Blocks for a grid-stride loop over n items: enough to fill the GPU, never more than needed. */
static unsigned grid_for(size_t n, int threads) {
    size_t blocks = (n + (size_t)threads - 1) / (size_t)threads;
    if (blocks > 8192) blocks = 8192;
    if (blocks < 1) blocks = 1;
    return (unsigned)blocks;
}

/* ------------------------------------------------------------------------------------------ */
/* GEMM                                                                                       */

void cuda_gemm(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
               long strideA, const float *B, int ldb, long strideB, float beta, float *C, int ldc,
               long strideC, int batch) {
    if (M < 0 || N < 0 || K < 0 || batch < 0) dense_shape_error("gemm", "negative size");
    if (M == 0 || N == 0 || batch == 0) return;
    /* row-major C [M,N] = op(A) op(B)  <=>  column-major C^T [N,M] = op(B)^T op(A)^T */
    const cublasOperation_t opA = transA ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t opB = transB ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasHandle_t h = cublas();
    if (batch == 1)
        cublasCheck(cublasSgemm(h, opB, opA, N, M, K, &alpha, B, ldb, A, lda, &beta, C, ldc));
    else
        cublasCheck(cublasSgemmStridedBatched(h, opB, opA, N, M, K, &alpha, B, ldb,
                                              (long long)strideB, A, lda, (long long)strideA,
                                              &beta, C, ldc, (long long)strideC, batch));
}

/* ------------------------------------------------------------------------------------------ */
/* linear layers                                                                              */

/* y [T, O]: every row = b [O]. */
__global__ static void broadcast_rows_kernel(float *y, const float *b, size_t T, int O) {
    const size_t n = T * (size_t)O;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        y[i] = b[i % (size_t)O];
}

void cuda_linear_forward(const float *x, const float *w, const float *b, float *y, int T, int In,
                         int O) {
    if (T < 0 || In < 0 || O < 0) dense_shape_error("linear_forward", "negative size");
    if (T == 0 || O == 0) return;
    float beta = 0.0f;
    if (b) { /* rows of y start as the bias; the GEMM accumulates onto them (as the CPU does) */
        const size_t n = (size_t)T * O;
        broadcast_rows_kernel<<<grid_for(n, 256), 256, 0, cuda_stream()>>>(y, b, (size_t)T, O);
        cudaCheck(cudaGetLastError());
        beta = 1.0f;
    }
    /* y [T, O] (+)= x [T, In] w [O, In]^T */
    cuda_gemm(0, 1, T, O, In, 1.0f, x, In, 0, w, In, 0, beta, y, O, 0, 1);
}

/* db [O] += column sums of dy [T, O]. Block (32, 8): threadIdx.x picks a column of a 32-column
 * tile, threadIdx.y and blockIdx.y stride over rows (coalesced 128-byte row segments); the 8
 * partial sums of a column meet in shared memory and one atomicAdd per column and block adds
 * them to db (gridDim.y blocks add into the same column, in any order). */
#define COLSUM_TILE 32
#define COLSUM_ROWS 8

__global__ static void add_column_sums_kernel(const float *dy, float *db, int T, int O) {
    __shared__ float part[COLSUM_ROWS][COLSUM_TILE + 1];
    for (int tile = blockIdx.x; tile * COLSUM_TILE < O; tile += gridDim.x) {
        const int o = tile * COLSUM_TILE + threadIdx.x;
        float s = 0.0f;
        if (o < O)
            for (int t = blockIdx.y * COLSUM_ROWS + threadIdx.y; t < T;
                 t += gridDim.y * COLSUM_ROWS)
                s += dy[(size_t)t * O + o];
        part[threadIdx.y][threadIdx.x] = s;
        __syncthreads();
        if (threadIdx.y == 0 && o < O) {
            float total = 0.0f;
            for (int r = 0; r < COLSUM_ROWS; r++) total += part[r][threadIdx.x];
            atomicAdd(&db[o], total);
        }
        __syncthreads(); /* part is reused by the next tile */
    }
}

void cuda_linear_backward(const float *dy, const float *x, const float *w, float *dx, float *dw,
                          float *db, int T, int In, int O) {
    if (T < 0 || In < 0 || O < 0) dense_shape_error("linear_backward", "negative size");
    if (T == 0 || O == 0) return;
    if (dx) /* dx [T, In] += dy [T, O] w [O, In] */
        cuda_gemm(0, 0, T, In, O, 1.0f, dy, O, 0, w, In, 0, 1.0f, dx, In, 0, 1);
    if (dw) /* dw [O, In] += dy^T [O, T] x [T, In] */
        cuda_gemm(1, 0, O, In, T, 1.0f, dy, O, 0, x, In, 0, 1.0f, dw, In, 0, 1);
    if (db) {
        unsigned tiles = (unsigned)((O + COLSUM_TILE - 1) / COLSUM_TILE);
        if (tiles > 65535) tiles = 65535; /* the kernel loops over the remaining tiles */
        /* ~256 rows per block, at most 1024 row blocks (each adds once per column) */
        int row_blocks = (T + 255) / 256;
        if (row_blocks > 1024) row_blocks = 1024;
        dim3 grid(tiles, (unsigned)row_blocks), block(COLSUM_TILE, COLSUM_ROWS);
        add_column_sums_kernel<<<grid, block, 0, cuda_stream()>>>(dy, db, T, O);
        cudaCheck(cudaGetLastError());
    }
}

/* ------------------------------------------------------------------------------------------ */
/* transpose: y [C, R] = x [R, C]^T per matrix, 32x32 tiles through shared memory (the +1 column
 * avoids bank conflicts on the transposed read), so both the reads of x and the writes of y are
 * coalesced. Grid: x over column tiles, y over row tiles, z over matrices, each looping when the
 * count exceeds the grid (loop bounds depend only on block indices, so __syncthreads is safe). */
#define TR_TILE 32
#define TR_ROWS 8

__global__ static void transpose_kernel(const float *x, float *y, int batch, int R, int C) {
    __shared__ float tile[TR_TILE][TR_TILE + 1];
    const int row_tiles = (R + TR_TILE - 1) / TR_TILE, col_tiles = (C + TR_TILE - 1) / TR_TILE;
    for (int bt = blockIdx.z; bt < batch; bt += gridDim.z) {
        const float *xb = x + (size_t)bt * R * C; /* [R, C] */
        float *yb = y + (size_t)bt * R * C;       /* [C, R] */
        for (int rt = blockIdx.y; rt < row_tiles; rt += gridDim.y)
            for (int ct = blockIdx.x; ct < col_tiles; ct += gridDim.x) {
                const int r0 = rt * TR_TILE, c0 = ct * TR_TILE;
                for (int j = threadIdx.y; j < TR_TILE; j += TR_ROWS) {
                    const int r = r0 + j, c = c0 + threadIdx.x;
                    if (r < R && c < C) tile[j][threadIdx.x] = xb[(size_t)r * C + c];
                }
                __syncthreads();
                for (int j = threadIdx.y; j < TR_TILE; j += TR_ROWS) {
                    const int c = c0 + j, r = r0 + threadIdx.x;
                    if (r < R && c < C) yb[(size_t)c * R + r] = tile[threadIdx.x][j];
                }
                __syncthreads(); /* the tile is refilled by the next iteration */
            }
    }
}

void cuda_transpose(const float *x, float *y, int batch, int R, int C) {
    if (batch < 0 || R < 0 || C < 0) dense_shape_error("transpose", "negative size");
    if (batch == 0 || R == 0 || C == 0) return;
    unsigned gx = (unsigned)((C + TR_TILE - 1) / TR_TILE), gy = (unsigned)((R + TR_TILE - 1) / TR_TILE);
    unsigned gz = (unsigned)batch;
    if (gx > 65535) gx = 65535; /* x may go to 2^31-1, but the kernel loops anyway */
    if (gy > 65535) gy = 65535;
    if (gz > 65535) gz = 65535;
    dim3 grid(gx, gy, gz), block(TR_TILE, TR_ROWS);
    transpose_kernel<<<grid, block, 0, cuda_stream()>>>(x, y, batch, R, C);
    cudaCheck(cudaGetLastError());
}
