/* cuda_conv.cu - convolutions of the CUDA backend (cuda_ops.h) on cuDNN 9's legacy convolution
 * API, in the backend's CNHW layout.
 *
 * Layout. Our image tensor [C, B, H, W] is, for cuDNN, an N=B, C=C, H, W tensor with explicit
 * strides nStride = H*W, cStride = B*H*W, hStride = W, wStride = 1
 * (cudnnSetTensor4dDescriptorEx), so no copy is needed; weights [Cout, Cin, kh, kw] are
 * cuDNN's NCHW filter layout as they are. Some algorithms want packed NCHW tensors; when cuDNN
 * offers no algorithm that runs on the strided descriptors for a shape, that shape falls back
 * to the "packed" path: CNHW <-> NCHW permutes (own kernel) into scratch memory around a conv on
 * packed descriptors.
 *
 * Algorithms. Per ConvShape and direction (forward, backward data, backward filter), the first
 * call asks cuDNN's heuristics (cudnnGet*Algorithm_v7, no benchmarking, no memory) for its
 * ranked list, keeps the algorithms whose workspace fits the limit (DETR_CUDNN_WORKSPACE_MB,
 * default 1024) for the strided layout then the packed one, and runs the first; an algorithm
 * that cuDNN refuses at run time (not supported / bad parameter, before it touches any output)
 * is dropped and the next one tried. The one that ran is cached with the shape, so later calls
 * cost one lookup. DETR_CUDNN_VERBOSE=1 prints each choice to stderr.
 *
 * Workspace: one buffer from cuda_alloc_bytes(MEM_WORKSPACE), grown to the largest need and
 * reused. Growing frees the old one while kernels may still read it; that is safe because the
 * caching allocator hands a freed block only to work issued later on the same stream.
 *
 * Precision: fp32 with CUDNN_FMA_MATH, i.e. no tensor cores. (CUDNN_DEFAULT_MATH would permit
 * TF32 on Ampere and later, whose 10-bit mantissa gives ~1e-3 relative error, beyond the 1e-4
 * test_backend_ops allows against the CPU.) DETR_TF32=1 lets cuDNN pick tensor-op (TF32)
 * algorithms.
 *
 * Semantics as backend.h: forward overwrites y (beta = 0) then adds the bias (own kernel);
 * backward data and filter ACCUMULATE (beta = 1); dbias += row sums of dy [Cout, B*Ho*Wo]
 * (own reduction kernel). One cudnnHandle bound to cuda_stream(); everything is asynchronous.
 *
 * Mixed precision (cuda_amp_conv2d_*, the table's slots; backend.h Precision). At
 * PRECISION_FP32 they call the float32 functions above, unchanged. At bf16 / fp16 the operands
 * are rounded into low-precision scratch (cuda_amp.cu) and cuDNN runs its PSEUDO_BFLOAT16 /
 * PSEUDO_HALF configuration: x, w, y descriptors in CUDNN_DATA_BFLOAT16 / CUDNN_DATA_HALF, the
 * convolution descriptor's compute type CUDNN_DATA_FLOAT (products summed in float32, the
 * result rounded once to the low type when cuDNN stores it), heuristics asked under
 * CUDNN_TENSOR_OP_MATH. The legacy API has no configuration with a low-precision x and a
 * float32 y, so every output is a low-precision scratch tensor that an own kernel converts into
 * the float32 buffer (written for forward, added for the backward ops: exact, the rounding is
 * cuDNN's). The forward bias is rounded and written into that output first and the convolution
 * runs with beta = 1: with the float compute type the blend alpha*conv + beta*y happens in float32
 * before the store, so y = round(conv + round(bias)) with one rounding, as on the CPU (an
 * algorithm that blended after a store would round twice, one low-precision ulp at most; not
 * verified per algorithm without a GPU). dbias += round(row sums of round(dy)) by own kernels.
 *   Layouts as for float32: the strided CNHW descriptors first (cuDNN documents the implicit-
 * GEMM algorithms for these configurations on any strides), the packed NCHW path when cuDNN
 * offers nothing there; in low precision the permute is folded into the conversions (fp32 CNHW
 * -> low NCHW and back), so the packed path costs no extra pass.
 *   Algorithms: only the ones that sum products of the rounded operands run first: forward
 * IMPLICIT_GEMM / IMPLICIT_PRECOMP_GEMM / GEMM, backward data ALGO_1, backward filter ALGO_1;
 * then the same kind with atomic partial sums (backward ALGO_0, filter ALGO_3); transform
 * algorithms (FFT, Winograd), whose transformed operands are rounded again, only if nothing else
 * runs. Within a tier, strided before packed and cuDNN's ranking. The plan cache is keyed on the
 * shape and the data type. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <algorithm>
#include <array>
#include <map>
#include <mutex>
#include <vector>
#include <cuda_runtime.h>
#include <cudnn.h>
#include "backend_cuda.h"
#include "cuda_check.h"
#include "cuda_kernels_internal.h"
#include "cuda_ops.h"

enum ConvDir { DIR_FWD = 0, DIR_BWD_DATA = 1, DIR_BWD_FILTER = 2, DIR_COUNT = 3 };
static const char *const DIR_NAME[DIR_COUNT] = {"conv2d_forward", "conv2d_backward_data",
                                                "conv2d_backward_weight"};
static const char *const DIR_CALL[DIR_COUNT] = {"cudnnConvolutionForward(...)",
                                                "cudnnConvolutionBackwardData(...)",
                                                "cudnnConvolutionBackwardFilter(...)"};

/* One way to run a direction: layout (0 = strided CNHW descriptors, 1 = packed NCHW through
 * permutes), algorithm (the cudnnConvolution*Algo_t value), math type, workspace bytes. */
typedef struct {
    int packed;
    int algo;
    cudnnMathType_t math;
    size_t ws_bytes;
} ConvCandidate;

/* Everything cuDNN needs for one ConvShape in one data type. */
typedef struct {
    Precision prec;     /* data type of x, w, y: fp32, or bf16 / fp16 (PSEUDO_* configs) */
    cudnnTensorDescriptor_t x_desc[2], y_desc[2]; /* [0] strided CNHW, [1] packed NCHW */
    cudnnFilterDescriptor_t w_desc;
    cudnnConvolutionDescriptor_t conv_desc;
    bool strided_ok;    /* cuDNN accepted the strided CNHW descriptors */
    bool packed_needed; /* B > 1: the packed layout differs from the strided one */
    std::vector<ConvCandidate> cand[DIR_COUNT]; /* built on the direction's first call */
    bool built[DIR_COUNT];
    bool confirmed[DIR_COUNT]; /* cand[dir][chosen] has run successfully */
    size_t chosen[DIR_COUNT];
} ConvPlan;

typedef std::array<int, 11> ConvKey; /* the ten geometry fields, then the Precision */

static std::mutex g_conv_lock;
static std::map<ConvKey, ConvPlan *> g_plans; /* lives until the process exits */
static cudnnHandle_t g_cudnn;
static cudaStream_t g_cudnn_stream;
static void *g_ws;              /* cuDNN workspace [g_ws_bytes], MEM_WORKSPACE */
static size_t g_ws_bytes;
static float *g_layout_scratch; /* packed path: [g_layout_floats] floats, MEM_WORKSPACE */
static size_t g_layout_floats;

static int env_is_one(const char *name) {
    const char *e = getenv(name);
    return e && strcmp(e, "1") == 0;
}

static size_t workspace_limit_bytes(void) {
    const char *e = getenv("DETR_CUDNN_WORKSPACE_MB");
    if (e && *e) {
        char *end = NULL;
        unsigned long long mb = strtoull(e, &end, 10);
        if (end && *end == '\0') return (size_t)mb << 20;
        fprintf(stderr, "warning: DETR_CUDNN_WORKSPACE_MB=%s is not a whole number of MiB; "
                        "using the default 1024\n", e);
    }
    return (size_t)1024 << 20;
}

static cudnnHandle_t cudnn(void) {
    if (!g_cudnn) cudnnCheck(cudnnCreate(&g_cudnn));
    if (g_cudnn_stream != cuda_stream() || !g_cudnn_stream) {
        g_cudnn_stream = cuda_stream();
        cudnnCheck(cudnnSetStream(g_cudnn, g_cudnn_stream));
    }
    return g_cudnn;
}

static void conv_shape_error(const char *op, const ConvShape *s, const char *what) {
    fprintf(stderr,
            "error: backend_cuda: %s: %s (ConvShape B=%d Cin=%d H=%d W=%d Cout=%d k=%dx%d "
            "stride=%d pad=%d dil=%d Ho=%d Wo=%d; a bug in the calling code)\n",
            op, what, s->B, s->Cin, s->H, s->W, s->Cout, s->kh, s->kw, s->stride, s->pad, s->dil,
            s->Ho, s->Wo);
    exit(2);
}

/* The same checks as the CPU backend, plus cuDNN's int-sized descriptors. */
static void conv_check_shape(const char *op, const ConvShape *s) {
    ConvShape t = *s;
    conv_shape_init(&t);
    if (s->B < 1 || s->Cin < 1 || s->Cout < 1 || s->H < 1 || s->W < 1 || s->kh < 1 ||
        s->kw < 1 || s->stride < 1 || s->pad < 0 || s->dil < 1)
        conv_shape_error(op, s, "ConvShape has a non-positive size, stride or dilation");
    if (t.Ho != s->Ho || t.Wo != s->Wo)
        conv_shape_error(op, s, "ConvShape Ho/Wo do not match conv_shape_init()");
    if (s->Ho < 1 || s->Wo < 1) conv_shape_error(op, s, "output is empty (kernel larger than input)");
    if ((long long)s->Cin * s->B * s->H * s->W > INT_MAX ||
        (long long)s->Cout * s->B * s->Ho * s->Wo > INT_MAX ||
        (long long)s->Cout * s->Cin * s->kh * s->kw > INT_MAX)
        conv_shape_error(op, s, "a tensor has 2^31 or more elements, beyond cuDNN's 4-d "
                                "descriptors: split the batch");
}

static ConvKey conv_key(const ConvShape *s, Precision prec) {
    return ConvKey{s->B,   s->Cin,    s->H,   s->W,   s->Cout,  s->kh,
                   s->kw,  s->stride, s->pad, s->dil, (int)prec};
}

/* cuDNN's element type for a precision (fp32 for PRECISION_FP32). */
static cudnnDataType_t cudnn_data_type(Precision prec) {
    return prec == PRECISION_BF16   ? CUDNN_DATA_BFLOAT16
           : prec == PRECISION_FP16 ? CUDNN_DATA_HALF
                                    : CUDNN_DATA_FLOAT;
}

/* [C, B, H, W] as cuDNN's (N=B, C, H, W): strided (CNHW in memory) or packed NCHW. With B = 1
 * the two are the same bytes, and the packed form avoids equal n and c strides. Returns cuDNN's
 * status: a refusal of the strided form only rules that layout out. */
static cudnnStatus_t set_image_desc(cudnnTensorDescriptor_t d, cudnnDataType_t type, int packed,
                                    int C, int B, int H, int W) {
    if (packed || B == 1)
        return cudnnSetTensor4dDescriptor(d, CUDNN_TENSOR_NCHW, type, B, C, H, W);
    return cudnnSetTensor4dDescriptorEx(d, type, B, C, H, W,
                                        /*nStride*/ H * W, /*cStride*/ B * H * W,
                                        /*hStride*/ W, /*wStride*/ 1);
}

/* The plan of shape s in data type prec. The convolution's compute type is always
 * CUDNN_DATA_FLOAT: FLOAT_CONFIG for fp32, PSEUDO_BFLOAT16_CONFIG / PSEUDO_HALF_CONFIG for the
 * low types (float32 accumulation, as the CPU emulation). */
static ConvPlan *plan_create(const ConvShape *s, Precision prec) {
    ConvPlan *p = new ConvPlan();
    p->prec = prec;
    const cudnnDataType_t type = cudnn_data_type(prec);
    for (int l = 0; l < 2; l++) {
        cudnnCheck(cudnnCreateTensorDescriptor(&p->x_desc[l]));
        cudnnCheck(cudnnCreateTensorDescriptor(&p->y_desc[l]));
    }
    cudnnCheck(set_image_desc(p->x_desc[1], type, 1, s->Cin, s->B, s->H, s->W));
    cudnnCheck(set_image_desc(p->y_desc[1], type, 1, s->Cout, s->B, s->Ho, s->Wo));
    p->strided_ok = set_image_desc(p->x_desc[0], type, 0, s->Cin, s->B, s->H, s->W) ==
                        CUDNN_STATUS_SUCCESS &&
                    set_image_desc(p->y_desc[0], type, 0, s->Cout, s->B, s->Ho, s->Wo) ==
                        CUDNN_STATUS_SUCCESS;
    /* with B = 1 both forms are packed NCHW: the second layout would only repeat the first */
    p->packed_needed = s->B > 1;
    cudnnCheck(cudnnCreateFilterDescriptor(&p->w_desc));
    cudnnCheck(cudnnSetFilter4dDescriptor(p->w_desc, type, CUDNN_TENSOR_NCHW, s->Cout, s->Cin,
                                          s->kh, s->kw));
    cudnnCheck(cudnnCreateConvolutionDescriptor(&p->conv_desc));
    cudnnCheck(cudnnSetConvolution2dDescriptor(p->conv_desc, s->pad, s->pad, s->stride, s->stride,
                                               s->dil, s->dil, CUDNN_CROSS_CORRELATION,
                                               CUDNN_DATA_FLOAT));
    /* cuDNN's idea of the output size must be ours */
    int n = 0, c = 0, h = 0, w = 0;
    cudnnCheck(cudnnGetConvolution2dForwardOutputDim(p->conv_desc, p->x_desc[1], p->w_desc, &n,
                                                     &c, &h, &w));
    if (n != s->B || c != s->Cout || h != s->Ho || w != s->Wo)
        conv_shape_error("conv2d", s, "cuDNN computes a different output size");
    return p;
}

static ConvPlan *plan_for(const ConvShape *s, Precision prec) {
    std::lock_guard<std::mutex> guard(g_conv_lock);
    ConvKey key = conv_key(s, prec);
    auto it = g_plans.find(key);
    if (it != g_plans.end()) return it->second;
    ConvPlan *p = plan_create(s, prec);
    g_plans.emplace(key, p);
    return p;
}

/* ------------------------------------------------------------------------------------------ */
/* candidate algorithms                                                                       */

/* cuDNN's workspace need for (dir, layout, algo) under the math type currently set on the
 * convolution descriptor; false when cuDNN refuses the combination. */
static bool query_workspace(ConvPlan *p, int dir, int packed, int algo, size_t *bytes) {
    cudnnHandle_t h = cudnn();
    cudnnStatus_t st;
    if (dir == DIR_FWD)
        st = cudnnGetConvolutionForwardWorkspaceSize(h, p->x_desc[packed], p->w_desc, p->conv_desc,
                                                     p->y_desc[packed],
                                                     (cudnnConvolutionFwdAlgo_t)algo, bytes);
    else if (dir == DIR_BWD_DATA)
        st = cudnnGetConvolutionBackwardDataWorkspaceSize(h, p->w_desc, p->y_desc[packed],
                                                          p->conv_desc, p->x_desc[packed],
                                                          (cudnnConvolutionBwdDataAlgo_t)algo,
                                                          bytes);
    else
        st = cudnnGetConvolutionBackwardFilterWorkspaceSize(h, p->x_desc[packed],
                                                            p->y_desc[packed], p->conv_desc,
                                                            p->w_desc,
                                                            (cudnnConvolutionBwdFilterAlgo_t)algo,
                                                            bytes);
    return st == CUDNN_STATUS_SUCCESS;
}

/* One ranked entry of cuDNN's heuristics, whatever the direction. */
typedef struct {
    cudnnStatus_t status;
    int algo;
    cudnnMathType_t math;
} RankedAlgo;

/* cuDNN's ranked list for (dir, layout); empty when cuDNN rejects the descriptors. */
static std::vector<RankedAlgo> ranked_algos(ConvPlan *p, int dir, int packed) {
    std::vector<RankedAlgo> out;
    cudnnHandle_t h = cudnn();
    int n = 0;
    if (dir == DIR_FWD) {
        cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
        if (cudnnGetConvolutionForwardAlgorithm_v7(h, p->x_desc[packed], p->w_desc, p->conv_desc,
                                                   p->y_desc[packed],
                                                   CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &n,
                                                   perf) != CUDNN_STATUS_SUCCESS)
            return out;
        for (int i = 0; i < n; i++) out.push_back({perf[i].status, (int)perf[i].algo, perf[i].mathType});
    } else if (dir == DIR_BWD_DATA) {
        cudnnConvolutionBwdDataAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
        if (cudnnGetConvolutionBackwardDataAlgorithm_v7(h, p->w_desc, p->y_desc[packed],
                                                        p->conv_desc, p->x_desc[packed],
                                                        CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &n,
                                                        perf) != CUDNN_STATUS_SUCCESS)
            return out;
        for (int i = 0; i < n; i++) out.push_back({perf[i].status, (int)perf[i].algo, perf[i].mathType});
    } else {
        cudnnConvolutionBwdFilterAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
        if (cudnnGetConvolutionBackwardFilterAlgorithm_v7(h, p->x_desc[packed], p->y_desc[packed],
                                                          p->conv_desc, p->w_desc,
                                                          CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT,
                                                          &n, perf) != CUDNN_STATUS_SUCCESS)
            return out;
        for (int i = 0; i < n; i++) out.push_back({perf[i].status, (int)perf[i].algo, perf[i].mathType});
    }
    return out;
}

/* The candidates of one direction: usable algorithms of the strided layout, then of the packed
 * one, in cuDNN's order, each once, within the workspace limit. */
static void build_candidates_low(ConvPlan *p, int dir);

static void build_candidates(ConvPlan *p, int dir) {
    if (p->prec != PRECISION_FP32) {
        build_candidates_low(p, dir);
        return;
    }
    const bool tf32 = env_is_one("DETR_TF32");
    const size_t limit = workspace_limit_bytes();
    for (int packed = 0; packed < 2; packed++) {
        if ((packed == 0 && !p->strided_ok) || (packed == 1 && !p->packed_needed)) continue;
        /* the heuristics rank for the math type on the descriptor */
        if (cudnnSetConvolutionMathType(p->conv_desc, tf32 ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH) !=
            CUDNN_STATUS_SUCCESS)
            continue;
        std::vector<RankedAlgo> ranked = ranked_algos(p, dir, packed);
        for (const RankedAlgo &r : ranked) {
            if (r.status != CUDNN_STATUS_SUCCESS) continue;
            /* strict fp32: every algorithm runs with FMA math (no tensor cores) */
            const cudnnMathType_t math = tf32 ? r.math : CUDNN_FMA_MATH;
            bool seen = false;
            for (const ConvCandidate &c : p->cand[dir])
                if (c.packed == packed && c.algo == r.algo && c.math == math) seen = true;
            if (seen) continue;
            if (cudnnSetConvolutionMathType(p->conv_desc, math) != CUDNN_STATUS_SUCCESS) continue;
            size_t ws = 0;
            if (!query_workspace(p, dir, packed, r.algo, &ws) || ws > limit) continue;
            p->cand[dir].push_back({packed, r.algo, math, ws});
        }
    }
    p->built[dir] = true;
}

/* Low-precision candidates: how faithful an algorithm is to "products of the rounded operands
 * summed in float32, rounded once": 0 = a (implicit) GEMM, deterministic; 1 = the same with
 * atomic partial sums; 2 = transforms (FFT, Winograd), whose transformed operands are rounded
 * again. Candidates run in tier order. */
static int low_precision_tier(int dir, int algo) {
    if (dir == DIR_FWD)
        return algo == CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM ||
                       algo == CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM ||
                       algo == CUDNN_CONVOLUTION_FWD_ALGO_GEMM
                   ? 0
                   : 2;
    if (dir == DIR_BWD_DATA)
        return algo == CUDNN_CONVOLUTION_BWD_DATA_ALGO_1   ? 0
               : algo == CUDNN_CONVOLUTION_BWD_DATA_ALGO_0 ? 1
                                                           : 2;
    return algo == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1 ? 0
           : algo == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0 || algo == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3
               ? 1
               : 2;
}

/* The candidates of one direction in bf16 / fp16: cuDNN's ranked lists (strided layout, then
 * packed) asked under CUDNN_TENSOR_OP_MATH, each entry run with the math type cuDNN lists for
 * it (tensor-op where the algorithm has tensor-core kernels), within the workspace limit, then
 * stably ordered by tier (low_precision_tier). */
static void build_candidates_low(ConvPlan *p, int dir) {
    const size_t limit = workspace_limit_bytes();
    for (int packed = 0; packed < 2; packed++) {
        if ((packed == 0 && !p->strided_ok) || (packed == 1 && !p->packed_needed)) continue;
        if (cudnnSetConvolutionMathType(p->conv_desc, CUDNN_TENSOR_OP_MATH) != CUDNN_STATUS_SUCCESS)
            continue;
        std::vector<RankedAlgo> ranked = ranked_algos(p, dir, packed);
        for (const RankedAlgo &r : ranked) {
            if (r.status != CUDNN_STATUS_SUCCESS) continue;
            bool seen = false;
            for (const ConvCandidate &c : p->cand[dir])
                if (c.packed == packed && c.algo == r.algo && c.math == r.math) seen = true;
            if (seen) continue;
            if (cudnnSetConvolutionMathType(p->conv_desc, r.math) != CUDNN_STATUS_SUCCESS) continue;
            size_t ws = 0;
            if (!query_workspace(p, dir, packed, r.algo, &ws) || ws > limit) continue;
            p->cand[dir].push_back({packed, r.algo, r.math, ws});
        }
    }
    std::stable_sort(p->cand[dir].begin(), p->cand[dir].end(),
                     [dir](const ConvCandidate &a, const ConvCandidate &b) {
                         return low_precision_tier(dir, a.algo) < low_precision_tier(dir, b.algo);
                     });
    p->built[dir] = true;
}

/* ------------------------------------------------------------------------------------------ */
/* scratch memory and own kernels                                                             */

static void *conv_workspace(size_t bytes) {
    if (bytes > g_ws_bytes) {
        cuda_free_bytes(g_ws); /* stream order: later users of the block run after us */
        g_ws = cuda_alloc_bytes(MEM_WORKSPACE, bytes);
        g_ws_bytes = bytes;
    }
    return bytes ? g_ws : NULL;
}

static float *layout_scratch(size_t floats) {
    if (floats > g_layout_floats) {
        cuda_free(g_layout_scratch);
        g_layout_scratch = cuda_alloc(MEM_WORKSPACE, floats);
        g_layout_floats = floats;
    }
    return g_layout_scratch;
}

static unsigned grid_for(size_t n, int threads) {
    size_t blocks = (n + (size_t)threads - 1) / (size_t)threads;
    if (blocks > 8192) blocks = 8192;
    if (blocks < 1) blocks = 1;
    return (unsigned)blocks;
}

/* dst [D1, D0, inner] (=|+=) src [D0, D1, inner] with the first two dims swapped: CNHW [C, B,
 * HW] <-> NCHW [B, C, HW]. Indexed by dst, so writes are coalesced and each dst element has one
 * writer (accumulate is race-free). */
__global__ static void swap01_kernel(const float *src, float *dst, size_t D0, size_t D1,
                                     size_t inner, int accumulate) {
    const size_t n = D0 * D1 * inner;
    for (size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x; t < n;
         t += (size_t)gridDim.x * blockDim.x) {
        const size_t k = t % inner, rest = t / inner;
        const size_t i = rest % D0, j = rest / D0; /* dst [j, i, k] */
        const float v = src[(i * D1 + j) * inner + k];
        if (accumulate)
            dst[t] += v;
        else
            dst[t] = v;
    }
}

static void swap01(const float *src, float *dst, int D0, int D1, size_t inner, int accumulate) {
    const size_t n = (size_t)D0 * D1 * inner;
    swap01_kernel<<<grid_for(n, 256), 256, 0, cuda_stream()>>>(src, dst, (size_t)D0, (size_t)D1,
                                                                 inner, accumulate);
    cudaCheck(cudaGetLastError());
}

/* y [C, N] += bias[c] per row. Grid y strides over channels, x over the row. */
__global__ static void add_row_bias_kernel(float *y, const float *bias, int C, size_t N) {
    for (int c = blockIdx.y; c < C; c += gridDim.y) {
        const float b = bias[c];
        float *yc = y + (size_t)c * N;
        for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < N;
             i += (size_t)gridDim.x * blockDim.x)
            yc[i] += b;
    }
}

/* Sum of v over the block (blockDim.x a multiple of 32, at most 1024); valid in thread 0. */
__device__ static float block_sum(float v) {
    __shared__ float warp_sums[32];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) warp_sums[warp] = v;
    __syncthreads();
    const int nwarps = blockDim.x >> 5;
    v = threadIdx.x < nwarps ? warp_sums[threadIdx.x] : 0.0f;
    if (warp == 0)
        for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    __syncthreads(); /* warp_sums may be reused by the caller's next iteration */
    return v;
}

/* dbias [C] += row sums of dy [C, N]: block (x, c) sums chunk x of row c (ROWSUM_CHUNK
 * elements), one atomicAdd per block. */
#define ROWSUM_CHUNK 65536

__global__ static void add_row_sums_kernel(const float *dy, float *dbias, int C, size_t N) {
    const size_t chunks = (N + ROWSUM_CHUNK - 1) / ROWSUM_CHUNK;
    for (int c = blockIdx.y; c < C; c += gridDim.y)
        for (size_t ch = blockIdx.x; ch < chunks; ch += gridDim.x) {
            const size_t lo = ch * ROWSUM_CHUNK;
            const size_t hi = lo + ROWSUM_CHUNK < N ? lo + ROWSUM_CHUNK : N;
            const float *row = dy + (size_t)c * N;
            float s = 0.0f;
            for (size_t i = lo + threadIdx.x; i < hi; i += blockDim.x) s += row[i];
            s = block_sum(s);
            if (threadIdx.x == 0) atomicAdd(&dbias[c], s);
        }
}

/* ------------------------------------------------------------------------------------------ */
/* running a direction                                                                        */

/* The operand pointers of one call, in our CNHW layout (bias: forward only, and only read by
 * the low-precision path; the float32 forward adds it after the convolution). */
typedef struct {
    const float *x, *w, *dy;
    float *y, *dx, *dw;
    const float *bias;
} ConvArgs;

/* Runs candidate c of direction dir. Returns cuDNN's status; on failure nothing the caller owns
 * has been written (cuDNN validates before launching; the packed path writes the caller's
 * output only after cuDNN succeeded). */
static cudnnStatus_t run_candidate(ConvPlan *p, const ConvShape *s, int dir,
                                   const ConvCandidate &c, const ConvArgs &a) {
    cudnnHandle_t h = cudnn();
    cudnnCheck(cudnnSetConvolutionMathType(p->conv_desc, c.math));
    void *ws = conv_workspace(c.ws_bytes);
    const float one = 1.0f, zero = 0.0f;
    const size_t nx = (size_t)s->Cin * s->B * s->H * s->W;     /* x, dx: [Cin, B, H, W] */
    const size_t ny = (size_t)s->Cout * s->B * s->Ho * s->Wo;  /* y, dy: [Cout, B, Ho, Wo] */
    const size_t plane_x = (size_t)s->H * s->W, plane_y = (size_t)s->Ho * s->Wo;
    const int L = c.packed;
    if (!c.packed) {
        if (dir == DIR_FWD)
            return cudnnConvolutionForward(h, &one, p->x_desc[L], a.x, p->w_desc, a.w, p->conv_desc,
                                           (cudnnConvolutionFwdAlgo_t)c.algo, ws, c.ws_bytes,
                                           &zero, p->y_desc[L], a.y);
        if (dir == DIR_BWD_DATA)
            return cudnnConvolutionBackwardData(h, &one, p->w_desc, a.w, p->y_desc[L], a.dy,
                                                p->conv_desc, (cudnnConvolutionBwdDataAlgo_t)c.algo,
                                                ws, c.ws_bytes, &one, p->x_desc[L], a.dx);
        return cudnnConvolutionBackwardFilter(h, &one, p->x_desc[L], a.x, p->y_desc[L], a.dy,
                                              p->conv_desc,
                                              (cudnnConvolutionBwdFilterAlgo_t)c.algo, ws,
                                              c.ws_bytes, &one, p->w_desc, a.dw);
    }
    /* packed NCHW: xp [B, Cin, H, W] and yp [B, Cout, Ho, Wo] in the layout scratch */
    float *scratch = layout_scratch(nx + ny);
    float *xp = scratch, *yp = scratch + nx;
    cudnnStatus_t st;
    if (dir == DIR_FWD) {
        swap01(a.x, xp, s->Cin, s->B, plane_x, 0);
        st = cudnnConvolutionForward(h, &one, p->x_desc[L], xp, p->w_desc, a.w, p->conv_desc,
                                     (cudnnConvolutionFwdAlgo_t)c.algo, ws, c.ws_bytes, &zero,
                                     p->y_desc[L], yp);
        if (st == CUDNN_STATUS_SUCCESS) swap01(yp, a.y, s->B, s->Cout, plane_y, 0);
    } else if (dir == DIR_BWD_DATA) { /* dxp = conv_transpose(dyp) (beta 0), then dx += dxp */
        swap01(a.dy, yp, s->Cout, s->B, plane_y, 0);
        st = cudnnConvolutionBackwardData(h, &one, p->w_desc, a.w, p->y_desc[L], yp,
                                          p->conv_desc, (cudnnConvolutionBwdDataAlgo_t)c.algo, ws,
                                          c.ws_bytes, &zero, p->x_desc[L], xp);
        if (st == CUDNN_STATUS_SUCCESS) swap01(xp, a.dx, s->B, s->Cin, plane_x, 1);
    } else { /* the filter layout is the same in both: dw accumulates directly */
        swap01(a.x, xp, s->Cin, s->B, plane_x, 0);
        swap01(a.dy, yp, s->Cout, s->B, plane_y, 0);
        st = cudnnConvolutionBackwardFilter(h, &one, p->x_desc[L], xp, p->y_desc[L], yp,
                                            p->conv_desc, (cudnnConvolutionBwdFilterAlgo_t)c.algo,
                                            ws, c.ws_bytes, &one, p->w_desc, a.dw);
    }
    return st;
}

/* fp32 CNHW [C, B, plane] -> its low-precision copy in layout `packed`: CNHW as it is (0) or
 * NCHW [B, C, plane] (1; as a batch of B matrices [C, plane]: source rows B*plane apart). */
static void to_low_layout(Precision prec, const float *src, void *dst, int C, int B, size_t plane,
                          int packed) {
    if (!packed)
        cuda_amp_pack(prec, src, 0, 0, dst, 0, 0, 1, (size_t)C * B * plane, 1);
    else
        cuda_amp_pack(prec, src, /*ld*/ (size_t)B * plane, /*stride*/ plane, dst, /*ld*/ plane,
                      /*stride*/ (size_t)C * plane, (size_t)C, plane, (size_t)B);
}

/* The inverse: a low-precision result in layout `packed` -> fp32 CNHW [C, B, plane], written or
 * added (exact: the value is already rounded). */
static void from_low_layout(Precision prec, const void *src, float *dst, int C, int B, size_t plane,
                            int packed, int accumulate) {
    if (!packed)
        cuda_amp_unpack(prec, src, 0, 0, dst, 0, 0, 1, (size_t)C * B * plane, 1, accumulate);
    else
        cuda_amp_unpack(prec, src, /*ld*/ plane, /*stride*/ (size_t)C * plane, dst,
                        /*ld*/ (size_t)B * plane, /*stride*/ plane, (size_t)C, plane, (size_t)B,
                        accumulate);
}

/* Runs candidate c of direction dir in the plan's low precision: the operands are rounded into
 * scratch in the candidate's layout, cuDNN writes a low-precision output (beta 0, or 1 over the
 * rounded bias), and only on success is that converted into the caller's float32 buffer, so a
 * refused candidate leaves the caller's memory untouched (the retry contract of conv_run). */
static cudnnStatus_t run_candidate_low(ConvPlan *p, const ConvShape *s, int dir,
                                       const ConvCandidate &c, const ConvArgs &a) {
    const Precision prec = p->prec;
    cudnnHandle_t h = cudnn();
    cudnnCheck(cudnnSetConvolutionMathType(p->conv_desc, c.math));
    void *ws = conv_workspace(c.ws_bytes);
    /* alpha and beta are float for the PSEUDO_* configurations (compute type float) */
    const float one = 1.0f, zero = 0.0f;
    const size_t nx = (size_t)s->Cin * s->B * s->H * s->W;               /* x, dx */
    const size_t ny = (size_t)s->Cout * s->B * s->Ho * s->Wo;            /* y, dy */
    const size_t nw = (size_t)s->Cout * s->Cin * s->kh * s->kw;          /* w, dw */
    const size_t plane_x = (size_t)s->H * s->W, plane_y = (size_t)s->Ho * s->Wo;
    const int L = c.packed;
    /* low-precision tensors (2 bytes an element), in layout L: x-shaped, y-shaped, w-shaped */
    size_t bytes[3] = {nx * 2, ny * 2, nw * 2};
    void *part[3];
    cuda_amp_scratch(3, bytes, part);
    void *xl = part[0], *yl = part[1], *wl = part[2];
    cudnnStatus_t st;
    if (dir == DIR_FWD) { /* y = round(conv(x̂, ŵ) + round(bias)) */
        to_low_layout(prec, a.x, xl, s->Cin, s->B, plane_x, L);
        cuda_amp_pack(prec, a.w, 0, 0, wl, 0, 0, 1, nw, 1);
        if (a.bias) /* channel c: CNHW rows of B*Ho*Wo, NCHW planes of Ho*Wo */
            cuda_amp_fill_channels(prec, yl, a.bias, (size_t)s->Cout,
                                   L ? plane_y : (size_t)s->B * plane_y, ny);
        st = cudnnConvolutionForward(h, &one, p->x_desc[L], xl, p->w_desc, wl, p->conv_desc,
                                     (cudnnConvolutionFwdAlgo_t)c.algo, ws, c.ws_bytes,
                                     a.bias ? &one : &zero, p->y_desc[L], yl);
        if (st == CUDNN_STATUS_SUCCESS) from_low_layout(prec, yl, a.y, s->Cout, s->B, plane_y, L, 0);
    } else if (dir == DIR_BWD_DATA) { /* dx += round(conv_transpose(dŷ, ŵ)) */
        to_low_layout(prec, a.dy, yl, s->Cout, s->B, plane_y, L);
        cuda_amp_pack(prec, a.w, 0, 0, wl, 0, 0, 1, nw, 1);
        st = cudnnConvolutionBackwardData(h, &one, p->w_desc, wl, p->y_desc[L], yl, p->conv_desc,
                                          (cudnnConvolutionBwdDataAlgo_t)c.algo, ws, c.ws_bytes,
                                          &zero, p->x_desc[L], xl);
        if (st == CUDNN_STATUS_SUCCESS) from_low_layout(prec, xl, a.dx, s->Cin, s->B, plane_x, L, 1);
    } else { /* dw += round(dŷ (x) x̂) */
        to_low_layout(prec, a.x, xl, s->Cin, s->B, plane_x, L);
        to_low_layout(prec, a.dy, yl, s->Cout, s->B, plane_y, L);
        st = cudnnConvolutionBackwardFilter(h, &one, p->x_desc[L], xl, p->y_desc[L], yl,
                                            p->conv_desc, (cudnnConvolutionBwdFilterAlgo_t)c.algo,
                                            ws, c.ws_bytes, &zero, p->w_desc, wl);
        if (st == CUDNN_STATUS_SUCCESS) cuda_amp_unpack(prec, wl, 0, 0, a.dw, 0, 0, 1, nw, 1, 1);
    }
    return st;
}

static const char *algo_name(int dir, int algo) {
    static const char *const fwd[] = {"IMPLICIT_GEMM", "IMPLICIT_PRECOMP_GEMM", "GEMM", "DIRECT",
                                      "FFT", "FFT_TILING", "WINOGRAD", "WINOGRAD_NONFUSED"};
    static const char *const bwd_data[] = {"ALGO_0", "ALGO_1", "FFT", "FFT_TILING", "WINOGRAD",
                                           "WINOGRAD_NONFUSED"};
    static const char *const bwd_filter[] = {"ALGO_0", "ALGO_1", "FFT", "ALGO_3", "WINOGRAD",
                                             "WINOGRAD_NONFUSED", "FFT_TILING"};
    if (dir == DIR_FWD && algo >= 0 && algo < 8) return fwd[algo];
    if (dir == DIR_BWD_DATA && algo >= 0 && algo < 6) return bwd_data[algo];
    if (dir == DIR_BWD_FILTER && algo >= 0 && algo < 7) return bwd_filter[algo];
    return "?";
}

/* cuDNN statuses that mean "this algorithm cannot do this", worth trying the next one:
 * CUDNN_STATUS_BAD_PARAM* (2xxx) and CUDNN_STATUS_NOT_SUPPORTED* (3xxx). */
static bool retryable(cudnnStatus_t st) { return (int)st / 1000 == 2 || (int)st / 1000 == 3; }

static void conv_run(const ConvShape *s, int dir, const ConvArgs &a, Precision prec) {
    ConvPlan *p = plan_for(s, prec);
    std::lock_guard<std::mutex> guard(g_conv_lock); /* candidate state and the workspace */
    if (!p->built[dir]) build_candidates(p, dir);
    cudnnStatus_t last = CUDNN_STATUS_NOT_SUPPORTED;
    while (p->chosen[dir] < p->cand[dir].size()) {
        const ConvCandidate &c = p->cand[dir][p->chosen[dir]];
        cudnnStatus_t st = prec == PRECISION_FP32 ? run_candidate(p, s, dir, c, a)
                                                  : run_candidate_low(p, s, dir, c, a);
        if (st == CUDNN_STATUS_SUCCESS) {
            if (!p->confirmed[dir] && env_is_one("DETR_CUDNN_VERBOSE"))
                fprintf(stderr,
                        "cudnn: %s B=%d Cin=%d %dx%d -> Cout=%d %dx%d k=%dx%d s=%d p=%d d=%d: "
                        "%s, %s layout, %s math, workspace %zu bytes%s%s\n",
                        DIR_NAME[dir], s->B, s->Cin, s->H, s->W, s->Cout, s->Ho, s->Wo, s->kh,
                        s->kw, s->stride, s->pad, s->dil, algo_name(dir, c.algo),
                        c.packed ? "packed NCHW (permuted)" : "strided CNHW",
                        c.math == CUDNN_FMA_MATH ? "FMA" : "tensor-op/default", c.ws_bytes,
                        prec == PRECISION_FP32 ? "" : ", data ",
                        prec == PRECISION_FP32 ? "" : cuda_precision_name(prec));
            p->confirmed[dir] = true;
            return;
        }
        if (p->confirmed[dir] || !retryable(st))
            gpu_check_failed(GPU_LIB_CUDNN, (int)st, DIR_CALL[dir], __FILE__, __LINE__);
        last = st;
        p->chosen[dir]++; /* refused before it wrote anything: try the next candidate */
    }
    fprintf(stderr,
            "error: backend_cuda: %s: cuDNN has no algorithm that runs this convolution (B=%d "
            "Cin=%d H=%d W=%d Cout=%d k=%dx%d stride=%d pad=%d dil=%d, data %s) within the "
            "workspace limit of %zu MiB, in the CNHW-strided or the packed layout; last status "
            "%d (%s)\n"
            "HINT: raise DETR_CUDNN_WORKSPACE_MB%s, or report the shape with the cuDNN version "
            "(%zu).\n",
            DIR_NAME[dir], s->B, s->Cin, s->H, s->W, s->Cout, s->kh, s->kw, s->stride, s->pad,
            s->dil, cuda_precision_name(prec), workspace_limit_bytes() >> 20, (int)last,
            cudnnGetErrorString(last),
            prec == PRECISION_FP32 ? "" : " or train without --amp (bf16 needs compute capability 8.0)",
            cudnnGetVersion());
    exit(1);
}

/* ------------------------------------------------------------------------------------------ */
/* the ops                                                                                    */

void cuda_conv2d_forward(const ConvShape *s, const float *x, const float *w, const float *bias,
                         float *y) {
    conv_check_shape("conv2d_forward", s);
    ConvArgs a = {x, w, NULL, y, NULL, NULL, NULL}; /* the bias is added below */
    conv_run(s, DIR_FWD, a, PRECISION_FP32); /* y [Cout, B, Ho, Wo] = conv(x, w) */
    if (bias) {              /* y[c] += bias[c] */
        const size_t N = (size_t)s->B * s->Ho * s->Wo;
        dim3 grid(grid_for(N, 256) > 64 ? 64 : grid_for(N, 256),
                  (unsigned)(s->Cout < 65535 ? s->Cout : 65535));
        add_row_bias_kernel<<<grid, 256, 0, cuda_stream()>>>(y, bias, s->Cout, N);
        cudaCheck(cudaGetLastError());
    }
}

void cuda_conv2d_backward_data(const ConvShape *s, const float *dy, const float *w, float *dx) {
    if (!dx) return;
    conv_check_shape("conv2d_backward_data", s);
    ConvArgs a = {NULL, w, dy, NULL, dx, NULL, NULL};
    conv_run(s, DIR_BWD_DATA, a, PRECISION_FP32); /* dx [Cin, B, H, W] += conv_transpose(dy, w) */
}

void cuda_conv2d_backward_weight(const ConvShape *s, const float *dy, const float *x, float *dw,
                                 float *dbias) {
    conv_check_shape("conv2d_backward_weight", s);
    if (dbias) { /* dbias [Cout] += row sums of dy [Cout, B*Ho*Wo] */
        const size_t N = (size_t)s->B * s->Ho * s->Wo;
        size_t chunks = (N + ROWSUM_CHUNK - 1) / ROWSUM_CHUNK;
        if (chunks > 65535) chunks = 65535;
        dim3 grid((unsigned)chunks, (unsigned)(s->Cout < 65535 ? s->Cout : 65535));
        add_row_sums_kernel<<<grid, 256, 0, cuda_stream()>>>(dy, dbias, s->Cout, N);
        cudaCheck(cudaGetLastError());
    }
    if (!dw) return;
    ConvArgs a = {x, NULL, dy, NULL, NULL, dw, NULL};
    conv_run(s, DIR_BWD_FILTER, a, PRECISION_FP32); /* dw [Cout, Cin, kh, kw] += dy (x) x */
}

/* ------------------------------------------------------------------------------------------ */
/* the ops under set_precision (the table's slots)                                            */

void cuda_amp_conv2d_forward(const ConvShape *s, const float *x, const float *w, const float *bias,
                             float *y) {
    const Precision prec = cuda_precision();
    if (prec == PRECISION_FP32) {
        cuda_conv2d_forward(s, x, w, bias, y);
        return;
    }
    conv_check_shape("conv2d_forward", s);
    ConvArgs a = {x, w, NULL, y, NULL, NULL, bias};
    conv_run(s, DIR_FWD, a, prec); /* y [Cout, B, Ho, Wo] = round(conv(x̂, ŵ) + round(bias)) */
}

void cuda_amp_conv2d_backward_data(const ConvShape *s, const float *dy, const float *w, float *dx) {
    const Precision prec = cuda_precision();
    if (prec == PRECISION_FP32) {
        cuda_conv2d_backward_data(s, dy, w, dx);
        return;
    }
    if (!dx) return;
    conv_check_shape("conv2d_backward_data", s);
    ConvArgs a = {NULL, w, dy, NULL, dx, NULL, NULL};
    conv_run(s, DIR_BWD_DATA, a, prec); /* dx [Cin, B, H, W] += round(conv_transpose(dŷ, ŵ)) */
}

void cuda_amp_conv2d_backward_weight(const ConvShape *s, const float *dy, const float *x, float *dw,
                                     float *dbias) {
    const Precision prec = cuda_precision();
    if (prec == PRECISION_FP32) {
        cuda_conv2d_backward_weight(s, dy, x, dw, dbias);
        return;
    }
    conv_check_shape("conv2d_backward_weight", s);
    if (dbias) { /* dbias [Cout] += round(row sums of round(dy) [Cout, B*Ho*Wo]) */
        size_t bytes = (size_t)s->Cout * sizeof(float);
        void *partial; /* [Cout] fp32 */
        cuda_amp_scratch(1, &bytes, &partial);
        cuda_amp_rounded_row_sums(prec, dy, (size_t)s->Cout, (size_t)s->B * s->Ho * s->Wo,
                                  (float *)partial);
        cuda_amp_round_store(prec, (const float *)partial, 0, 0, NULL, 1.0f, dbias, 0, 0, 1,
                             (size_t)s->Cout, 1);
    }
    if (!dw) return;
    ConvArgs a = {x, NULL, dy, NULL, NULL, dw, NULL};
    conv_run(s, DIR_BWD_FILTER, a, prec); /* dw [Cout, Cin, kh, kw] += round(dŷ (x) x̂) */
}
