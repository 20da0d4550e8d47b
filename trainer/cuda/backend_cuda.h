/* backend_cuda.h - what the CUDA backend has so far: device selection and the memory part of
 * the Backend table (backend.h), with every byte charged to a mem.h category.
 *
 * There is deliberately no `const Backend *backend_cuda(void)` yet: the compute ops (conv,
 * GEMM, attention, ...) are the CUDA backend issue's work, and a table with missing ops would
 * claim what does not exist. These functions have the signatures of the Backend memory slots,
 * so that table will point at them directly.
 *
 * Semantics (all in the current device, on one stream in issue order):
 *  - upload and download return when the bytes have arrived (host buffers may be reused);
 *  - copy and fill are asynchronous; cuda_synchronize() waits for them;
 *  - device out of memory: the mem.h-style report and exit(EXIT_OOM); a refused --mem-limit
 *    budget behaves as host_alloc (report + EXIT_OOM, or NULL when exit_on_oom is off).
 * Any other CUDA failure prints the library message and a HINT (cuda_check.h) and exits 1.
 * The CUDA build only (make CUDA=1, -DDETR_CUDA). */
#ifndef DETR_BACKEND_CUDA_H
#define DETR_BACKEND_CUDA_H
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif
#include "mem.h" /* inside extern "C": mem.h has no C++ guards of its own */

/* Selects GPU `device` (0-based, as renumbered by CUDA_VISIBLE_DEVICES), creates its context
 * and the stream every op uses, and checks that this build has GPU code for it. Returns 0, or
 * -1 with a complete message in err ("error: ...\nHINT: ...\n"): no driver, no GPU, index out
 * of range, unsupported architecture, or the CUDA error text. Calling it again with the same
 * device is a no-op; another device after a successful init is refused. */
int cuda_device_init(int device, char *err, size_t errlen);
/* The device selected by cuda_device_init(), or -1. */
int cuda_current_device(void);

/* Device memory charged to `cat`. Sizes of 0 give NULL (freeing NULL is a no-op). */
float *cuda_alloc(MemCategory cat, size_t nfloats);   /* [nfloats] */
void cuda_free(float *p);
void *cuda_alloc_bytes(MemCategory cat, size_t bytes);
void cuda_free_bytes(void *p);
/* As cuda_alloc_bytes, but device out-of-memory returns NULL (nothing charged, no exit):
 * for callers that can fall back, such as a batch-size search. */
void *cuda_try_alloc_bytes(MemCategory cat, size_t bytes);
/* Number of device blocks currently allocated through these functions (leak checks). */
size_t cuda_live_blocks(void);

void cuda_upload(void *dst, const void *src_host, size_t bytes);   /* host -> device */
void cuda_download(void *dst_host, const void *src, size_t bytes); /* device -> host */
void cuda_copy(float *dst, const float *src, size_t n);           /* device -> device, n floats */
void cuda_fill(float *x, float value, size_t n);                  /* x[0..n) = value */
void cuda_synchronize(void);

#ifdef __cplusplus
}
#endif

#ifdef __CUDACC__
#include <cuda_runtime_api.h>
/* The stream every op of the CUDA backend is issued on (0, the legacy default stream, until
 * cuda_device_init() has run). */
cudaStream_t cuda_stream(void);
#endif

#endif
