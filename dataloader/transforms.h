/* transforms.h - the reference DETR transforms (detr.md §3.2) on RGB uint8 images with boxes.
 *
 * train: RandomHorizontalFlip(0.5); then with p=0.5 either RandomResize(scales, max_size) or
 *        RandomResize(resize_choices) -> RandomSizeCrop(crop_min, crop_max) -> RandomResize(scales,
 *        max_size); boxes follow every step (crop: shifted, clipped, zero-area boxes removed).
 * val:   RandomResize([val_size], max_size).
 * Resize rule (reference `resize`): target short side s; if long/short*s > max_size,
 * s = round(max_size*short/long) (Python's round: half to even); long side = int(s*long/short);
 * unchanged if short == s.
 * Resampling: bilinear with antialiasing when downscaling, bitwise equal to PIL's
 * Image.resize(BILINEAR) (resize.c).
 *
 * Random draws: draw k of a sample is rng_hash64(seed, k) (trainer/rng.h), seed derived by the
 * caller from (seed, epoch, sample index). Each draw has a fixed index, used or not:
 *   0 flip (rng_uniform < 0.5 flips), 1 branch (rng_uniform < 0.5: the single resize, as the
 *   reference's RandomSelect(p=0.5) picks its first option), 2 first scale (index into scales,
 *   or resize_choices in the crop branch), 3 crop width, 4 crop height, 5 crop top (i),
 *   6 crop left (j), 7 second scale (crop branch). Integers are uniform over [lo, hi]:
 *   lo + ((hash >> 32) * (hi - lo + 1) >> 32).
 * Deviation from the reference, reachable only with non-default options: when the first resize
 * gives a side shorter than crop_min, RandomSizeCrop would raise (randint(lo, hi) with hi < lo);
 * here that side's crop range becomes [side, side] (lo is lowered to hi). */
#ifndef DETR_TRANSFORMS_H
#define DETR_TRANSFORMS_H
#include <stddef.h>
#include <stdint.h>
#include "decode.h"

#define TF_MAX_SCALES 32
/* Plans whose result (or the first resize's virtual size) exceeds these are refused (-1): an
 * extreme aspect ratio upscaled to a 600 short side would otherwise allocate gigabytes. */
#define TF_MAX_SIDE (1 << 20)
#define TF_MAX_OUT_PIXELS ((int64_t)64 << 20)

typedef struct {
    int train;                     /* 1 = train transform, 0 = val */
    int scales[TF_MAX_SCALES];     /* default 480..800 step 32 */
    int n_scales;
    int max_size;                  /* default 1333; 0 = no limit */
    int resize_choices[3];         /* default 400, 500, 600 */
    int crop_min, crop_max;        /* default 384, 600 */
    int val_size;                  /* default 800 */
} TransformConfig;

void transform_config_default(TransformConfig *tc, int train);
/* Parses "96,112,128" into tc->scales; returns 0 or -1 (empty, non-positive or too many). */
int transform_parse_scales(TransformConfig *tc, const char *list);
/* The defaults for train/val with the command-line overrides applied (NULL / 0 = keep):
 * --scales LIST, --max-size N, --val-size N, --resize-choices A,B,C, --crop MIN,MAX.
 * Returns 0, or -1 with err naming the option and the expected form. */
int transform_config_from_options(TransformConfig *tc, int train, const char *scales, int max_size,
                                  int val_size, const char *resize_choices, const char *crop,
                                  char *err, size_t errlen);

/* Boxes of one sample: xyxy in pixels of the current image, labels alongside. */
typedef struct {
    int n;
    float *xyxy;   /* [n, 4] */
    int *labels;   /* [n] */
} Boxes;

/* The reference's get_size_with_aspect_ratio: the size a w x h image is resized to for target
 * short side `size` and max_size (0 = none). Returns 0, or -1 when a side would be < 1 or above
 * TF_MAX_SIDE. */
int transform_resize_size(int w, int h, int size, int max_size, int *out_w, int *out_h);

/* Everything the transform of one sample does, decided before any pixel is touched. */
typedef struct {
    int in_w, in_h;        /* original image size (Image.full_w x full_h) */
    int flip;              /* horizontal flip first */
    int crop;              /* 0: one resize (train branch 1, val); 1: resize, crop, resize */
    int size1, size2;      /* drawn short sides of the first and (crop branch) second resize */
    int w1, h1;            /* size after the first resize */
    int crop_x, crop_y;    /* crop branch: top-left (j, i) of the region kept of the first */
    int crop_w, crop_h;    /*   resize's output, and its size */
    int out_w, out_h;      /* final size */
} TransformPlan;

/* Draws the sample's random parameters (see the draw order above) for a w x h original.
 * Returns 0, or -1 for a degenerate or oversized result (the caller skips the sample). */
int transform_plan(const TransformConfig *tc, uint64_t seed, int w, int h, TransformPlan *p);

/* The size the first resize produces for a w x h source with this sample's draws: the smallest
 * decode that keeps full quality (the decoder picks a DCT scale from it). w x h when the plan
 * fails. */
void transform_plan_min_size(const TransformConfig *tc, uint64_t seed, int w, int h, int *min_w,
                             int *min_h);

/* Reusable buffers of the resampler (one per thread); zero-initialise, release with
 * resize_scratch_free. */
typedef struct {
    void *buf;
    size_t cap;
} ResizeScratch;
void resize_scratch_free(ResizeScratch *s);

typedef struct {
    ResizeScratch resize;
    uint8_t *crop;         /* [crop_h, crop_w, 3] crop branch's intermediate image */
    size_t crop_cap;
} TransformScratch;
void transform_scratch_free(TransformScratch *s);

/* Runs plan p on src (whose full_w x full_h must be p->in_w x p->in_h; src may be DCT-scaled,
 * src->w/h smaller, and is then resampled from its own size). Boxes are in full_w x full_h
 * pixels and are updated in place to out's pixels (the crop removes boxes, keeping labels
 * aligned). out's buffer is reused; out->w/h = out->full_w/h = the final size. scratch: the
 * caller's per-thread buffers, or NULL to allocate per call. Returns 0 or -1 (invalid plan,
 * out of memory). */
int transform_execute(const TransformPlan *p, const Image *src, Boxes *boxes, Image *out,
                      TransformScratch *scratch);

/* transform_plan(seed, src->full_w, src->full_h) then transform_execute. Returns 0 or -1
 * (degenerate or oversized size, out of memory). */
int transform_apply(const TransformConfig *tc, uint64_t seed, const Image *src, Boxes *boxes,
                    Image *out);

/* Bilinear resize with antialiasing when downscaling (PIL-compatible), RGB uint8, packed rows.
 * Returns 0 or -1 (bad size, out of memory). */
int resize_bilinear_aa(const uint8_t *src, int sw, int sh, uint8_t *dst, int dw, int dh);

/* The same, computing only the region [x0, x0+rw) x [y0, y0+rh) of the dw x dh result (bitwise
 * the crop of the full result) into dst (row stride dst_stride bytes). src rows are src_stride
 * bytes apart; flip_x resamples the horizontally mirrored source (bitwise equal to flipping
 * first). scratch: reusable buffers. Returns 0 or -1. */
int resize_bilinear_aa_region(const uint8_t *src, int sw, int sh, ptrdiff_t src_stride,
                              int flip_x, int dw, int dh, int x0, int y0, int rw, int rh,
                              uint8_t *dst, ptrdiff_t dst_stride, ResizeScratch *scratch);

#endif
