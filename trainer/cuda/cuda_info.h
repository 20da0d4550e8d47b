/* cuda_info.h - versions of the CUDA libraries and the GPUs, for version.c. Plain C API;
 * the definitions (cuda_info.cu) exist only in the CUDA build (make CUDA=1, -DDETR_CUDA). */
#ifndef DETR_CUDA_INFO_H
#define DETR_CUDA_INFO_H
#include <stddef.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Prints the CUDA lines of version_print(): runtime, driver, nvcc and GPU code, cuDNN,
 * cuBLAS, CUPTI, NCCL, and one line per GPU (name, memory, compute capability). Never fails:
 * a missing driver prints "no driver". `label_width` pads the names like version.c does. */
void cuda_info_print(FILE *f, int label_width);

/* See version_check_runtime() in version.h. */
int cuda_info_check_runtime(char *err, size_t errlen);

/* GPUs the runtime sees; 0 without driver or GPU (never an error). */
int cuda_info_device_count(void);

/* The compute capabilities this build has GPU code for, as given to make: e.g. "80 90". */
const char *cuda_info_archs(void);
/* 1 when a GPU of compute capability major.minor can run this build's GPU code (code for
 * sm_XY runs on X.y with y >= Y), else 0. */
int cuda_info_arch_supported(int major, int minor);

#ifdef __cplusplus
}
#endif
#endif
