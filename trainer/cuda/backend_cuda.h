/* backend_cuda.h - device selection and the memory part of the CUDA backend's Backend table
 * (backend.h; the table itself is backend_cuda() in backend_cuda_table.h), with every byte
 * charged to a mem.h category. These functions have the signatures of the Backend memory slots.
 *
 * Device memory comes from a caching allocator (cuda_alloc_core.h: 512-byte rounding, small and
 * large pools per category, splitting, cached free blocks, PyTorch-like statistics), so freeing
 * and allocating again in every step costs no cudaMalloc/cudaFree.
 *
 * Semantics (all in the current device, on one stream in issue order):
 *  - upload and download return when the bytes have arrived (host buffers may be reused);
 *  - copy and fill are asynchronous; cuda_synchronize() waits for them;
 *  - device out of memory (after releasing the cache and retrying once): the PyTorch-style
 *    explanation (requested, the card's total and free, reserved/allocated per category,
 *    reserved but unallocated) and exit(EXIT_OOM); a refused --mem-limit budget prints the same
 *    explanation and then behaves as host_alloc (mem.h report + EXIT_OOM, or NULL when
 *    exit_on_oom is off). --mem-limit also caps the allocator's reserved bytes, so it acts like a
 *    card of that size.
 * Any other CUDA failure prints the library message and a HINT (cuda_check.h) and exits 1.
 * The CUDA build only (make CUDA=1, -DDETR_CUDA). */
#ifndef DETR_BACKEND_CUDA_H
#define DETR_BACKEND_CUDA_H
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif
#include "mem.h" /* inside extern "C": mem.h has no C++ guards of its own */
#include <stdio.h>
#include "cuda_alloc_core.h"

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
/* Number of device blocks currently handed out through these functions (leak checks). */
size_t cuda_live_blocks(void);
/* The allocator's statistics per category and in total (allocated, reserved, requested with
 * peaks, retries, OOMs), as torch.cuda.memory_stats(). */
DevCacheStats cuda_memory_stats(void);
void cuda_reset_peak_memory_stats(void);
/* Returns every cached free segment to the GPU (torch.cuda.empty_cache()); returns the bytes. */
size_t cuda_empty_cache(void);
/* The statistics as a table, one line per category. */
void cuda_print_memory_stats(FILE *f);

/* Pinned (page-locked) host memory, for the loader's batch slots (LoaderConfig.alloc_host /
 * free_host, which charge MEM_INPUTS themselves, so these charge nothing): uploads from it run
 * at full PCIe speed. Needs the CUDA context (cuda_device_init first). NULL, with a message,
 * when no pinned memory is left. */
void *cuda_host_alloc_pinned(size_t bytes);
void cuda_host_free_pinned(void *p);

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
