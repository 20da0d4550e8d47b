/* cuda_input.h - the GPU side of the uint8 data path (trainer/input_batch.h): host-to-device
 * copies of a uint8 batch on a dedicated copy stream, overlapping with whatever the compute
 * stream (cuda_stream()) is still running, and the normalise + transpose kernel on the compute
 * stream, which waits for the copy through an event.
 *
 * One CudaInput per micro-batch slot. Its buffers are reused from step to step, so the order is
 * enforced with events:
 *   copy_done  recorded on the copy stream after the copies; the compute stream waits on it
 *              before the kernel, and the host (cuda_input_wait_copied) before the loader slot
 *              the copy read from is released;
 *   consumed   recorded on the compute stream after the kernel; the copy stream waits on it
 *              before the next copy overwrites the device buffers the kernel reads.
 * The copy is asynchronous only from page-locked memory (the loader's slots with --device cuda);
 * from ordinary memory the driver stages it and it is (correctly) slower.
 * The CUDA build only (make CUDA=1, -DDETR_CUDA). */
#ifndef DETR_CUDA_INPUT_H
#define DETR_CUDA_INPUT_H
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct CudaInput CudaInput;

/* Creates the copy stream and events (needs cuda_device_init). Exits with the CUDA message on
 * failure, as every cudaCheck. */
CudaInput *cuda_input_create(void);
/* Waits for its copies and kernels, frees its buffers, stream and events. NULL is a no-op. */
void cuda_input_destroy(CudaInput *ci);

/* Starts the copies of one batch: images_u8 host [B, 3, H, W] RGB, mask host [B, H, W]
 * (1 = padding), into the CudaInput's device buffers (grown when the batch is larger). Both host
 * buffers must stay untouched until cuda_input_wait_copied returns. */
void cuda_input_upload_async(CudaInput *ci, const uint8_t *images_u8, const uint8_t *mask, int B,
                             int H, int W);
/* On the compute stream, after the last upload's copies: out device [3, B, H, W] =
 * (v / 255 - mean[c]) / std[c] in float32 with the CPU's rounding (no contraction), 0 where
 * the mask is 1. Returns at once (asynchronous). */
void cuda_input_normalise(CudaInput *ci, float *out, const float mean[3], const float std[3]);
/* Blocks until the last upload's copies are done; returns their GPU time in nanoseconds (from
 * the copy stream's events), 0 when no upload happened since the last call. */
int64_t cuda_input_wait_copied(CudaInput *ci);

#ifdef __cplusplus
}
#endif

#endif
