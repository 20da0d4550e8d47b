/* backend_cuda.cu - device selection and the memory part of the CUDA backend (see
 * backend_cuda.h): the caching allocator over cudaMalloc, pinned host memory, transfers. The
 * compute ops are in cuda_ops.h's files and the Backend table in backend_cuda_table.cu. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <mutex>
#include <cuda_runtime.h>
#include <nvtx3/nvToolsExtCudaRt.h>
#include "backend_cuda.h"
#include "cuda_check.h"
#include "cuda_info.h"

/* ------------------------------------------------------------------------------------------ */
/* device selection                                                                           */

static int g_device = -1;
static cudaStream_t g_stream = 0; /* 0 (legacy default stream) until cuda_device_init() */
static std::mutex g_init_lock;

cudaStream_t cuda_stream(void) { return g_stream; }
int cuda_current_device(void) { return g_device; }

/* x[0..n) = value; grid-stride loop so any n fits one launch. */
__global__ static void fill_kernel(float *x, float value, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        x[i] = value;
}

__attribute__((format(printf, 3, 4))) static int init_fail(char *err, size_t errlen,
                                                           const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

/* A CUDA error during init, as cudaCheck would print it, but returned instead of exiting. */
static int init_cuda_error(char *err, size_t errlen, cudaError_t e, const char *expr, int line) {
    (void)cudaGetLastError();
    gpu_format_error(err, errlen, GPU_LIB_CUDA, (int)e, expr, __FILE__, line);
    return -1;
}

/* Driver present and at least one GPU: returns the GPU count, or -1 with err filled. */
static int count_gpus(char *err, size_t errlen) {
    int drv = 0;
    if (cudaDriverGetVersion(&drv) != cudaSuccess || drv == 0)
        return init_fail(err, errlen,
                         "error: no GPU can be used: no NVIDIA driver was found (libcuda.so.1 "
                         "could not be loaded)\nHINT: install the NVIDIA driver (nvidia-smi must "
                         "work), or run with --device cpu.\n");
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e == cudaErrorNoDevice || (e == cudaSuccess && n == 0)) {
        (void)cudaGetLastError();
        const char *visible = getenv("CUDA_VISIBLE_DEVICES");
        return init_fail(err, errlen,
                         "error: no GPU: the NVIDIA driver (CUDA %d.%d) sees no CUDA GPU%s%s\n"
                         "HINT: check nvidia-smi%s, or run with --device cpu.\n",
                         drv / 1000, drv % 1000 / 10,
                         visible ? " with CUDA_VISIBLE_DEVICES=" : "", visible ? visible : "",
                         visible ? " and CUDA_VISIBLE_DEVICES" : "");
    }
    if (e != cudaSuccess) return init_cuda_error(err, errlen, e, "cudaGetDeviceCount(&n)", __LINE__);
    return n;
}

/* The GPU code in this binary must run on the selected GPU: asking for a kernel's attributes
 * loads its module and fails when no image matches the compute capability. */
static int check_kernel_image(int device, char *err, size_t errlen) {
    cudaFuncAttributes attr;
    cudaError_t e = cudaFuncGetAttributes(&attr, fill_kernel);
    if (e == cudaSuccess) return 0;
    cudaDeviceProp p;
    if (e == cudaErrorNoKernelImageForDevice && cudaGetDeviceProperties(&p, device) == cudaSuccess) {
        (void)cudaGetLastError();
        return init_fail(err, errlen,
                         "error: GPU %d (%s) has compute capability %d.%d, but this build has GPU "
                         "code only for %s\nHINT: rebuild with make CUDA=1 CUDA_ARCHS=\"%s %d%d\".\n",
                         device, p.name, p.major, p.minor, cuda_info_archs(), cuda_info_archs(),
                         p.major, p.minor);
    }
    return init_cuda_error(err, errlen, e, "cudaFuncGetAttributes(&attr, fill_kernel)", __LINE__);
}

int cuda_device_init(int device, char *err, size_t errlen) {
    char scratch[1];
    if (!err || errlen == 0) {
        err = scratch;
        errlen = sizeof scratch;
    }
    err[0] = '\0';
    std::lock_guard<std::mutex> guard(g_init_lock);
    if (g_device >= 0) {
        if (device == g_device) return 0;
        return init_fail(err, errlen,
                         "error: GPU %d was asked for, but this process already uses GPU %d\n"
                         "HINT: one process trains on one GPU; pick it once with --device.\n",
                         device, g_device);
    }
    int n = count_gpus(err, errlen);
    if (n < 0) return -1;
    if (device < 0 || device >= n)
        return init_fail(err, errlen,
                         "error: GPU %d was asked for, but %d GPU(s) were found (0..%d)\n"
                         "HINT: detr-train --version lists them; CUDA_VISIBLE_DEVICES renumbers "
                         "them from 0.\n",
                         device, n, n - 1);
    cudaError_t e = cudaSetDevice(device);
    if (e != cudaSuccess) return init_cuda_error(err, errlen, e, "cudaSetDevice(device)", __LINE__);
    e = cudaFree(0); /* creates the context now, so its failures are reported here */
    if (e != cudaSuccess) return init_cuda_error(err, errlen, e, "cudaFree(0)", __LINE__);
    if (check_kernel_image(device, err, errlen) != 0) return -1;
    e = cudaStreamCreateWithFlags(&g_stream, cudaStreamNonBlocking);
    if (e != cudaSuccess)
        return init_cuda_error(err, errlen, e, "cudaStreamCreateWithFlags(&g_stream, ...)",
                               __LINE__);
    nvtxNameCudaStreamA(g_stream, "detr compute"); /* the name Nsight Systems shows */
    g_device = device;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* memory: the caching allocator (cuda_alloc_core.h) over cudaMalloc/cudaFree; every block is  */
/* charged to a mem.h category                                                                 */

/* The core is plain C (trainer/cuda/cuda_alloc_core.c, in the library of both builds), so its
 * CPU test drives the same code with a fake device. */
#include "cuda_alloc_core.h"

/* Raw allocator: NULL when the GPU has no room; any other CUDA failure is fatal (cuda_check.h). */
static void *raw_device_alloc(void *, size_t bytes) {
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes);
    if (e == cudaSuccess) return p;
    if (e != cudaErrorMemoryAllocation)
        gpu_check_failed(GPU_LIB_CUDA, (int)e, "cudaMalloc(&p, bytes)", __FILE__, __LINE__);
    (void)cudaGetLastError(); /* out of memory is not sticky: clear it */
    return NULL;
}

static void raw_device_free(void *, void *p) { cudaCheck(cudaFree(p)); }

static std::once_flag g_cache_once;
static DevCache *g_cache = NULL;

static DevCache *device_cache(void) {
    std::call_once(g_cache_once, [] {
        DevCacheRaw raw = {raw_device_alloc, raw_device_free, NULL};
        g_cache = devcache_create(&raw);
        if (!g_cache) {
            fprintf(stderr, "error: host out of memory while creating the GPU allocator\n");
            exit(EXIT_OOM);
        }
    });
    return g_cache;
}

/* The PyTorch-style explanation, with the card's own view (cudaMemGetInfo). */
static void explain_oom(const DevCacheOom *oom) {
    size_t free_b = 0, total_b = 0;
    if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) {
        (void)cudaGetLastError();
        free_b = total_b = 0; /* printed without the card's numbers */
    }
    int dev = g_device >= 0 ? g_device : 0;
    cudaDeviceProp prop;
    const char *name = NULL;
    if (cudaGetDeviceProperties(&prop, dev) == cudaSuccess) name = prop.name;
    else (void)cudaGetLastError();
    devcache_print_oom(device_cache(), stderr, oom, dev, name, total_b, free_b);
    fflush(stderr);
}

/* Device OOM: exits (exit_on_device_oom) or returns NULL. A refused --mem-limit budget follows
 * mem.h's policy: report + exit(EXIT_OOM), or NULL when exit_on_oom is off. */
static void *device_alloc(MemCategory cat, size_t bytes, int exit_on_device_oom) {
    if (bytes == 0) return NULL;
    DevCache *cache = device_cache();
    for (int attempt = 0; attempt < 2; attempt++) {
        void *p = NULL;
        DevCacheOom oom;
        DevCacheStatus st = devcache_alloc(cache, cat, bytes, &p, &oom);
        if (st == DEVCACHE_OK) return p;
        if (st == DEVCACHE_OOM_BUDGET) {
            explain_oom(&oom);
            /* mem.h's own refusal message and exit policy; if memory was freed meanwhile the
             * charge succeeds: undo it and try once more */
            if (mem_charge(cat, oom.rounded) != 0) return NULL;
            mem_release(cat, oom.rounded);
            continue;
        }
        if (!exit_on_device_oom) return NULL;
        explain_oom(&oom);
        exit(EXIT_OOM);
    }
    return NULL;
}

void *cuda_alloc_bytes(MemCategory cat, size_t bytes) { return device_alloc(cat, bytes, 1); }
void *cuda_try_alloc_bytes(MemCategory cat, size_t bytes) { return device_alloc(cat, bytes, 0); }

float *cuda_alloc(MemCategory cat, size_t nfloats) {
    return (float *)device_alloc(cat, nfloats * sizeof(float), 1);
}

void cuda_free_bytes(void *p) {
    if (!p) return;
    if (devcache_free(device_cache(), p) != 0) {
        fprintf(stderr,
                "error: cuda_free: %p was not allocated by cuda_alloc, or was freed twice (a bug "
                "in the calling code)\n",
                p);
        exit(EXIT_FAILURE);
    }
}

void cuda_free(float *p) { cuda_free_bytes(p); }

size_t cuda_live_blocks(void) { return devcache_live_blocks(device_cache()); }
DevCacheStats cuda_memory_stats(void) { return devcache_stats(device_cache()); }
void cuda_reset_peak_memory_stats(void) { devcache_reset_peaks(device_cache()); }
size_t cuda_empty_cache(void) { return devcache_empty_cache(device_cache()); }
void cuda_print_memory_stats(FILE *f) { devcache_print_stats(device_cache(), f); }

/* ---- pinned host memory (the loader's batch slots) ---- */

void *cuda_host_alloc_pinned(size_t bytes) {
    void *p = NULL;
    cudaError_t e = cudaHostAlloc(&p, bytes ? bytes : 1, cudaHostAllocDefault);
    if (e == cudaSuccess) return p;
    if (e != cudaErrorMemoryAllocation)
        gpu_check_failed(GPU_LIB_CUDA, (int)e, "cudaHostAlloc(&p, bytes, cudaHostAllocDefault)",
                         __FILE__, __LINE__);
    (void)cudaGetLastError();
    fprintf(stderr, "error: cudaHostAlloc: no pinned host memory for %zu bytes (batch slots)\n",
            bytes);
    return NULL;
}

void cuda_host_free_pinned(void *p) {
    if (p) cudaCheck(cudaFreeHost(p));
}

/* ------------------------------------------------------------------------------------------ */
/* transfers and fills, in issue order on g_stream                                            */

void cuda_upload(void *dst, const void *src_host, size_t bytes) {
    if (bytes == 0) return;
    cudaCheck(cudaMemcpyAsync(dst, src_host, bytes, cudaMemcpyHostToDevice, g_stream));
    /* the caller may reuse src_host (pinned or not) as soon as this returns */
    cudaCheck(cudaStreamSynchronize(g_stream));
}

void cuda_download(void *dst_host, const void *src, size_t bytes) {
    if (bytes == 0) return;
    cudaCheck(cudaMemcpyAsync(dst_host, src, bytes, cudaMemcpyDeviceToHost, g_stream));
    cudaCheck(cudaStreamSynchronize(g_stream));
}

void cuda_copy(float *dst, const float *src, size_t n) {
    if (n == 0 || dst == src) return;
    cudaCheck(cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyDeviceToDevice, g_stream));
}

void cuda_fill(float *x, float value, size_t n) {
    if (n == 0) return;
    const int threads = 256;
    size_t blocks = (n + threads - 1) / threads;
    if (blocks > 8192) blocks = 8192; /* the grid-stride loop covers the rest */
    fill_kernel<<<(unsigned)blocks, threads, 0, g_stream>>>(x, value, n);
    cudaCheck(cudaGetLastError());
}

void cuda_synchronize(void) { cudaCheck(cudaStreamSynchronize(g_stream)); }
