/* cuda_input.cu - see cuda_input.h. */
#include "cuda_input.h"
#include <stdlib.h>
#include <nvtx3/nvToolsExtCudaRt.h>
#include "cuda_kernels_internal.h"

struct CudaInput {
    cudaStream_t copy;       /* the copy stream (non-blocking: never waits for the legacy stream) */
    cudaEvent_t copy_start;  /* on copy, before the copies (timing) */
    cudaEvent_t copy_done;   /* on copy, after the copies (timing; compute and host wait on it) */
    cudaEvent_t consumed;    /* on the compute stream after the kernel that read the buffers */
    uint8_t *images;         /* device [B, 3, H, W] uint8, capacity images_cap bytes */
    uint8_t *mask;           /* device [B, H, W] uint8 (1 = padding), capacity mask_cap bytes */
    size_t images_cap, mask_cap;
    int B, H, W;             /* shape of the last upload (0 before the first) */
    int pending;             /* an upload whose copies nobody has waited for yet */
};

CudaInput *cuda_input_create(void) {
    CudaInput *ci = (CudaInput *)calloc(1, sizeof(CudaInput));
    if (!ci) {
        fprintf(stderr, "error: cuda_input_create: out of host memory\n");
        exit(1);
    }
    cudaCheck(cudaStreamCreateWithFlags(&ci->copy, cudaStreamNonBlocking));
    nvtxNameCudaStreamA(ci->copy, "detr h2d copy");
    cudaCheck(cudaEventCreate(&ci->copy_start));
    cudaCheck(cudaEventCreate(&ci->copy_done));
    cudaCheck(cudaEventCreateWithFlags(&ci->consumed, cudaEventDisableTiming));
    return ci;
}

/* Both streams are done with the device buffers (an event never recorded counts as done). */
static void wait_idle(CudaInput *ci) {
    cudaCheck(cudaStreamSynchronize(ci->copy));
    cudaCheck(cudaEventSynchronize(ci->consumed));
}

void cuda_input_destroy(CudaInput *ci) {
    if (!ci) return;
    wait_idle(ci);
    cuda_free_bytes(ci->images);
    cuda_free_bytes(ci->mask);
    cudaCheck(cudaEventDestroy(ci->copy_start));
    cudaCheck(cudaEventDestroy(ci->copy_done));
    cudaCheck(cudaEventDestroy(ci->consumed));
    cudaCheck(cudaStreamDestroy(ci->copy));
    free(ci);
}

/* Grows *buf to at least `bytes` (contents dropped); the caller has waited for both streams. */
static void ensure_capacity(uint8_t **buf, size_t *cap, size_t bytes) {
    if (bytes <= *cap) return;
    cuda_free_bytes(*buf);
    *buf = (uint8_t *)cuda_alloc_bytes(MEM_INPUTS, bytes);
    *cap = bytes;
}

void cuda_input_upload_async(CudaInput *ci, const uint8_t *images_u8, const uint8_t *mask, int B,
                             int H, int W) {
    if (B < 1 || H < 1 || W < 1) {
        fprintf(stderr, "error: cuda_input_upload_async: empty batch %d x 3 x %d x %d\n", B, H, W);
        exit(1);
    }
    size_t plane = (size_t)H * (size_t)W;
    size_t image_bytes = (size_t)B * 3 * plane, mask_bytes = (size_t)B * plane;
    if (image_bytes > ci->images_cap || mask_bytes > ci->mask_cap) {
        /* The old buffers may still be read by a copy or a kernel; and the caching allocator
         * hands out blocks freed by work still queued on the compute stream (it orders reuse on
         * that stream only), which the copy stream would not wait for: so wait for both streams
         * (rare: the buffers only grow). */
        wait_idle(ci);
        cuda_synchronize();
        ensure_capacity(&ci->images, &ci->images_cap, image_bytes);
        ensure_capacity(&ci->mask, &ci->mask_cap, mask_bytes);
    }
    /* the previous batch's kernel must have read the buffers before they are overwritten */
    cudaCheck(cudaStreamWaitEvent(ci->copy, ci->consumed, 0));
    cudaCheck(cudaEventRecord(ci->copy_start, ci->copy));
    cudaCheck(cudaMemcpyAsync(ci->images, images_u8, image_bytes, cudaMemcpyHostToDevice, ci->copy));
    cudaCheck(cudaMemcpyAsync(ci->mask, mask, mask_bytes, cudaMemcpyHostToDevice, ci->copy));
    cudaCheck(cudaEventRecord(ci->copy_done, ci->copy));
    ci->B = B, ci->H = H, ci->W = W;
    ci->pending = 1;
}

typedef struct {
    float mean[3], std[3];
} NormaliseConstants;

/* out[c, b, p] = mask[b, p] ? 0 : (u8[b, c, p] / 255 - mean[c]) / std[c] for p < plane = H*W:
 * u8 [B, 3, plane], mask [B, plane], out [3, B, plane]; n = 3 * B * plane outputs, one per
 * thread of a grid-stride loop (writes coalesced, reads coalesced within a plane). The
 * operations are the CPU's (dataloader/loader.c normalise_row) with round-to-nearest intrinsics,
 * which nvcc never contracts or approximates, so every value is bitwise the CPU's. */
__global__ void normalise_u8_cnhw_kernel(const uint8_t *__restrict__ u8,
                                         const uint8_t *__restrict__ mask, float *__restrict__ out,
                                         size_t B, size_t plane, NormaliseConstants k) {
    const size_t n = 3 * B * plane;
    for (size_t i = global_thread_index(); i < n; i += global_thread_count()) {
        const size_t p = i % plane, cb = i / plane; /* cb = c * B + b */
        const size_t b = cb % B, c = cb / B;
        float v = 0.0f;
        if (!mask[b * plane + p]) {
            const float x = __uint2float_rn(u8[(b * 3 + c) * plane + p]);
            v = __fdiv_rn(__fsub_rn(__fdiv_rn(x, 255.0f), k.mean[c]), k.std[c]);
        }
        out[i] = v;
    }
}

void cuda_input_normalise(CudaInput *ci, float *out, const float mean[3], const float std[3]) {
    if (ci->B == 0) {
        fprintf(stderr, "error: cuda_input_normalise: no batch was uploaded (call "
                "cuda_input_upload_async first)\n");
        exit(1);
    }
    NormaliseConstants k;
    for (int c = 0; c < 3; c++) k.mean[c] = mean[c], k.std[c] = std[c];
    const size_t plane = (size_t)ci->H * (size_t)ci->W, n = 3 * (size_t)ci->B * plane;
    cudaStream_t s = cuda_stream();
    cudaCheck(cudaStreamWaitEvent(s, ci->copy_done, 0));
    normalise_u8_cnhw_kernel<<<grid_for_elements(n), KERNEL_THREADS, 0, s>>>(
        ci->images, ci->mask, out, (size_t)ci->B, plane, k);
    KERNEL_LAUNCH_CHECK();
    cudaCheck(cudaEventRecord(ci->consumed, s));
}

int64_t cuda_input_wait_copied(CudaInput *ci) {
    if (!ci->pending) return 0;
    cudaCheck(cudaEventSynchronize(ci->copy_done));
    float ms = 0.0f;
    cudaCheck(cudaEventElapsedTime(&ms, ci->copy_start, ci->copy_done));
    ci->pending = 0;
    return (int64_t)((double)ms * 1e6);
}
