/* input_batch.c - see input_batch.h. */
#include "input_batch.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef DETR_CUDA
#include "cuda/backend_cuda.h"
#include "cuda/cuda_input.h"
#endif

/* The same values as dataloader/loader.c kMean / kStd (tests/unit/test_input_batch.c fails when
 * they drift apart: the uint8 path would no longer equal the loader's float batch). */
const float INPUT_MEAN[3] = {0.485f, 0.456f, 0.406f};
const float INPUT_STD[3] = {0.229f, 0.224f, 0.225f};

void input_batch_from_loader(InputBatch *in, const LoaderBatch *b) {
    memset(in, 0, sizeof(*in));
    in->B = b->B, in->H = b->H, in->W = b->W;
    in->images = b->images;
    in->images_u8 = b->images ? NULL : b->images_u8;
    in->mask = b->mask;
}

/* One plane of p pixels: written with the loader's operations in the loader's order, so that
 * the float results are identical (true divisions; nothing here can be contracted into a
 * multiply-add). */
static void normalise_plane(const uint8_t *restrict src, const uint8_t *restrict mask,
                            float *restrict dst, size_t p, float mean, float std) {
    for (size_t i = 0; i < p; i++)
        dst[i] = mask[i] ? 0.0f : ((float)src[i] / 255.0f - mean) / std;
}

void input_normalise_u8_cnhw(const uint8_t *u8, const uint8_t *mask, int B, int H, int W,
                             float *out) {
    size_t plane = (size_t)H * (size_t)W;
    for (int c = 0; c < 3; c++)
        for (int b = 0; b < B; b++)
            normalise_plane(u8 + ((size_t)b * 3 + c) * plane, mask + (size_t)b * plane,
                            out + ((size_t)c * B + b) * plane, plane, INPUT_MEAN[c], INPUT_STD[c]);
}

#ifdef DETR_CUDA
struct InputStager {
    CudaInput *gpu;
};
#endif

float *input_batch_images_cnhw(InputBatch *in, const Backend *be, Arena *acts) {
    int B = in->B, H = in->H, W = in->W;
    size_t plane = (size_t)H * (size_t)W, n = 3 * (size_t)B * plane;
    float *x = arena_alloc(acts, n); /* backend [3, B, H, W] */
    if (in->images) { /* host float [B, 3, H, W]: one upload per (image, channel) plane */
        for (int b = 0; b < B; b++)
            for (int c = 0; c < 3; c++)
                be->upload(x + ((size_t)c * B + b) * plane, in->images + ((size_t)b * 3 + c) * plane,
                           plane * sizeof(float));
        return x;
    }
#ifdef DETR_CUDA
    if (in->stager) { /* on the GPU, after the batch's copies */
        cuda_input_normalise(in->stager->gpu, x, INPUT_MEAN, INPUT_STD);
        return x;
    }
#endif
    if (be == backend_cpu()) { /* host memory: normalise in place */
        input_normalise_u8_cnhw(in->images_u8, in->mask, B, H, W, x);
        return x;
    }
    float *host = malloc(n * sizeof(float)); /* [3, B, H, W] */
    if (!host) {
        fprintf(stderr, "error: input batch: out of host memory normalising %d x 3 x %d x %d "
                "images\n", B, H, W);
        exit(1);
    }
    input_normalise_u8_cnhw(in->images_u8, in->mask, B, H, W, host);
    be->upload(x, host, n * sizeof(float));
    free(host);
    return x;
}

float *input_batch_set_images(void *ctx, const Backend *be, Arena *acts, const uint8_t *mask,
                              int B, int H, int W) {
    InputBatchSet *set = ctx;
    for (int k = 0; k < set->n; k++) {
        InputBatch *in = &set->items[k];
        if (in->mask == mask && in->B == B && in->H == H && in->W == W)
            return input_batch_images_cnhw(in, be, acts);
    }
    return NULL;
}

/* ---- GPU copies ---- */

#ifdef DETR_CUDA
InputStager *input_stager_create(void) {
    if (cuda_current_device() < 0) return NULL; /* training on the CPU: the host path */
    InputStager *s = malloc(sizeof(*s));
    if (!s) return NULL;
    s->gpu = cuda_input_create();
    return s;
}

void input_stager_destroy(InputStager *s) {
    if (!s) return;
    cuda_input_destroy(s->gpu);
    free(s);
}

void input_batch_upload_async(InputBatch *in, InputStager *s) {
    if (in->images || !s) return; /* host float batch (or no stager): the host path */
    cuda_input_upload_async(s->gpu, in->images_u8, in->mask, in->B, in->H, in->W);
    in->stager = s;
    in->copy_pending = 1;
}

int64_t input_batch_wait_copied(InputBatch *in) {
    if (!in->copy_pending) return 0;
    in->copy_pending = 0;
    return cuda_input_wait_copied(in->stager->gpu);
}
#else
InputStager *input_stager_create(void) { return NULL; }
void input_stager_destroy(InputStager *s) { (void)s; }
void input_batch_upload_async(InputBatch *in, InputStager *s) { (void)in, (void)s; }
int64_t input_batch_wait_copied(InputBatch *in) {
    in->copy_pending = 0;
    return 0;
}
#endif
