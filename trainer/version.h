/* version.h - the project version, the versions of every linked library, and the start-up
 * compatibility checks (CUDA driver vs runtime, cuDNN major version).
 *
 * The CPU-only build (make CUDA=0) references no CUDA symbol: the CUDA parts live in
 * trainer/cuda/cuda_info.cu, which version.c calls only when built with -DDETR_CUDA. */
#ifndef DETR_VERSION_H
#define DETR_VERSION_H
#include <stddef.h>
#include <stdio.h>

#define DETR_VERSION "0.1.0"

/* Prints the project version, the compiler, OpenMP, and one line per linked library:
 * "  <name padded> <version> (<details>)". With CUDA built it adds the CUDA runtime, driver
 * ("no driver" when none is installed), cuDNN, cuBLAS, CUPTI, NCCL and every GPU found. */
void version_print(FILE *f);

/* Start-up compatibility checks. Returns 0 when everything the build needs is consistent,
 * -1 otherwise with a complete message in err ("error: ...\nHINT: ...\n").
 *  - CUDA built, driver present but older (CUDA major version) than the runtime: error.
 *  - CUDA built, cuDNN loaded at run time has another major version than the headers: error.
 *  - No NVIDIA driver at all is NOT an error (CPU runs work; selecting a GPU later reports
 *    "no GPU"). Without a CUDA build the checks always pass.
 *  - OpenBLAS not the OpenMP-threaded build: a warning on stderr only (returns 0).
 * Callers treat -1 as fatal for GPU runs; for --device cpu they may print it as a warning. */
int version_check_runtime(char *err, size_t errlen);

/* Number of usable CUDA GPUs: 0 without a CUDA build, without a driver or without a GPU. */
int version_cuda_device_count(void);

#endif
