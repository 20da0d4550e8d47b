/* cuda_check.h - one check macro per GPU library, as in llm.c:
 *     cudaCheck(cudaMalloc(&p, n));   cublasCheck(...);   cudnnCheck(...);
 *     ncclCheck(...);                 cuptiCheck(...);
 * A failing call prints, to stderr,
 *     error: CUDA call `cudaMalloc(&p, n)` failed at trainer/cuda/x.cu:42:
 *            cudaErrorMemoryAllocation (2): out of memory
 *     HINT: <what the user can do about it>
 * (out-of-memory statuses add the memory report of mem.h) and exits with EXIT_OOM for out of
 * memory, 1 for anything else. Every library's success status is 0, so the macros share one
 * implementation (cuda_check.cu). Usable from C and CUDA C++; the CUDA build only. */
#ifndef DETR_CUDA_CHECK_H
#define DETR_CUDA_CHECK_H
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { GPU_LIB_CUDA = 0, GPU_LIB_CUBLAS, GPU_LIB_CUDNN, GPU_LIB_NCCL, GPU_LIB_CUPTI } GpuLib;

/* Library name as printed ("CUDA", "cuBLAS", "cuDNN", "NCCL", "CUPTI"). */
const char *gpu_lib_name(GpuLib lib);
/* One sentence of advice for a failed status (never NULL). */
const char *gpu_error_hint(GpuLib lib, int status);
/* 1 when the status means "out of memory" (device or host), else 0. */
int gpu_status_is_oom(GpuLib lib, int status);
/* Writes the full two-line message shown above into buf (always NUL-terminated when n > 0).
 * Returns what snprintf returns. `expr` may be NULL (the "call `...`" part is left out). */
int gpu_format_error(char *buf, size_t n, GpuLib lib, int status, const char *expr,
                     const char *file, int line);
/* Prints the message (and, for out of memory, the memory report) and exits. */
void gpu_check_failed(GpuLib lib, int status, const char *expr, const char *file, int line)
    __attribute__((noreturn));

#ifdef __cplusplus
}
#endif

#define DETR_GPU_CHECK(lib, call)                                                        \
    do {                                                                                 \
        int detr_gpu_status_ = (int)(call);                                              \
        if (detr_gpu_status_ != 0)                                                       \
            gpu_check_failed((lib), detr_gpu_status_, #call, __FILE__, __LINE__);         \
    } while (0)

#define cudaCheck(call) DETR_GPU_CHECK(GPU_LIB_CUDA, call)
#define cublasCheck(call) DETR_GPU_CHECK(GPU_LIB_CUBLAS, call)
#define cudnnCheck(call) DETR_GPU_CHECK(GPU_LIB_CUDNN, call)
#define ncclCheck(call) DETR_GPU_CHECK(GPU_LIB_NCCL, call)
#define cuptiCheck(call) DETR_GPU_CHECK(GPU_LIB_CUPTI, call)

#endif
