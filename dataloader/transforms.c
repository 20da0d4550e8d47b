/* transforms.c - the reference DETR train/val transforms (see transforms.h). */
#include "transforms.h"
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include "rng.h"

/* Fixed draw indices (transforms.h documents them). */
enum {
    DRAW_FLIP = 0,
    DRAW_BRANCH = 1,
    DRAW_SIZE1 = 2,
    DRAW_CROP_W = 3,
    DRAW_CROP_H = 4,
    DRAW_CROP_I = 5,
    DRAW_CROP_J = 6,
    DRAW_SIZE2 = 7,
};

void transform_config_default(TransformConfig *tc, int train) {
    memset(tc, 0, sizeof(*tc));
    tc->train = train;
    tc->n_scales = 0;
    for (int s = 480; s <= 800; s += 32) tc->scales[tc->n_scales++] = s;
    tc->max_size = 1333;
    tc->resize_choices[0] = 400;
    tc->resize_choices[1] = 500;
    tc->resize_choices[2] = 600;
    tc->crop_min = 384;
    tc->crop_max = 600;
    tc->val_size = 800;
}

/* "a,b,c" -> up to max positive sizes; returns the count or -1. */
static int parse_sizes(const char *list, int *out, int max) {
    int n = 0;
    const char *p = list;
    if (!p || !*p) return -1;
    for (;;) {
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < 1 || v > TF_MAX_SIDE || n == max) return -1;
        out[n++] = (int)v;
        if (*end == '\0') return n;
        if (*end != ',') return -1;
        p = end + 1;
    }
}

int transform_parse_scales(TransformConfig *tc, const char *list) {
    int scales[TF_MAX_SCALES];
    int n = parse_sizes(list, scales, TF_MAX_SCALES);
    if (n < 1) return -1;
    memcpy(tc->scales, scales, sizeof(int) * n);
    tc->n_scales = n;
    return 0;
}

int transform_config_from_options(TransformConfig *tc, int train, const char *scales, int max_size,
                                  int val_size, const char *resize_choices, const char *crop,
                                  char *err, size_t errlen) {
    transform_config_default(tc, train);
    if (scales && transform_parse_scales(tc, scales) != 0) {
        snprintf(err, errlen, "--scales '%s': expected a comma-separated list of up to %d sizes, "
                 "e.g. 96,112,128", scales, TF_MAX_SCALES);
        return -1;
    }
    if (max_size > 0) tc->max_size = max_size;
    if (val_size > 0) tc->val_size = val_size;
    int v[3];
    if (resize_choices) {
        if (parse_sizes(resize_choices, v, 3) != 3) {
            snprintf(err, errlen, "--resize-choices '%s': expected three sizes, e.g. 400,500,600",
                     resize_choices);
            return -1;
        }
        memcpy(tc->resize_choices, v, sizeof(int) * 3);
    }
    if (crop) {
        if (parse_sizes(crop, v, 2) != 2 || v[0] > v[1]) {
            snprintf(err, errlen, "--crop '%s': expected MIN,MAX with MIN <= MAX, e.g. 384,600", crop);
            return -1;
        }
        tc->crop_min = v[0];
        tc->crop_max = v[1];
    }
    return 0;
}

int transform_resize_size(int w, int h, int size, int max_size, int *out_w, int *out_h) {
    if (w < 1 || h < 1 || size < 1) return -1;
    if (max_size > 0) {
        double min_orig = w < h ? w : h, max_orig = w < h ? h : w;
        if (max_orig / min_orig * size > max_size) {
            /* Python's round() rounds half to even, as rint does in the default mode */
            double s = rint((double)max_size * min_orig / max_orig);
            if (s < 1) return -1;
            size = (int)s;
        }
    }
    int64_t ow, oh;
    if ((w <= h && w == size) || (h <= w && h == size)) {
        ow = w;
        oh = h;
    } else if (w < h) {
        ow = size;
        oh = (int64_t)((double)((int64_t)size * h) / w); /* int(size * h / w): truncation */
    } else {
        oh = size;
        ow = (int64_t)((double)((int64_t)size * w) / h);
    }
    if (ow < 1 || oh < 1 || ow > TF_MAX_SIDE || oh > TF_MAX_SIDE) return -1;
    *out_w = (int)ow;
    *out_h = (int)oh;
    return 0;
}

/* Uniform integer in [lo, hi] from draw k. */
static int draw_int(uint64_t seed, uint64_t k, int lo, int hi) {
    uint64_t n = (uint64_t)(hi - lo) + 1;
    return lo + (int)(((rng_hash64(seed, k) >> 32) * n) >> 32);
}

static int draw_bool(uint64_t seed, uint64_t k) { return rng_uniform(seed, k) < 0.5f; }

int transform_plan(const TransformConfig *tc, uint64_t seed, int w, int h, TransformPlan *p) {
    memset(p, 0, sizeof(*p));
    p->in_w = w;
    p->in_h = h;
    if (!tc->train) {
        p->size1 = tc->val_size;
        if (transform_resize_size(w, h, p->size1, tc->max_size, &p->w1, &p->h1)) return -1;
    } else {
        if (tc->n_scales < 1) return -1;
        p->flip = draw_bool(seed, DRAW_FLIP);
        p->crop = !draw_bool(seed, DRAW_BRANCH);
        if (!p->crop) {
            p->size1 = tc->scales[draw_int(seed, DRAW_SIZE1, 0, tc->n_scales - 1)];
            if (transform_resize_size(w, h, p->size1, tc->max_size, &p->w1, &p->h1)) return -1;
        } else {
            /* RandomResize(resize_choices) without max_size */
            p->size1 = tc->resize_choices[draw_int(seed, DRAW_SIZE1, 0, 2)];
            if (transform_resize_size(w, h, p->size1, 0, &p->w1, &p->h1)) return -1;
            /* RandomSizeCrop: w = randint(min, min(img_w, max)), h likewise, then
             * RandomCrop.get_params: i = randint(0, img_h - h), j = randint(0, img_w - w) */
            int hi_w = p->w1 < tc->crop_max ? p->w1 : tc->crop_max;
            int hi_h = p->h1 < tc->crop_max ? p->h1 : tc->crop_max;
            int lo_w = tc->crop_min < hi_w ? tc->crop_min : hi_w;
            int lo_h = tc->crop_min < hi_h ? tc->crop_min : hi_h;
            if (hi_w < 1 || hi_h < 1) return -1;
            p->crop_w = draw_int(seed, DRAW_CROP_W, lo_w, hi_w);
            p->crop_h = draw_int(seed, DRAW_CROP_H, lo_h, hi_h);
            p->crop_y = draw_int(seed, DRAW_CROP_I, 0, p->h1 - p->crop_h);
            p->crop_x = draw_int(seed, DRAW_CROP_J, 0, p->w1 - p->crop_w);
            p->size2 = tc->scales[draw_int(seed, DRAW_SIZE2, 0, tc->n_scales - 1)];
            if (transform_resize_size(p->crop_w, p->crop_h, p->size2, tc->max_size, &p->out_w,
                                      &p->out_h))
                return -1;
        }
    }
    if (!p->crop) {
        p->out_w = p->w1;
        p->out_h = p->h1;
    }
    if ((int64_t)p->out_w * p->out_h > TF_MAX_OUT_PIXELS) return -1;
    return 0;
}

void transform_plan_min_size(const TransformConfig *tc, uint64_t seed, int w, int h, int *min_w,
                             int *min_h) {
    TransformPlan p;
    if (transform_plan(tc, seed, w, h, &p)) {
        *min_w = w;
        *min_h = h;
        return;
    }
    *min_w = p.w1;
    *min_h = p.h1;
}

void transform_scratch_free(TransformScratch *s) {
    resize_scratch_free(&s->resize);
    free(s->crop);
    s->crop = NULL;
    s->crop_cap = 0;
}

static int plan_valid(const TransformPlan *p, const Image *src) {
    if (p->in_w != src->full_w || p->in_h != src->full_h || src->w < 1 || src->h < 1 || !src->rgb)
        return 0;
    if (p->w1 < 1 || p->h1 < 1 || p->out_w < 1 || p->out_h < 1 || p->w1 > TF_MAX_SIDE ||
        p->h1 > TF_MAX_SIDE || (int64_t)p->out_w * p->out_h > TF_MAX_OUT_PIXELS)
        return 0;
    if (!p->crop) return p->out_w == p->w1 && p->out_h == p->h1;
    return p->crop_w >= 1 && p->crop_h >= 1 && p->crop_x >= 0 && p->crop_y >= 0 &&
           p->crop_x <= p->w1 - p->crop_w && p->crop_y <= p->h1 - p->crop_h;
}

/* Grows a byte buffer to at least bytes (contents not kept). */
static int buffer_reserve(uint8_t **buf, size_t *cap, size_t bytes) {
    if (*cap >= bytes) return 0;
    uint8_t *p = malloc(bytes);
    if (!p) return -1;
    free(*buf);
    *buf = p;
    *cap = bytes;
    return 0;
}

/* The reference's hflip on boxes: (w - x1, y0, w - x0, y1), in float32 as torch computes it. */
static void boxes_flip(Boxes *b, int w) {
    for (int i = 0; i < b->n; i++) {
        float *x = b->xyxy + 4 * i;
        float x0 = x[0];
        x[0] = (float)w - x[2];
        x[2] = (float)w - x0;
    }
}

/* The reference's resize on boxes: ratio = float(new) / float(old) in double, rounded to a
 * float32 tensor, multiplied in float32. */
static void boxes_scale(Boxes *b, int old_w, int old_h, int new_w, int new_h) {
    float rw = (float)((double)new_w / (double)old_w);
    float rh = (float)((double)new_h / (double)old_h);
    for (int i = 0; i < b->n; i++) {
        float *x = b->xyxy + 4 * i;
        x[0] *= rw;
        x[1] *= rh;
        x[2] *= rw;
        x[3] *= rh;
    }
}

/* The reference's crop on boxes: shift by (j, i), min with (w, h), clamp at 0, keep boxes
 * with x1 > x0 and y1 > y0 (labels follow). */
static void boxes_crop(Boxes *b, int j, int i, int w, int h) {
    int kept = 0;
    for (int k = 0; k < b->n; k++) {
        const float *x = b->xyxy + 4 * k;
        float c[4] = {x[0] - (float)j, x[1] - (float)i, x[2] - (float)j, x[3] - (float)i};
        const float lim[4] = {(float)w, (float)h, (float)w, (float)h};
        for (int t = 0; t < 4; t++) {
            c[t] = fminf(c[t], lim[t]);
            c[t] = fmaxf(c[t], 0.0f);
        }
        if (!(c[2] > c[0] && c[3] > c[1])) continue;
        memcpy(b->xyxy + 4 * kept, c, sizeof(c));
        if (b->labels) b->labels[kept] = b->labels[k];
        kept++;
    }
    b->n = kept;
}

static int execute_with(const TransformPlan *p, const Image *src, Boxes *boxes, Image *out,
                        TransformScratch *s) {
    if (!plan_valid(p, src)) return -1;
    if (buffer_reserve(&out->rgb, &out->cap, (size_t)p->out_w * p->out_h * 3)) return -1;
    ptrdiff_t src_stride = (ptrdiff_t)src->w * 3;
    if (!p->crop) {
        if (resize_bilinear_aa_region(src->rgb, src->w, src->h, src_stride, p->flip, p->w1, p->h1,
                                      0, 0, p->w1, p->h1, out->rgb, (ptrdiff_t)p->w1 * 3,
                                      &s->resize))
            return -1;
    } else {
        /* only the kept region of the first resize is computed */
        if (buffer_reserve(&s->crop, &s->crop_cap, (size_t)p->crop_w * p->crop_h * 3) ||
            resize_bilinear_aa_region(src->rgb, src->w, src->h, src_stride, p->flip, p->w1, p->h1,
                                      p->crop_x, p->crop_y, p->crop_w, p->crop_h, s->crop,
                                      (ptrdiff_t)p->crop_w * 3, &s->resize) ||
            resize_bilinear_aa_region(s->crop, p->crop_w, p->crop_h, (ptrdiff_t)p->crop_w * 3, 0,
                                      p->out_w, p->out_h, 0, 0, p->out_w, p->out_h, out->rgb,
                                      (ptrdiff_t)p->out_w * 3, &s->resize))
            return -1;
    }
    out->w = out->full_w = p->out_w;
    out->h = out->full_h = p->out_h;
    if (boxes) {
        if (p->flip) boxes_flip(boxes, p->in_w);
        boxes_scale(boxes, p->in_w, p->in_h, p->w1, p->h1);
        if (p->crop) {
            boxes_crop(boxes, p->crop_x, p->crop_y, p->crop_w, p->crop_h);
            boxes_scale(boxes, p->crop_w, p->crop_h, p->out_w, p->out_h);
        }
    }
    return 0;
}

int transform_execute(const TransformPlan *p, const Image *src, Boxes *boxes, Image *out,
                      TransformScratch *scratch) {
    if (scratch) return execute_with(p, src, boxes, out, scratch);
    TransformScratch local = {0};
    int rc = execute_with(p, src, boxes, out, &local);
    transform_scratch_free(&local);
    return rc;
}

int transform_apply(const TransformConfig *tc, uint64_t seed, const Image *src, Boxes *boxes,
                    Image *out) {
    TransformPlan p;
    if (transform_plan(tc, seed, src->full_w, src->full_h, &p)) return -1;
    return transform_execute(&p, src, boxes, out, NULL);
}
