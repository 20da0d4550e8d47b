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
 * memory report sees it. One handle, bound to cuda_stream(); ops are asynchronous.
 *
 * Mixed precision (cuda_amp_* below, the table's gemm / linear slots; backend.h Precision): at
 * PRECISION_FP32 they call the float32 functions, unchanged. At bf16 / fp16 each operand is
 * rounded (cuda_amp.cu) into a packed low-precision copy in the mixed-precision scratch (rows
 * padded to a multiple of 8 elements, 16 bytes, as tensor cores like), the product runs as
 * cublasGemmEx / cublasGemmStridedBatchedEx with CUDA_R_16BF / CUDA_R_16F inputs, a CUDA_R_32F
 * output, CUBLAS_COMPUTE_32F (tensor cores, float32 accumulation; CUBLAS_DEFAULT_MATH allows
 * tensor cores for 16-bit inputs) and beta 0, and one kernel rounds the float32 product to the
 * low type and writes it (forward, gemm) or adds it to the float32 gradient (backward). The
 * product goes straight into the caller's output when that output is overwritten anyway (gemm
 * with beta 0, linear_forward) and into a float32 temp otherwise. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include "backend_cuda.h"
#include "cuda_check.h"
#include "cuda_kernels_internal.h"
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

/* ------------------------------------------------------------------------------------------ */
/* mixed precision (bf16 / fp16 on tensor cores; see the top of the file)                     */

/* Leading dimension of a packed low-precision copy of a row-major [rows, cols] matrix: cols
 * rounded up to 8 elements (16 bytes), at least 8 (cuBLAS wants ld >= 1 even when cols = 0). */
static size_t low_ld(int cols) {
    const size_t ld = ((size_t)cols + 7) & ~(size_t)7;
    return ld ? ld : 8;
}

static cudaDataType_t low_cuda_type(Precision p) {
    return p == PRECISION_BF16 ? CUDA_R_16BF : CUDA_R_16F;
}

/* T_i [M, N] (fp32, leading dimension ldt, batch stride strideT) = alpha * op(A_i) op(B_i) with
 * A, B packed low-precision copies (row-major, as cuda_gemm), beta 0: T is written, never read.
 * Row-major on column-major cuBLAS exactly as cuda_gemm (B first, m = N, n = M). */
static void gemm_low_to_f32(Precision p, int transA, int transB, int M, int N, int K, float alpha,
                            const void *A, size_t lda, size_t strideA, const void *B, size_t ldb,
                            size_t strideB, float *T, size_t ldt, size_t strideT, int batch) {
    const cublasOperation_t opA = transA ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t opB = transB ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cudaDataType_t lt = low_cuda_type(p);
    const float zero = 0.0f;
    if (lda > INT_MAX || ldb > INT_MAX || ldt > INT_MAX)
        dense_shape_error("gemm", "a leading dimension exceeds INT_MAX");
    cublasHandle_t h = cublas();
    if (batch == 1)
        cublasCheck(cublasGemmEx(h, opB, opA, N, M, K, &alpha, B, lt, (int)ldb, A, lt, (int)lda,
                                 &zero, T, CUDA_R_32F, (int)ldt, CUBLAS_COMPUTE_32F,
                                 CUBLAS_GEMM_DEFAULT));
    else
        cublasCheck(cublasGemmStridedBatchedEx(
            h, opB, opA, N, M, K, &alpha, B, lt, (int)ldb, (long long)strideB, A, lt, (int)lda,
            (long long)strideA, &zero, T, CUDA_R_32F, (int)ldt, (long long)strideT, batch,
            CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

/* Bytes of the packed low copy of `count` matrices [rows, cols]. */
static size_t low_bytes(size_t count, int rows, int cols) {
    return count * (size_t)rows * low_ld(cols) * 2;
}

void cuda_amp_gemm(int transA, int transB, int M, int N, int K, float alpha, const float *A,
                   int lda, long strideA, const float *B, int ldb, long strideB, float beta,
                   float *C, int ldc, long strideC, int batch) {
    const Precision p = cuda_precision();
    if (p == PRECISION_FP32) {
        cuda_gemm(transA, transB, M, N, K, alpha, A, lda, strideA, B, ldb, strideB, beta, C, ldc,
                  strideC, batch);
        return;
    }
    if (M < 0 || N < 0 || K < 0 || batch < 0) dense_shape_error("gemm", "negative size");
    if (M == 0 || N == 0 || batch == 0) return;
    if (strideA < 0 || strideB < 0 || strideC < 0)
        dense_shape_error("gemm", "negative batch stride (not supported under bf16/fp16)");
    /* row-major storage of A: op(A) [M, K] is A [M, K] or A [K, M]; likewise B */
    const int a_rows = transA ? K : M, a_cols = transA ? M : K;
    const int b_rows = transB ? N : K, b_cols = transB ? K : N;
    if (lda < (a_cols > 1 ? a_cols : 1) || ldb < (b_cols > 1 ? b_cols : 1) || ldc < (N > 1 ? N : 1))
        dense_shape_error("gemm", "a leading dimension is smaller than its row");
    /* a stride of 0 shares one matrix across the batch: pack it once */
    const size_t a_count = strideA ? (size_t)batch : 1, b_count = strideB ? (size_t)batch : 1;
    const size_t ldap = low_ld(a_cols), ldbp = low_ld(b_cols);
    const size_t sap = strideA ? (size_t)a_rows * ldap : 0, sbp = strideB ? (size_t)b_rows * ldbp : 0;
    /* beta == 0: the product goes into C itself and is rounded in place; otherwise into a
     * packed fp32 temp [batch, M, N] (C's old values are needed) */
    const int in_place = beta == 0.0f;
    const size_t ldt = in_place ? (size_t)ldc : (size_t)N;
    const size_t st = in_place ? (size_t)strideC : (size_t)M * N;
    size_t bytes[3] = {low_bytes(a_count, a_rows, a_cols), low_bytes(b_count, b_rows, b_cols),
                       in_place ? 0 : (size_t)batch * M * N * sizeof(float)};
    void *part[3];
    cuda_amp_scratch(3, bytes, part);
    cuda_amp_pack(p, A, (size_t)lda, (size_t)strideA, part[0], ldap, sap, (size_t)a_rows,
                  (size_t)a_cols, a_count); /* Â [a_count, a_rows, ldap] */
    cuda_amp_pack(p, B, (size_t)ldb, (size_t)strideB, part[1], ldbp, sbp, (size_t)b_rows,
                  (size_t)b_cols, b_count); /* B̂ [b_count, b_rows, ldbp] */
    float *T = in_place ? C : (float *)part[2];
    gemm_low_to_f32(p, transA, transB, M, N, K, alpha, part[0], ldap, sap, part[1], ldbp, sbp, T,
                    ldt, st, batch);
    /* C_i = round(alpha Â_i B̂_i) (beta 0) or beta*C_i + round(alpha Â_i B̂_i) */
    cuda_amp_round_store(p, T, ldt, st, NULL, beta, C, (size_t)ldc, (size_t)strideC, (size_t)M,
                         (size_t)N, (size_t)batch);
}

void cuda_amp_linear_forward(const float *x, const float *w, const float *b, float *y, int T,
                             int In, int O) {
    const Precision p = cuda_precision();
    if (p == PRECISION_FP32) {
        cuda_linear_forward(x, w, b, y, T, In, O);
        return;
    }
    if (T < 0 || In < 0 || O < 0) dense_shape_error("linear_forward", "negative size");
    if (T == 0 || O == 0) return;
    const size_t ldx = low_ld(In);
    size_t bytes[2] = {low_bytes(1, T, In), low_bytes(1, O, In)};
    void *part[2]; /* x̂ [T, ldx], ŵ [O, ldx] */
    cuda_amp_scratch(2, bytes, part);
    cuda_amp_pack(p, x, (size_t)In, 0, part[0], ldx, 0, (size_t)T, (size_t)In, 1);
    cuda_amp_pack(p, w, (size_t)In, 0, part[1], ldx, 0, (size_t)O, (size_t)In, 1);
    /* y [T, O] = x̂ ŵ^T in fp32, then y = round(y + round(b)) in place: one rounding of the
     * float32 sum with the bias, as the CPU (bias rows + sgemm with beta 1, then round) */
    gemm_low_to_f32(p, 0, 1, T, O, In, 1.0f, part[0], ldx, 0, part[1], ldx, 0, y, (size_t)O, 0, 1);
    cuda_amp_round_store(p, y, (size_t)O, 0, b, 0.0f, y, (size_t)O, 0, (size_t)T, (size_t)O, 1);
}

void cuda_amp_linear_backward(const float *dy, const float *x, const float *w, float *dx,
                              float *dw, float *db, int T, int In, int O) {
    const Precision p = cuda_precision();
    if (p == PRECISION_FP32) {
        cuda_linear_backward(dy, x, w, dx, dw, db, T, In, O);
        return;
    }
    if (T < 0 || In < 0 || O < 0) dense_shape_error("linear_backward", "negative size");
    if (T == 0 || O == 0) return;
    const size_t nx = (size_t)T * In, nw = (size_t)O * In;
    const size_t ldo = low_ld(O), ldi = low_ld(In);
    /* parts: dŷ [T, ldo], ŵ [O, ldi] (dx), x̂ [T, ldi] (dw), fp32 temp for one product at a time
     * (dx's [T, In], then dw's [O, In]; the stream orders the reuse), partial [O] (db) */
    size_t bytes[5] = {(dx || dw) ? low_bytes(1, T, O) : 0, dx ? low_bytes(1, O, In) : 0,
                       dw ? low_bytes(1, T, In) : 0,
                       ((dx ? nx : 0) > (dw ? nw : 0) ? (dx ? nx : 0) : (dw ? nw : 0)) * sizeof(float),
                       db ? (size_t)O * sizeof(float) : 0};
    void *part[5];
    cuda_amp_scratch(5, bytes, part);
    float *tmp = (float *)part[3];
    if (dx || dw) cuda_amp_pack(p, dy, (size_t)O, 0, part[0], ldo, 0, (size_t)T, (size_t)O, 1);
    if (dx) { /* dx [T, In] += round(dŷ [T, O] ŵ [O, In]) */
        cuda_amp_pack(p, w, (size_t)In, 0, part[1], ldi, 0, (size_t)O, (size_t)In, 1);
        gemm_low_to_f32(p, 0, 0, T, In, O, 1.0f, part[0], ldo, 0, part[1], ldi, 0, tmp,
                        (size_t)In, 0, 1);
        cuda_amp_round_store(p, tmp, 0, 0, NULL, 1.0f, dx, 0, 0, 1, nx, 1);
    }
    if (dw) { /* dw [O, In] += round(dŷ^T [O, T] x̂ [T, In]) */
        cuda_amp_pack(p, x, (size_t)In, 0, part[2], ldi, 0, (size_t)T, (size_t)In, 1);
        gemm_low_to_f32(p, 1, 0, O, In, T, 1.0f, part[0], ldo, 0, part[2], ldi, 0, tmp,
                        (size_t)In, 0, 1);
        cuda_amp_round_store(p, tmp, 0, 0, NULL, 1.0f, dw, 0, 0, 1, nw, 1);
    }
    if (db) { /* db [O] += round(column sums of round(dy)) */
        float *partial = (float *)part[4];
        cuda_amp_rounded_column_sums(p, dy, (size_t)T, (size_t)O, partial);
        cuda_amp_round_store(p, partial, 0, 0, NULL, 1.0f, db, 0, 0, 1, (size_t)O, 1);
    }
}
