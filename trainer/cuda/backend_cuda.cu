/* backend_cuda.cu - device selection and the memory part of the CUDA backend (see
 * backend_cuda.h). The compute ops and the `Backend` table itself are the CUDA backend issue's
 * work; nothing here pretends to implement them. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <mutex>
#include <new>
#include <unordered_map>
#include <cuda_runtime.h>
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
    g_device = device;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* memory: every device block is charged to a mem.h category; the table remembers its size    */

typedef struct {
    size_t bytes;
    MemCategory cat;
} DeviceBlock;

static std::mutex g_blocks_lock;
static std::unordered_map<void *, DeviceBlock> g_blocks;

static void remember_block(void *p, size_t bytes, MemCategory cat) {
    try {
        std::lock_guard<std::mutex> guard(g_blocks_lock);
        g_blocks.emplace(p, DeviceBlock{bytes, cat});
    } catch (const std::bad_alloc &) {
        fprintf(stderr, "error: host out of memory while recording a GPU allocation\n");
        mem_print_report(stderr);
        exit(EXIT_OOM);
    }
}

/* Removes p from the table and returns its block; a pointer not in it is a caller bug. */
static DeviceBlock forget_block(void *p) {
    std::lock_guard<std::mutex> guard(g_blocks_lock);
    auto it = g_blocks.find(p);
    if (it == g_blocks.end()) {
        fprintf(stderr,
                "error: cuda_free: %p was not allocated by cuda_alloc, or was freed twice (a bug "
                "in the calling code)\n",
                p);
        exit(EXIT_FAILURE);
    }
    DeviceBlock b = it->second;
    g_blocks.erase(it);
    return b;
}

size_t cuda_live_blocks(void) {
    std::lock_guard<std::mutex> guard(g_blocks_lock);
    return g_blocks.size();
}

__attribute__((noreturn)) static void report_device_oom(MemCategory cat, size_t bytes) {
    size_t free_b = 0, total_b = 0;
    if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) (void)cudaGetLastError();
    fprintf(stderr,
            "error: out of GPU memory: requested %zu bytes for %s on GPU %d, which has %zu of "
            "%zu bytes free (the CUDA context and other processes use some); this process has "
            "%zu bytes charged:\n",
            bytes, mem_category_name(cat), g_device < 0 ? 0 : g_device, free_b, total_b,
            mem_stats().total_current);
    mem_print_report(stderr);
    fprintf(stderr, "HINT: lower --batch or the image size (detr-prof sweep finds what fits), or "
                    "free the GPU from other processes (nvidia-smi).\n");
    fflush(stderr);
    exit(EXIT_OOM);
}

/* Charge, then cudaMalloc. Device OOM: exits (exit_on_device_oom) or returns NULL uncharged. */
static void *device_alloc(MemCategory cat, size_t bytes, int exit_on_device_oom) {
    if (bytes == 0) return NULL;
    if (mem_charge(cat, bytes) != 0) return NULL; /* budget refused, exit_on_oom off */
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes);
    if (e != cudaSuccess) {
        mem_release(cat, bytes);
        if (e != cudaErrorMemoryAllocation) gpu_check_failed(GPU_LIB_CUDA, (int)e,
                                                             "cudaMalloc(&p, bytes)", __FILE__,
                                                             __LINE__);
        (void)cudaGetLastError(); /* out of memory is not sticky: clear it */
        if (exit_on_device_oom) report_device_oom(cat, bytes);
        return NULL;
    }
    remember_block(p, bytes, cat);
    return p;
}

void *cuda_alloc_bytes(MemCategory cat, size_t bytes) { return device_alloc(cat, bytes, 1); }
void *cuda_try_alloc_bytes(MemCategory cat, size_t bytes) { return device_alloc(cat, bytes, 0); }

float *cuda_alloc(MemCategory cat, size_t nfloats) {
    return (float *)device_alloc(cat, nfloats * sizeof(float), 1);
}

void cuda_free_bytes(void *p) {
    if (!p) return;
    DeviceBlock b = forget_block(p);
    cudaCheck(cudaFree(p));
    mem_release(b.cat, b.bytes);
}

void cuda_free(float *p) { cuda_free_bytes(p); }

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
