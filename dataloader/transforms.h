/* transforms.h - the reference DETR transforms (detr.md §3.2) on RGB uint8 images with boxes.
 *
 * train: RandomHorizontalFlip(0.5); then with p=0.5 either RandomResize(scales, max_size) or
 *        RandomResize(resize_choices) -> RandomSizeCrop(crop_min, crop_max) -> RandomResize(scales,
 *        max_size); boxes follow every step (crop: shifted, clipped, zero-area boxes removed).
 * val:   RandomResize([val_size], max_size).
 * Resize rule (reference `resize`): target short side s; if long/short*s > max_size,
 * s = round(max_size*short/long); long side = int(s*long/short); unchanged if short == s.
 * Resampling: bilinear with antialiasing when downscaling (PIL's Image.resize(BILINEAR)).
 * Every random draw comes from rng_hash64(seed, draw index) with seed derived by the caller
 * from (seed, epoch, sample index). */
#ifndef DETR_TRANSFORMS_H
#define DETR_TRANSFORMS_H
#include <stdint.h>
#include "decode.h"

#define TF_MAX_SCALES 32

typedef struct {
    int train;                     /* 1 = train transform, 0 = val */
    int scales[TF_MAX_SCALES];     /* default 480..800 step 32 */
    int n_scales;
    int max_size;                  /* default 1333 */
    int resize_choices[3];         /* default 400, 500, 600 */
    int crop_min, crop_max;        /* default 384, 600 */
    int val_size;                  /* default 800 */
} TransformConfig;

void transform_config_default(TransformConfig *tc, int train);
/* Parses "96,112,128" into tc->scales; returns 0 or -1. */
int transform_parse_scales(TransformConfig *tc, const char *list);

/* Boxes of one sample: xyxy in pixels of the current image, labels alongside. */
typedef struct {
    int n;
    float *xyxy;   /* [n, 4] */
    int *labels;   /* [n] */
} Boxes;

/* The size the final resize will produce for a w x h source, given the random draws of this
 * sample (so the decoder can pick a DCT scale); sets *out_w, *out_h to a lower bound of the
 * intermediate size needed. */
void transform_plan_min_size(const TransformConfig *tc, uint64_t seed, int w, int h, int *min_w,
                             int *min_h);

/* Applies the transform to src (full_w x full_h coordinates for boxes; src may be DCT-scaled:
 * src->w/h smaller than src->full_w/full_h, resizing accounts for it). Writes the result into
 * out (buffer reused) and updates boxes in place (to out's pixel coordinates). Returns 0. */
int transform_apply(const TransformConfig *tc, uint64_t seed, const Image *src, Boxes *boxes,
                    Image *out);

/* Bilinear resize with antialiasing when downscaling (PIL-compatible support), RGB uint8. */
void resize_bilinear_aa(const uint8_t *src, int sw, int sh, uint8_t *dst, int dw, int dh);

#endif
