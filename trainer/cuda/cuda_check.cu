/* cuda_check.cu - the implementation behind cudaCheck / cublasCheck / cudnnCheck / ncclCheck /
 * cuptiCheck (cuda_check.h): the library's own name and message for a status, a HINT the user
 * can act on, and the exit (EXIT_OOM for out of memory, 1 otherwise). Host code only. */
#include <stdio.h>
#include <stdlib.h>
#include <cuda_runtime_api.h>
#include <cublas_v2.h>
#include <cudnn.h>
#include <cupti.h>
#include <nccl.h>
#include "cuda_check.h"
extern "C" {
#include "mem.h" /* a C header without C++ guards of its own */
}

static const char *const HINT_OOM =
    "the GPU is out of memory: lower --batch or the image size (detr-prof sweep finds what "
    "fits), or free the GPU from other processes (see nvidia-smi).";
static const char *const HINT_KERNEL_FAULT =
    "a GPU kernel faulted and the CUDA context is now unusable: rerun under compute-sanitizer "
    "with CUDA_LAUNCH_BLOCKING=1 to find the kernel.";
static const char *const HINT_ARCH =
    "this build has no GPU code for this GPU's architecture: rebuild with make CUDA=1 "
    "CUDA_ARCHS=\"<compute capability without the dot, e.g. 86>\" (detr-train --version shows "
    "it).";

const char *gpu_lib_name(GpuLib lib) {
    switch (lib) {
    case GPU_LIB_CUDA: return "CUDA";
    case GPU_LIB_CUBLAS: return "cuBLAS";
    case GPU_LIB_CUDNN: return "cuDNN";
    case GPU_LIB_NCCL: return "NCCL";
    case GPU_LIB_CUPTI: return "CUPTI";
    }
    return "GPU library";
}

/* ---- status name and message, as each library spells them ---- */

static const char *nccl_status_name(int status) {
    switch (status) {
    case ncclUnhandledCudaError: return "ncclUnhandledCudaError";
    case ncclSystemError: return "ncclSystemError";
    case ncclInternalError: return "ncclInternalError";
    case ncclInvalidArgument: return "ncclInvalidArgument";
    case ncclInvalidUsage: return "ncclInvalidUsage";
    case ncclRemoteError: return "ncclRemoteError";
    case ncclInProgress: return "ncclInProgress";
    default: return "ncclResult";
    }
}

/* cuDNN 9 has names only; its status codes are grouped by thousands into categories. */
static const char *cudnn_category_message(int status) {
    switch (status / 1000) {
    case 1: return "cuDNN could not run (initialisation, versions or licence)";
    case 2: return "bad parameter";
    case 3: return "not supported";
    case 4: return "internal error";
    case 5: return "execution failed";
    default: return "unknown cuDNN status";
    }
}

static const char *status_name(GpuLib lib, int status) {
    const char *s = NULL;
    switch (lib) {
    case GPU_LIB_CUDA: s = cudaGetErrorName((cudaError_t)status); break;
    case GPU_LIB_CUBLAS: s = cublasGetStatusName((cublasStatus_t)status); break;
    case GPU_LIB_CUDNN: s = cudnnGetErrorString((cudnnStatus_t)status); break;
    case GPU_LIB_NCCL: s = nccl_status_name(status); break;
    case GPU_LIB_CUPTI:
        if (cuptiGetResultString((CUptiResult)status, &s) != CUPTI_SUCCESS) s = NULL;
        break;
    }
    return s ? s : "unknown status";
}

static const char *status_message(GpuLib lib, int status) {
    const char *s = NULL;
    switch (lib) {
    case GPU_LIB_CUDA: s = cudaGetErrorString((cudaError_t)status); break;
    case GPU_LIB_CUBLAS: s = cublasGetStatusString((cublasStatus_t)status); break;
    case GPU_LIB_CUDNN: s = cudnn_category_message(status); break;
    case GPU_LIB_NCCL: s = ncclGetErrorString((ncclResult_t)status); break;
    case GPU_LIB_CUPTI:
        if (cuptiGetErrorMessage((CUptiResult)status, &s) != CUPTI_SUCCESS) s = NULL;
        break;
    }
    return s ? s : "no message";
}

/* ---- hints ---- */

static const char *cuda_hint(int status) {
    switch ((cudaError_t)status) {
    case cudaErrorMemoryAllocation: return HINT_OOM;
    case cudaErrorInsufficientDriver:
        return "no NVIDIA driver was found, or it is older than the CUDA runtime of this build "
               "(detr-train --version shows both): install or update the driver (nvidia-smi "
               "shows it), or run with --device cpu.";
    case cudaErrorNoDevice:
        return "no CUDA GPU is visible: check nvidia-smi and CUDA_VISIBLE_DEVICES, or run with "
               "--device cpu.";
    case cudaErrorInvalidDevice:
        return "the GPU index is out of range: detr-train --version lists the GPUs found "
               "(CUDA_VISIBLE_DEVICES renumbers them).";
    case cudaErrorNoKernelImageForDevice:
    case cudaErrorUnsupportedPtxVersion:
    case cudaErrorInvalidKernelImage: return HINT_ARCH;
    case cudaErrorSystemDriverMismatch:
    case cudaErrorCompatNotSupportedOnDevice:
        return "the NVIDIA kernel module and the user-space driver (libcuda.so) differ in "
               "version: reinstall the driver or reboot.";
    case cudaErrorDevicesUnavailable:
        return "the GPU is busy or in exclusive-process compute mode (nvidia-smi -q shows the "
               "compute mode): stop the other process or pick another GPU.";
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchFailure:
    case cudaErrorMisalignedAddress:
    case cudaErrorIllegalInstruction:
    case cudaErrorHardwareStackError: return HINT_KERNEL_FAULT;
    case cudaErrorLaunchOutOfResources:
    case cudaErrorInvalidConfiguration:
        return "a kernel launch asked for more threads, registers or shared memory than the "
               "GPU has: a bug in the launch configuration.";
    case cudaErrorECCUncorrectable:
        return "the GPU reported an uncorrectable ECC memory error: check nvidia-smi -q; the "
               "GPU may need a reset.";
    default:
        return "rerun with CUDA_LAUNCH_BLOCKING=1 so the error stops at the failing call "
               "(errors are reported by a later call than the kernel that caused them).";
    }
}

static const char *cublas_hint(int status) {
    switch ((cublasStatus_t)status) {
    case CUBLAS_STATUS_ALLOC_FAILED: return HINT_OOM;
    case CUBLAS_STATUS_NOT_INITIALIZED:
        return "cuBLAS could not start: the GPU or driver is not usable (detr-train --version "
               "shows what was found).";
    case CUBLAS_STATUS_INVALID_VALUE:
        return "a cuBLAS argument is invalid (a dimension, leading dimension or stride): a bug "
               "in the calling code.";
    case CUBLAS_STATUS_ARCH_MISMATCH:
        return "this GPU lacks a feature the call needs (its compute capability is too low).";
    case CUBLAS_STATUS_EXECUTION_FAILED: return HINT_KERNEL_FAULT;
    case CUBLAS_STATUS_NOT_SUPPORTED:
        return "cuBLAS does not support this combination of types, layouts or sizes.";
    default: return "rerun with CUDA_LAUNCH_BLOCKING=1 and CUBLAS_LOGINFO_DBG=1 for details.";
    }
}

static const char *cudnn_hint(int status) {
    switch ((cudnnStatus_t)status) {
    case CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED: return HINT_OOM;
    case CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED:
        return "the host is out of memory: lower --batch or --workers.";
    case CUDNN_STATUS_NOT_INITIALIZED:
        return "cuDNN could not start: the GPU or driver is not usable (detr-train --version "
               "shows what was found).";
    case CUDNN_STATUS_SUBLIBRARY_VERSION_MISMATCH:
    case CUDNN_STATUS_SUBLIBRARY_LOADING_FAILED:
        return "cuDNN's sub-libraries (libcudnn_*.so.9) are missing or of mixed versions: check "
               "LD_LIBRARY_PATH and `ldd build/detr-train`.";
    case CUDNN_STATUS_NOT_SUPPORTED_INCOMPATIBLE_CUDA_DRIVER:
    case CUDNN_STATUS_NOT_SUPPORTED_INCOMPATIBLE_CUDART:
        return "this cuDNN needs a newer NVIDIA driver or CUDA runtime: update the driver, or "
               "install the cuDNN build for this CUDA version.";
    case CUDNN_STATUS_NOT_SUPPORTED_ARCH_MISMATCH:
        return "this cuDNN does not support this GPU's architecture.";
    default: break;
    }
    if (status >= 2000 && status < 3000)
        return "a bad argument to cuDNN (descriptor, shape or pointer): a bug in the calling code.";
    if (status >= 3000 && status < 4000)
        return "cuDNN has no engine for this configuration on this GPU (shape, layout or type).";
    if (status >= 5000 && status < 6000) return HINT_KERNEL_FAULT;
    return "set CUDNN_LOGERR_DBG=1 CUDNN_LOGDEST_DBG=stderr for cuDNN's own log.";
}

static const char *nccl_hint(int status) {
    switch ((ncclResult_t)status) {
    case ncclUnhandledCudaError:
        return "a CUDA call inside NCCL failed: rerun with NCCL_DEBUG=WARN to see it.";
    case ncclSystemError:
        return "a system call inside NCCL failed (network, /dev/shm size, permissions): rerun "
               "with NCCL_DEBUG=INFO.";
    case ncclInvalidArgument:
    case ncclInvalidUsage:
        return "NCCL was called with invalid arguments or in the wrong order: a bug in the "
               "calling code (NCCL_DEBUG=WARN says which).";
    default: return "rerun with NCCL_DEBUG=INFO for NCCL's own log.";
    }
}

static const char *cupti_hint(int status) {
    switch ((CUptiResult)status) {
    case CUPTI_ERROR_OUT_OF_MEMORY:
        return "CUPTI ran out of memory for its activity buffers: profile fewer steps.";
    case CUPTI_ERROR_INSUFFICIENT_PRIVILEGES:
        return "reading GPU counters needs permission: run as root or load the driver with "
               "NVreg_RestrictProfilingToAdminUsers=0, or profile without GPU counters.";
    case CUPTI_ERROR_NOT_COMPATIBLE:
        return "another profiler (Nsight Systems or Compute) already uses CUPTI: run one at a "
               "time.";
    default:
        return "GPU profiling could not start: run without --profile GPU activity (CPU-side "
               "timings still work).";
    }
}

const char *gpu_error_hint(GpuLib lib, int status) {
    switch (lib) {
    case GPU_LIB_CUDA: return cuda_hint(status);
    case GPU_LIB_CUBLAS: return cublas_hint(status);
    case GPU_LIB_CUDNN: return cudnn_hint(status);
    case GPU_LIB_NCCL: return nccl_hint(status);
    case GPU_LIB_CUPTI: return cupti_hint(status);
    }
    return "no advice for this library.";
}

int gpu_status_is_oom(GpuLib lib, int status) {
    switch (lib) {
    case GPU_LIB_CUDA: return status == cudaErrorMemoryAllocation;
    case GPU_LIB_CUBLAS: return status == CUBLAS_STATUS_ALLOC_FAILED;
    case GPU_LIB_CUDNN:
        return status == CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED ||
               status == CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED;
    case GPU_LIB_NCCL: return 0;
    case GPU_LIB_CUPTI: return status == CUPTI_ERROR_OUT_OF_MEMORY;
    }
    return 0;
}

int gpu_format_error(char *buf, size_t n, GpuLib lib, int status, const char *expr,
                     const char *file, int line) {
    const char *name = status_name(lib, status);
    const char *msg = status_message(lib, status);
    const char *hint = gpu_error_hint(lib, status);
    if (expr)
        return snprintf(buf, n, "error: %s call `%s` failed at %s:%d: %s (%d): %s\nHINT: %s\n",
                        gpu_lib_name(lib), expr, file, line, name, status, msg, hint);
    return snprintf(buf, n, "error: %s failed at %s:%d: %s (%d): %s\nHINT: %s\n",
                    gpu_lib_name(lib), file, line, name, status, msg, hint);
}

void gpu_check_failed(GpuLib lib, int status, const char *expr, const char *file, int line) {
    char msg[2048];
    gpu_format_error(msg, sizeof msg, lib, status, expr, file, line);
    fputs(msg, stderr);
    if (lib == GPU_LIB_CUDNN) {
        /* cuDNN 9 keeps a detailed message of the last failure per thread. */
        char detail[1024] = "";
        cudnnGetLastErrorString(detail, sizeof detail);
        if (detail[0]) fprintf(stderr, "cuDNN says: %s\n", detail);
    }
    if (gpu_status_is_oom(lib, status)) {
        fprintf(stderr, "memory charged by this process, by category:\n");
        mem_print_report(stderr);
        fflush(stderr);
        exit(EXIT_OOM);
    }
    fflush(stderr);
    exit(EXIT_FAILURE);
}
