/* backend_cuda_table.h - the CUDA backend's op table (backend.h): the memory functions of
 * backend_cuda.h and the compute ops of cuda_ops.h, assembled in backend_cuda_table.cu.
 * Call cuda_device_init() before the first op: the table is only pointers, and the ops run on
 * the device and stream it selects. CUDA build only (-DDETR_CUDA). */
#ifndef DETR_BACKEND_CUDA_TABLE_H
#define DETR_BACKEND_CUDA_TABLE_H
#include "../backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The CUDA backend: float32 on the GPU, cuDNN convolutions, cuBLAS GEMMs, own kernels. */
const Backend *backend_cuda(void);

#ifdef __cplusplus
}
#endif
#endif
