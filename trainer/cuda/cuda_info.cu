/* cuda_info.cu - CUDA library versions, GPU listing and the start-up compatibility checks
 * behind version_print() / version_check_runtime() (see cuda_info.h). Host code only.
 *
 * Every call here works without a GPU and without a driver: libcudart loads libcuda.so.1
 * lazily, cudaDriverGetVersion() then reports 0, and the other libraries' version queries
 * need no device. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cuda_runtime_api.h>
#include <cublas_v2.h>
#include <cudnn.h>
#include <cupti.h>
#include <nccl.h>
#include "cuda_check.h"
#include "cuda_info.h"

#ifndef DETR_CUDA_ARCHS
#error "DETR_CUDA_ARCHS (the compute capabilities compiled, e.g. \"80 90\") must be defined"
#endif

const char *cuda_info_archs(void) { return DETR_CUDA_ARCHS; }

/* SASS for sm_XY runs on compute capability X.y with y >= Y (same major version). */
int cuda_info_arch_supported(int major, int minor) {
    const char *s = DETR_CUDA_ARCHS;
    while (*s) {
        char *end = NULL;
        long cc = strtol(s, &end, 10);
        if (end == s) {
            s++;
            continue;
        }
        if (cc / 10 == major && cc % 10 <= minor) return 1;
        s = end;
    }
    return 0;
}

/* 0 when no driver is installed (libcuda.so.1 missing) or it cannot be queried. */
static int driver_version(void) {
    int v = 0;
    if (cudaDriverGetVersion(&v) != cudaSuccess) v = 0;
    return v;
}

static int runtime_version(void) {
    int v = 0;
    if (cudaRuntimeGetVersion(&v) != cudaSuccess) v = 0;
    return v;
}

/* CUDA's version numbers are 1000 * major + 10 * minor. */
static void format_cuda_version(char *buf, size_t n, int v) {
    snprintf(buf, n, "%d.%d", v / 1000, (v % 1000) / 10);
}

int cuda_info_device_count(void) {
    if (driver_version() == 0) return 0;
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError(); /* clear it: "no GPU" is not an error for CPU runs */
        return 0;
    }
    return n;
}

static void print_label(FILE *f, int width, const char *label) {
    fprintf(f, "  %-*s ", width, label);
}

static void print_runtime_and_driver(FILE *f, int w) {
    char rt[32], hdr[32], drv[32];
    format_cuda_version(rt, sizeof rt, runtime_version());
    format_cuda_version(hdr, sizeof hdr, CUDART_VERSION);
    print_label(f, w, "CUDA runtime");
    fprintf(f, "%s (headers %s)\n", rt, hdr);

    print_label(f, w, "CUDA driver");
    int d = driver_version();
    if (d == 0) {
        fprintf(f, "no driver (libcuda.so.1 not found: GPUs unavailable, CPU runs unaffected)\n");
    } else {
        format_cuda_version(drv, sizeof drv, d);
        fprintf(f, "supports CUDA %s\n", drv);
    }
    print_label(f, w, "nvcc");
    fprintf(f, "%d.%d.%d, GPU code for compute capability %s\n", __CUDACC_VER_MAJOR__,
            __CUDACC_VER_MINOR__, __CUDACC_VER_BUILD__, DETR_CUDA_ARCHS);
}

static void print_cudnn(FILE *f, int w) {
    size_t v = cudnnGetVersion(); /* 10000 * major + 100 * minor + patch (cuDNN 9) */
    char built_for[32];
    format_cuda_version(built_for, sizeof built_for, (int)cudnnGetCudartVersion());
    print_label(f, w, "cuDNN");
    fprintf(f, "%zu.%zu.%zu (headers %d.%d.%d, built for CUDA %s)\n", v / 10000, v % 10000 / 100,
            v % 100, CUDNN_MAJOR, CUDNN_MINOR, CUDNN_PATCHLEVEL, built_for);
}

static void print_cublas(FILE *f, int w) {
    int major = -1, minor = -1, patch = -1;
    print_label(f, w, "cuBLAS");
    if (cublasGetProperty(MAJOR_VERSION, &major) != CUBLAS_STATUS_SUCCESS ||
        cublasGetProperty(MINOR_VERSION, &minor) != CUBLAS_STATUS_SUCCESS ||
        cublasGetProperty(PATCH_LEVEL, &patch) != CUBLAS_STATUS_SUCCESS) {
        fprintf(f, "unknown (cublasGetProperty failed; headers %d.%d.%d)\n", CUBLAS_VER_MAJOR,
                CUBLAS_VER_MINOR, CUBLAS_VER_PATCH);
        return;
    }
    fprintf(f, "%d.%d.%d (headers %d.%d.%d)\n", major, minor, patch, CUBLAS_VER_MAJOR,
            CUBLAS_VER_MINOR, CUBLAS_VER_PATCH);
}

static void print_cupti(FILE *f, int w) {
    uint32_t v = 0;
    print_label(f, w, "CUPTI");
    if (cuptiGetVersion(&v) != CUPTI_SUCCESS) {
        fprintf(f, "unknown (cuptiGetVersion failed; headers API %d)\n", CUPTI_API_VERSION);
        return;
    }
    fprintf(f, "API version %u (headers %d)\n", (unsigned)v, CUPTI_API_VERSION);
}

/* NCCL >= 2.9 encodes 10000 * major + 100 * minor + patch; older ones 1000 * major + ... */
static void format_nccl_version(char *buf, size_t n, int v) {
    if (v >= 10000)
        snprintf(buf, n, "%d.%d.%d", v / 10000, v % 10000 / 100, v % 100);
    else
        snprintf(buf, n, "%d.%d.%d", v / 1000, v % 1000 / 100, v % 100);
}

static void print_nccl(FILE *f, int w) {
    int v = 0;
    char run[32], hdr[32];
    print_label(f, w, "NCCL");
    format_nccl_version(hdr, sizeof hdr, NCCL_VERSION_CODE);
    if (ncclGetVersion(&v) != ncclSuccess) {
        fprintf(f, "unknown (ncclGetVersion failed; headers %s)\n", hdr);
        return;
    }
    format_nccl_version(run, sizeof run, v);
    fprintf(f, "%s (headers %s)\n", run, hdr);
}

static void print_gpus(FILE *f, int w) {
    int n = cuda_info_device_count();
    if (n == 0) {
        print_label(f, w, "GPUs");
        fprintf(f, "none (%s)\n", driver_version() == 0 ? "no driver" : "the driver sees no GPU");
        return;
    }
    for (int d = 0; d < n; d++) {
        char label[32];
        snprintf(label, sizeof label, "GPU %d", d);
        print_label(f, w, label);
        cudaDeviceProp p;
        cudaError_t e = cudaGetDeviceProperties(&p, d);
        if (e != cudaSuccess) {
            (void)cudaGetLastError();
            fprintf(f, "unreadable (%s: %s)\n", cudaGetErrorName(e), cudaGetErrorString(e));
            continue;
        }
        fprintf(f, "%s, %.1f GiB, compute capability %d.%d, %d SMs%s\n", p.name,
                (double)p.totalGlobalMem / (1024.0 * 1024.0 * 1024.0), p.major, p.minor,
                p.multiProcessorCount,
                cuda_info_arch_supported(p.major, p.minor)
                    ? ""
                    : " (NOT supported by this build: rebuild with CUDA_ARCHS)");
    }
}

void cuda_info_print(FILE *f, int label_width) {
    print_runtime_and_driver(f, label_width);
    print_cudnn(f, label_width);
    print_cublas(f, label_width);
    print_cupti(f, label_width);
    print_nccl(f, label_width);
    print_gpus(f, label_width);
}

/* ---- start-up checks ---- */

/* The driver must support the runtime's CUDA major version (within one major version, CUDA's
 * minor-version compatibility lets an older driver run a newer runtime). */
static int check_driver(char *err, size_t errlen) {
    int drv = driver_version(), rt = runtime_version();
    if (drv == 0) return 0; /* no driver: CPU runs are fine; GPU selection says "no GPU" */
    char drv_s[32], rt_s[32];
    format_cuda_version(drv_s, sizeof drv_s, drv);
    format_cuda_version(rt_s, sizeof rt_s, rt);
    if (drv / 1000 < rt / 1000) {
        snprintf(err, errlen,
                 "error: the NVIDIA driver supports CUDA up to %s, older than this build's CUDA "
                 "runtime %s (%s: %s)\nHINT: update the NVIDIA driver to one for CUDA %d.x or "
                 "newer, or run with --device cpu.\n",
                 drv_s, rt_s, cudaGetErrorName(cudaErrorInsufficientDriver),
                 cudaGetErrorString(cudaErrorInsufficientDriver), rt / 1000);
        return -1;
    }
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e == cudaErrorInsufficientDriver || e == cudaErrorSystemDriverMismatch ||
        e == cudaErrorCompatNotSupportedOnDevice) {
        gpu_format_error(err, errlen, GPU_LIB_CUDA, (int)e, "cudaGetDeviceCount(&n)", __FILE__,
                         __LINE__);
        return -1;
    }
    if (e != cudaSuccess) (void)cudaGetLastError(); /* e.g. no device: not an error here */
    return 0;
}

/* The loaded cuDNN must have the headers' major version and the runtime's CUDA major. */
static int check_cudnn(char *err, size_t errlen) {
    size_t v = cudnnGetVersion();
    if (v / 10000 != (size_t)CUDNN_MAJOR) {
        snprintf(err, errlen,
                 "error: cuDNN %zu.%zu.%zu was loaded at run time, but this build was compiled "
                 "with cuDNN %d.%d.%d headers (major version %d)\nHINT: make the loader find "
                 "cuDNN %d (`ldd build/detr-train | grep cudnn` shows which libcudnn is used; "
                 "check LD_LIBRARY_PATH), or rebuild against the installed cuDNN.\n",
                 v / 10000, v % 10000 / 100, v % 100, CUDNN_MAJOR, CUDNN_MINOR, CUDNN_PATCHLEVEL,
                 CUDNN_MAJOR, CUDNN_MAJOR);
        return -1;
    }
    int built_for = (int)cudnnGetCudartVersion(), rt = runtime_version();
    if (built_for / 1000 != rt / 1000) {
        snprintf(err, errlen,
                 "error: the loaded cuDNN was built for CUDA %d.x but the CUDA runtime is %d.x\n"
                 "HINT: install the cuDNN package for CUDA %d (e.g. the cu%d build).\n",
                 built_for / 1000, rt / 1000, rt / 1000, rt / 1000);
        return -1;
    }
    return 0;
}

int cuda_info_check_runtime(char *err, size_t errlen) {
    char scratch[1];
    if (!err || errlen == 0) {
        err = scratch;
        errlen = sizeof scratch;
    }
    err[0] = '\0';
    if (check_driver(err, errlen) != 0) return -1;
    if (check_cudnn(err, errlen) != 0) return -1;
    return 0;
}
