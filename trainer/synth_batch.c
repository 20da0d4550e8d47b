/* synth_batch.c - see synth_batch.h */
#include "synth_batch.h"
#include <stdlib.h>
#include <string.h>
#include "mem.h"
#include "rng.h"

static const float MEAN[3] = {0.485f, 0.456f, 0.406f}, STD[3] = {0.229f, 0.224f, 0.225f};

void synth_batch_alloc(SynthBatch *sb, int B, int H, int W, int max_objects) {
    memset(sb, 0, sizeof(*sb));
    sb->B = B; sb->H = H; sb->W = W;
    sb->images = host_alloc(MEM_INPUTS, (size_t)B * 3 * H * W * sizeof(float));
    sb->mask = host_alloc(MEM_INPUTS, (size_t)B * H * W);
    sb->targets = calloc((size_t)B, sizeof(ImageTargets));
    sb->labels = calloc((size_t)B * max_objects, sizeof(int));
    sb->boxes = calloc((size_t)B * max_objects * 4, sizeof(float));
}

void synth_batch_free(SynthBatch *sb) {
    host_free(sb->images);
    host_free(sb->mask);
    free(sb->targets);
    free(sb->labels);
    free(sb->boxes);
    memset(sb, 0, sizeof(*sb));
}

/* A fixed, well-separated colour per class (RGB in [0,1]). */
static void class_colour(int c, float rgb[3]) {
    static const float palette[8][3] = {{0.9f, 0.1f, 0.1f}, {0.1f, 0.8f, 0.1f}, {0.1f, 0.2f, 0.9f},
                                        {0.9f, 0.9f, 0.1f}, {0.9f, 0.1f, 0.9f}, {0.1f, 0.9f, 0.9f},
                                        {1.0f, 0.6f, 0.2f}, {0.5f, 0.3f, 0.1f}};
    for (int k = 0; k < 3; k++) rgb[k] = palette[c % 8][k];
}

static void fill_one(SynthBatch *sb, int b, Rng *r, int num_classes, int max_objects, int fixed) {
    int H = sb->H, W = sb->W;
    int h = fixed ? H : H * 3 / 4 + (int)(rng_next_uniform(r) * (H - H * 3 / 4 + 1));
    int w = fixed ? W : W * 3 / 4 + (int)(rng_next_uniform(r) * (W - W * 3 / 4 + 1));
    if (h > H) h = H;
    if (w > W) w = W;
    float *img = sb->images + (size_t)b * 3 * H * W; /* [3, H, W] */
    uint8_t *mask = sb->mask + (size_t)b * H * W;   /* [H, W] */
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            int pad = y >= h || x >= w;
            mask[y * W + x] = (uint8_t)pad;
            for (int c = 0; c < 3; c++) {
                float v = 0.45f + 0.1f * rng_next_uniform(r);
                img[((size_t)c * H + y) * W + x] = pad ? 0.0f : (v - MEAN[c]) / STD[c];
            }
        }
    int n = 1 + (int)(rng_next_uniform(r) * max_objects);
    if (n > max_objects) n = max_objects;
    ImageTargets *t = &sb->targets[b];
    int *labels = sb->labels + (size_t)b * max_objects;
    float *boxes = sb->boxes + (size_t)b * max_objects * 4;
    for (int i = 0; i < n; i++) {
        int cls = (int)(rng_next_uniform(r) * num_classes) % num_classes;
        float bw = 0.2f + 0.4f * rng_next_uniform(r), bh = 0.2f + 0.4f * rng_next_uniform(r);
        float x0 = rng_next_uniform(r) * (1 - bw), y0 = rng_next_uniform(r) * (1 - bh);
        int px0 = (int)(x0 * w), py0 = (int)(y0 * h);
        int px1 = (int)((x0 + bw) * w), py1 = (int)((y0 + bh) * h);
        float rgb[3];
        class_colour(cls, rgb);
        for (int y = py0; y < py1; y++)
            for (int x = px0; x < px1; x++)
                for (int c = 0; c < 3; c++)
                    img[((size_t)c * H + y) * W + x] = (rgb[c] - MEAN[c]) / STD[c];
        labels[i] = cls;
        /* box of the painted pixels, normalised to the unpadded image */
        float *bx = boxes + 4 * i;
        bx[0] = (px0 + px1) * 0.5f / w;
        bx[1] = (py0 + py1) * 0.5f / h;
        bx[2] = (float)(px1 - px0) / w;
        bx[3] = (float)(py1 - py0) / h;
    }
    t->n = n;
    t->labels = labels;
    t->boxes = boxes;
}

void synth_batch_fill(SynthBatch *sb, uint64_t seed, uint64_t first_index, int num_classes,
                      int max_objects, int fixed_size) {
    for (int b = 0; b < sb->B; b++) {
        Rng r = {rng_hash64(seed, first_index + (uint64_t)b), 0};
        fill_one(sb, b, &r, num_classes, max_objects, fixed_size);
    }
}
