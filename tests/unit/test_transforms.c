/* test_transforms.c - dataloader/transforms.c and resize.c against the Python reference.
 *
 * Fixture $DETR_FIXTURES/transforms/transform_cases.safetensors (tests/ref/gen_transform_cases.py):
 *   - the resize rule (get_size_with_aspect_ratio) on 3000 (w, h, size, max_size) cases;
 *   - resize vs PIL Image.resize(BILINEAR) (with and without a flip first) on noise and
 *     photo-like images, up and down by factors 1/8 .. 3;
 *   - whole transform cases (flip, resize, crop, resize) with the parameters the generator chose,
 *     pixels and boxes/labels vs the reference functions hflip / resize / crop.
 * Without the fixture: region resize = crop of the full resize, fused flip = flip then resize,
 * the random draws (flip ~50 %, branch ~50 %, scales and crops uniform, determinism), the DCT-
 * scaled decode's deviation from full decode + resize, degenerate sizes, and the throughput of
 * decode + train transform on a 640x480 q90 JPEG (printed). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <turbojpeg.h>
#include "check.h"
#include "decode.h"
#include "rng.h"
#include "safetensors.h"
#include "transforms.h"

static uint64_t g_state = 0x9E3779B97F4A7C15ull;
static uint32_t rnd(void) { /* xorshift64*, test data only */
    g_state ^= g_state >> 12;
    g_state ^= g_state << 25;
    g_state ^= g_state >> 27;
    return (uint32_t)((g_state * 0x2545F4914F6CDD1Dull) >> 32);
}

static uint8_t *noise_image(int w, int h) {
    uint8_t *p = malloc((size_t)w * h * 3);
    for (size_t i = 0; i < (size_t)w * h * 3; i++) p[i] = (uint8_t)rnd();
    return p;
}

/* Smooth gradients, flat discs with edges and +-6 noise: compresses like a photo. */
static uint8_t *photo_like(int w, int h) {
    uint8_t *p = malloc((size_t)w * h * 3);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            for (int c = 0; c < 3; c++) {
                double v = 128 + 60 * sin(6.0 * (c + 1) * x / w + 0.7 * c) * cos(9.0 * y / h);
                int dx = x - w / 3, dy = y - h / 2, ex = x - 3 * w / 4, ey = y - h / 4;
                if (dx * dx + dy * dy < h * h / 16) v = 40 + 70 * c;
                if (abs(ex) < w / 10 && abs(ey) < h / 8) v = 220 - 60 * c;
                int iv = (int)v + (int)(rnd() % 13) - 6;
                p[((size_t)y * w + x) * 3 + c] = (uint8_t)(iv < 0 ? 0 : iv > 255 ? 255 : iv);
            }
    return p;
}

static int max_diff(const uint8_t *a, const uint8_t *b, size_t n, double *mean) {
    int m = 0;
    double s = 0;
    for (size_t i = 0; i < n; i++) {
        int d = abs((int)a[i] - (int)b[i]);
        s += d;
        if (d > m) m = d;
    }
    if (mean) *mean = n ? s / n : 0;
    return m;
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

/* ------------------------------------------------------------------------------------------ */
/* Fixture cases */

/* A malloc'd copy of an I32 [rows, cols] tensor (tensor data may be unaligned in the file). */
static int32_t *i32_tensor(const StFile *f, const char *name, int64_t *rows, int64_t cols) {
    const StTensor *t = st_find(f, name);
    if (!t || t->dtype != ST_I32 || t->ndim != 2 || t->shape[1] != cols) return NULL;
    *rows = t->shape[0];
    int32_t *copy = malloc(st_numel(t) * sizeof(int32_t) + 1);
    memcpy(copy, st_data(f, t), st_numel(t) * sizeof(int32_t));
    return copy;
}

static void test_rule(const StFile *f) {
    int64_t n = 0;
    int32_t *r = i32_tensor(f, "rule", &n, 6);
    if (!r) {
        CHECK("resize rule fixture", 0, "tensor 'rule' missing or malformed");
        return;
    }
    int bad = 0, first_bad = -1;
    for (int64_t i = 0; i < n; i++) {
        const int32_t *c = r + 6 * i;
        int ow = -7, oh = -7;
        int rc = transform_resize_size(c[0], c[1], c[2], c[3], &ow, &oh);
        int refused = c[4] == 0 || c[4] > TF_MAX_SIDE || c[5] > TF_MAX_SIDE;
        int ok = refused ? rc == -1 : (rc == 0 && ow == c[4] && oh == c[5]);
        if (!ok && bad++ == 0) first_bad = (int)i;
    }
    CHECK("resize rule = reference get_size_with_aspect_ratio on every fixture case", bad == 0,
          "%d of %lld differ; first: w %d h %d size %d max %d -> expected %dx%d", bad, (long long)n,
          first_bad >= 0 ? r[6 * first_bad] : 0, first_bad >= 0 ? r[6 * first_bad + 1] : 0,
          first_bad >= 0 ? r[6 * first_bad + 2] : 0, first_bad >= 0 ? r[6 * first_bad + 3] : 0,
          first_bad >= 0 ? r[6 * first_bad + 4] : 0, first_bad >= 0 ? r[6 * first_bad + 5] : 0);
    printf("resize rule: %lld cases (incl. round-half-even ties, degenerate and oversized sizes)\n",
           (long long)n);
    free(r);
}

static void test_resize_vs_pil(const StFile *f) {
    const char *nm = st_meta(f, "n_resize");
    int n = nm ? atoi(nm) : 0;
    int worst = 0, n_exact = 0;
    ResizeScratch s = {0};
    for (int k = 0; k < n; k++) {
        char a[64], b[64], c[64], name[160];
        snprintf(a, sizeof(a), "resize.%d.src", k);
        snprintf(b, sizeof(b), "resize.%d.out", k);
        snprintf(c, sizeof(c), "resize.%d.flip", k);
        const StTensor *ts = st_find(f, a), *to = st_find(f, b), *tf = st_find(f, c);
        if (!ts || !to || !tf) {
            CHECK("resize fixture", 0, "case %d missing", k);
            continue;
        }
        int sw = (int)ts->shape[1], sh = (int)ts->shape[0];
        int dw = (int)to->shape[1], dh = (int)to->shape[0];
        int32_t flip;
        memcpy(&flip, st_data(f, tf), sizeof(flip));
        uint8_t *out = malloc((size_t)dw * dh * 3);
        int rc = resize_bilinear_aa_region(st_data(f, ts), sw, sh, (ptrdiff_t)sw * 3, flip, dw, dh,
                                           0, 0, dw, dh, out, (ptrdiff_t)dw * 3, &s);
        double mean = 0;
        int md = rc ? 999 : max_diff(out, st_data(f, to), (size_t)dw * dh * 3, &mean);
        snprintf(name, sizeof(name), "resize %dx%d -> %dx%d%s = PIL BILINEAR", sw, sh, dw, dh,
                 flip ? " (flipped)" : "");
        CHECK(name, md == 0, "max |diff| %d, mean %.4f", md, mean);
        if (md > worst) worst = md;
        n_exact += md == 0;
        free(out);
    }
    resize_scratch_free(&s);
    CHECK("resize fixture has cases", n >= 10, "%d", n);
    printf("resize vs PIL: %d of %d cases bitwise equal, worst max |diff| %d\n", n_exact, n, worst);
}

static void test_transform_cases(const StFile *f) {
    int64_t m = 0, m2 = 0;
    int32_t *par = i32_tensor(f, "tf.params", &m, 16);
    int32_t *mid = i32_tensor(f, "tf.mid", &m2, 2);
    const StTensor *tbi = st_find(f, "tf.boxes_in"), *tli = st_find(f, "tf.labels_in");
    const StTensor *tbo = st_find(f, "tf.boxes_out"), *tlo = st_find(f, "tf.labels_out");
    if (!par || !mid || m2 != m || !tbi || !tli || !tbo || !tlo) {
        CHECK("transform fixture", 0, "tf.* tensors missing or malformed");
        free(par);
        free(mid);
        return;
    }
    /* boxes are float32 in the fixture; copy (data may be unaligned) */
    float *bin = malloc(st_numel(tbi) * 4), *bout = malloc(st_numel(tbo) * 4 + 4);
    int32_t *lin = malloc(st_numel(tli) * 4), *lout = malloc(st_numel(tlo) * 4 + 4);
    memcpy(bin, st_data(f, tbi), st_numel(tbi) * 4);
    memcpy(bout, st_data(f, tbo), st_numel(tbo) * 4);
    memcpy(lin, st_data(f, tli), st_numel(tli) * 4);
    memcpy(lout, st_data(f, tlo), st_numel(tlo) * 4);
    size_t off_in = 0, off_out = 0;
    TransformScratch scratch = {0};
    for (int64_t k = 0; k < m; k++) {
        const int32_t *p = par + 16 * k;
        int in_w = p[0], in_h = p[1], flip = p[2], crop = p[3], size1 = p[4], max1 = p[5];
        int ci = p[6], cj = p[7], ch = p[8], cw = p[9], size2 = p[10], max2 = p[11];
        int n_in = p[12], n_out = p[13], out_w = p[14], out_h = p[15];
        char name[200], key[64];
        /* the plan from the explicit parameters, sizes from our rule */
        TransformPlan pl = {0};
        pl.in_w = in_w;
        pl.in_h = in_h;
        pl.flip = flip;
        pl.crop = crop;
        pl.size1 = size1;
        pl.size2 = size2;
        int rc = transform_resize_size(in_w, in_h, size1, max1, &pl.w1, &pl.h1);
        if (crop) {
            pl.crop_x = cj;
            pl.crop_y = ci;
            pl.crop_w = cw;
            pl.crop_h = ch;
            rc |= transform_resize_size(cw, ch, size2, max2, &pl.out_w, &pl.out_h);
        } else {
            pl.out_w = pl.w1;
            pl.out_h = pl.h1;
        }
        snprintf(name, sizeof(name), "transform case %lld (%dx%d flip %d crop %d) sizes", (long long)k,
                 in_w, in_h, flip, crop);
        CHECK(name, rc == 0 && pl.w1 == mid[2 * k] && pl.h1 == mid[2 * k + 1] && pl.out_w == out_w &&
              pl.out_h == out_h, "first %dx%d (ref %dx%d), final %dx%d (ref %dx%d)", pl.w1, pl.h1,
              mid[2 * k], mid[2 * k + 1], pl.out_w, pl.out_h, out_w, out_h);
        snprintf(key, sizeof(key), "tf.%lld.src", (long long)k);
        const StTensor *ts = st_find(f, key);
        snprintf(key, sizeof(key), "tf.%lld.out", (long long)k);
        const StTensor *to = st_find(f, key);
        if (!ts || !to) {
            CHECK(name, 0, "images missing");
            continue;
        }
        Image src = {(uint8_t *)st_data(f, ts), in_w, in_h, in_w, in_h, 0};
        Image out = {0};
        float boxes[64 * 4];
        int labels[64];
        memcpy(boxes, bin + 4 * off_in, sizeof(float) * 4 * n_in);
        memcpy(labels, lin + off_in, sizeof(int) * n_in);
        Boxes b = {n_in, boxes, labels};
        rc = transform_execute(&pl, &src, &b, &out, &scratch);
        double mean = 0;
        int md = rc || out.w != out_w || out.h != out_h
                     ? 999 : max_diff(out.rgb, st_data(f, to), (size_t)out_w * out_h * 3, &mean);
        snprintf(name, sizeof(name), "transform case %lld (%dx%d flip %d crop %d -> %dx%d) pixels = reference",
                 (long long)k, in_w, in_h, flip, crop, out_w, out_h);
        CHECK(name, md == 0, "rc %d, max |diff| %d, mean %.4f", rc, md, mean);
        float bd = 0;
        int lab_ok = b.n == n_out;
        for (int i = 0; lab_ok && i < n_out; i++) {
            lab_ok &= labels[i] == lout[off_out + i];
            for (int c = 0; c < 4; c++) bd = fmaxf(bd, fabsf(boxes[4 * i + c] - bout[4 * (off_out + i) + c]));
        }
        snprintf(name, sizeof(name), "transform case %lld boxes and labels = reference (%d -> %d boxes)",
                 (long long)k, n_in, n_out);
        CHECK(name, lab_ok && bd == 0.0f, "n %d (ref %d), labels %s, max |box diff| %g", b.n, n_out,
              lab_ok ? "equal" : "differ", bd);
        off_in += n_in;
        off_out += n_out;
        image_free(&out);
    }
    transform_scratch_free(&scratch);
    free(par);
    free(mid);
    free(bin);
    free(bout);
    free(lin);
    free(lout);
}

static void test_fixtures(void) {
    const char *dir = getenv("DETR_FIXTURES");
    char path[1024], err[256];
    snprintf(path, sizeof(path), "%s/transforms/transform_cases.safetensors", dir ? dir : "");
    StFile f;
    if (!dir || st_open(path, &f, err, sizeof(err))) {
        test_skip("transforms vs the Python reference",
                  "fixture transforms/transform_cases.safetensors missing: run /usr/bin/python3 "
                  "tests/ref/gen_transform_cases.py --out $DETR_FIXTURES/transforms "
                  "(tests/run_tests.sh does it)");
        return;
    }
    test_rule(&f);
    test_resize_vs_pil(&f);
    test_transform_cases(&f);
    st_close(&f);
}

/* ------------------------------------------------------------------------------------------ */
/* Resampler properties */

static void test_region_and_flip(void) {
    ResizeScratch s = {0};
    int bad_region = 0, bad_flip = 0, n = 0;
    for (int it = 0; it < 60; it++) {
        int sw = 1 + (int)(rnd() % 300), sh = 1 + (int)(rnd() % 300);
        int dw = 1 + (int)(rnd() % 400), dh = 1 + (int)(rnd() % 400);
        if (it % 5 == 0) dw = sw; /* no horizontal pass */
        if (it % 7 == 0) dh = sh; /* no vertical pass */
        int flip = (int)(rnd() & 1);
        uint8_t *src = noise_image(sw, sh);
        uint8_t *full = malloc((size_t)dw * dh * 3);
        resize_bilinear_aa_region(src, sw, sh, (ptrdiff_t)sw * 3, flip, dw, dh, 0, 0, dw, dh, full,
                                  (ptrdiff_t)dw * 3, &s);
        /* flip fused = flip the source first, then resize */
        uint8_t *flipped = malloc((size_t)sw * sh * 3), *ref = malloc((size_t)dw * dh * 3);
        for (int y = 0; y < sh; y++)
            for (int x = 0; x < sw; x++)
                memcpy(flipped + ((size_t)y * sw + x) * 3,
                       src + ((size_t)y * sw + (flip ? sw - 1 - x : x)) * 3, 3);
        resize_bilinear_aa(flipped, sw, sh, ref, dw, dh);
        bad_flip += max_diff(full, ref, (size_t)dw * dh * 3, NULL) != 0;
        /* a region, written into a wider destination */
        int rw = 1 + (int)(rnd() % dw), rh = 1 + (int)(rnd() % dh);
        int x0 = (int)(rnd() % (dw - rw + 1)), y0 = (int)(rnd() % (dh - rh + 1));
        ptrdiff_t stride = (ptrdiff_t)(rw + 5) * 3;
        uint8_t *reg = malloc((size_t)stride * rh);
        resize_bilinear_aa_region(src, sw, sh, (ptrdiff_t)sw * 3, flip, dw, dh, x0, y0, rw, rh, reg,
                                  stride, &s);
        for (int y = 0; y < rh; y++)
            if (memcmp(reg + y * stride, full + ((size_t)(y0 + y) * dw + x0) * 3, (size_t)rw * 3)) {
                bad_region++;
                break;
            }
        n++;
        free(src);
        free(full);
        free(flipped);
        free(ref);
        free(reg);
    }
    resize_scratch_free(&s);
    CHECK("region resize = crop of the full resize (60 random cases)", bad_region == 0,
          "%d of %d differ", bad_region, n);
    CHECK("flip folded into the resize = flip first, then resize", bad_flip == 0, "%d of %d differ",
          bad_flip, n);
    uint8_t px[3] = {1, 2, 3}, out[3 * 6];
    CHECK("resize rejects bad sizes", resize_bilinear_aa(px, 1, 1, out, 0, 2) == -1 &&
          resize_bilinear_aa(px, 0, 1, out, 1, 1) == -1, "accepted");
    CHECK("1x1 -> 2x3 replicates", resize_bilinear_aa(px, 1, 1, out, 2, 3) == 0 && out[15] == 1 &&
          out[16] == 2 && out[17] == 3, "%d %d %d", out[15], out[16], out[17]);
}

/* ------------------------------------------------------------------------------------------ */
/* Random draws */

static void test_draws(void) {
    TransformConfig tc;
    transform_config_default(&tc, 1);
    const int N = 40000;
    int flips = 0, crops = 0, count1[TF_MAX_SCALES] = {0}, count_choice[3] = {0};
    int count2[TF_MAX_SCALES] = {0}, bad = 0, mapping_bad = 0;
    int64_t crop_w_sum = 0, crop_x_hist[4] = {0};
    int n_crop_x = 0;
    for (int i = 0; i < N; i++) {
        uint64_t seed = rng_hash64(77, (uint64_t)i);
        TransformPlan p;
        if (transform_plan(&tc, seed, 640, 480, &p)) {
            bad++;
            continue;
        }
        flips += p.flip;
        crops += p.crop;
        mapping_bad += p.flip != (rng_uniform(seed, 0) < 0.5f);
        mapping_bad += p.crop != !(rng_uniform(seed, 1) < 0.5f);
        if (!p.crop) {
            int k = 0;
            while (k < tc.n_scales && tc.scales[k] != p.size1) k++;
            if (k == tc.n_scales) bad++;
            else count1[k]++;
            /* the single resize: short side = scale, long side int(s * 640 / 480) */
            bad += !(p.h1 == p.size1 && p.w1 == (int)((double)p.size1 * 640 / 480) &&
                     p.out_w == p.w1 && p.out_h == p.h1);
        } else {
            int k = 0;
            while (k < 3 && tc.resize_choices[k] != p.size1) k++;
            if (k == 3) bad++;
            else count_choice[k]++;
            int k2 = 0;
            while (k2 < tc.n_scales && tc.scales[k2] != p.size2) k2++;
            if (k2 == tc.n_scales) bad++;
            else count2[k2]++;
            bad += p.crop_w < 384 || p.crop_w > 600 || p.crop_w > p.w1 || p.crop_h < 384 ||
                   p.crop_h > 600 || p.crop_h > p.h1 || p.crop_x < 0 || p.crop_y < 0 ||
                   p.crop_x + p.crop_w > p.w1 || p.crop_y + p.crop_h > p.h1;
            bad += p.out_w > 1333 || p.out_h > 1333;
            crop_w_sum += p.crop_w;
            if (p.w1 - p.crop_w >= 100) { /* position uniform over [0, w1 - crop_w] */
                crop_x_hist[4 * p.crop_x / (p.w1 - p.crop_w + 1)]++;
                n_crop_x++;
            }
        }
    }
    CHECK("every draw gives a valid plan within the documented ranges", bad == 0, "%d bad", bad);
    CHECK("flip and branch follow draws 0 and 1 as documented", mapping_bad == 0, "%d", mapping_bad);
    double pf = (double)flips / N, pc = (double)crops / N;
    /* 5 sigma of a binomial(40000, 0.5) is 0.0125 */
    CHECK("flip probability 0.5", fabs(pf - 0.5) < 0.0125, "%.4f", pf);
    CHECK("crop-branch probability 0.5", fabs(pc - 0.5) < 0.0125, "%.4f", pc);
    /* chi-square of the scale choices: 10 dof, 5 sigma ~ 10 + 5 * sqrt(20) = 32 */
    double chi1 = 0, chi2 = 0, chi3 = 0;
    int n1 = N - crops;
    for (int k = 0; k < tc.n_scales; k++) {
        double e1 = (double)n1 / tc.n_scales, e2 = (double)crops / tc.n_scales;
        chi1 += (count1[k] - e1) * (count1[k] - e1) / e1;
        chi2 += (count2[k] - e2) * (count2[k] - e2) / e2;
    }
    for (int k = 0; k < 3; k++) {
        double e = crops / 3.0;
        chi3 += (count_choice[k] - e) * (count_choice[k] - e) / e;
    }
    CHECK("single-resize scales uniform over 480..800 (chi2, 10 dof)", chi1 < 32, "chi2 %.1f", chi1);
    CHECK("crop-branch second scales uniform (chi2, 10 dof)", chi2 < 32, "chi2 %.1f", chi2);
    CHECK("crop-branch first sizes uniform over 400/500/600 (chi2, 2 dof)", chi3 < 18, "chi2 %.1f",
          chi3);
    /* crop width: uniform over [384, min(w1, 600)]; w1 is 533, 666 or 800 for 640x480 */
    double mean_w = (double)crop_w_sum / (crops ? crops : 1);
    double expect_w = ((384 + 533) / 2.0 + 2 * (384 + 600) / 2.0) / 3.0;
    CHECK("crop width mean matches uniform draws", fabs(mean_w - expect_w) < 2.5, "%.2f vs %.2f",
          mean_w, expect_w);
    double chi4 = 0;
    for (int q = 0; q < 4; q++) {
        double e = n_crop_x / 4.0;
        chi4 += (crop_x_hist[q] - e) * (crop_x_hist[q] - e) / e;
    }
    CHECK("crop position uniform (quartiles, chi2 3 dof)", chi4 < 25, "chi2 %.1f over %d", chi4,
          n_crop_x);
    printf("draws over %d seeds: flip %.4f, crop branch %.4f, chi2 scales %.1f / %.1f / %.1f, "
           "crop width mean %.1f (uniform: %.1f)\n", N, pf, pc, chi1, chi2, chi3, mean_w, expect_w);

    TransformPlan a, b;
    transform_plan(&tc, 12345, 500, 375, &a);
    transform_plan(&tc, 12345, 500, 375, &b);
    CHECK("same seed, same plan", memcmp(&a, &b, sizeof(a)) == 0, "differ");

    TransformConfig val;
    transform_config_default(&val, 0);
    transform_plan(&val, 1, 640, 480, &a);
    transform_plan(&val, 2, 640, 480, &b);
    CHECK("val: 640x480 -> 1066x800, no flip, no crop, no randomness",
          a.out_w == 1066 && a.out_h == 800 && !a.flip && !a.crop && memcmp(&a, &b, sizeof(a)) == 0,
          "%dx%d flip %d crop %d", a.out_w, a.out_h, a.flip, a.crop);
    transform_plan(&val, 1, 2000, 500, &a);
    /* s = round(1333 * 500 / 2000) = 333, long side int(333 * 2000 / 500) = 1332 */
    CHECK("val: 2000x500 capped by max_size 1333 -> 1332x333", a.out_w == 1332 && a.out_h == 333,
          "%dx%d", a.out_w, a.out_h);
    int mw, mh;
    transform_plan_min_size(&val, 1, 2560, 1920, &mw, &mh);
    CHECK("plan_min_size = the first resize's size", mw == 1066 && mh == 800, "%dx%d", mw, mh);
}

static void test_config_and_edges(void) {
    TransformConfig tc;
    transform_config_default(&tc, 1);
    CHECK("default scales 480..800 step 32", tc.n_scales == 11 && tc.scales[0] == 480 &&
          tc.scales[10] == 800 && tc.max_size == 1333 && tc.crop_min == 384 && tc.crop_max == 600 &&
          tc.val_size == 800, "n %d", tc.n_scales);
    CHECK("parse '96,112,128'", transform_parse_scales(&tc, "96,112,128") == 0 && tc.n_scales == 3 &&
          tc.scales[2] == 128, "n %d", tc.n_scales);
    CHECK("parse rejects '', '96,,112', '0', 'abc', '96,'",
          transform_parse_scales(&tc, "") == -1 && transform_parse_scales(&tc, "96,,112") == -1 &&
          transform_parse_scales(&tc, "0") == -1 && transform_parse_scales(&tc, "abc") == -1 &&
          transform_parse_scales(&tc, "96,") == -1 && tc.n_scales == 3,
          "accepted");

    /* degenerate: a 1x5000 image at val 800 / max 1333 -> short side round(0.27) = 0 */
    TransformConfig val;
    transform_config_default(&val, 0);
    TransformPlan p;
    CHECK("val plan of 1x5000 refused (short side rounds to 0)",
          transform_plan(&val, 1, 1, 5000, &p) == -1, "accepted");
    uint8_t px[3 * 5000] = {0};
    Image src = {px, 1, 5000, 1, 5000, sizeof(px)};
    Image out = {0};
    CHECK("transform_apply of 1x5000 returns -1 without crashing",
          transform_apply(&val, 1, &src, NULL, &out) == -1, "0");

    /* extreme aspect in the crop branch: the first resize's virtual size is up to 900000 x 600;
     * only the crop region is computed */
    transform_config_default(&tc, 1);
    int seen_crop = 0, ok = 1;
    uint8_t *thin = noise_image(1500, 1);
    Image s2 = {thin, 1500, 1, 1500, 1, 1500 * 3};
    for (uint64_t seed = 0; seed < 64 && seen_crop < 3; seed++) {
        if (transform_plan(&tc, seed, 1500, 1, &p) || !p.crop) continue;
        seen_crop++;
        float box[4] = {0, 0, 1500, 1};
        int lab = 1;
        Boxes b = {1, box, &lab};
        ok &= transform_apply(&tc, seed, &s2, &b, &out) == 0 && out.w == p.out_w && out.h == p.out_h;
    }
    CHECK("1500x1 image, crop branch: virtual first resize of up to 900000x600 handled by region",
          seen_crop > 0 && ok, "seen %d ok %d", seen_crop, ok);
    free(thin);

    /* small image with the default crop range: the documented clamp (crop = whole side) */
    uint8_t *small = noise_image(50, 40);
    Image s3 = {small, 50, 40, 50, 40, 50 * 40 * 3};
    tc.resize_choices[0] = tc.resize_choices[1] = tc.resize_choices[2] = 100;
    int n_ok = 0, n_crop = 0;
    for (uint64_t seed = 0; seed < 32; seed++) {
        if (transform_plan(&tc, seed, 50, 40, &p)) continue;
        if (p.crop) {
            n_crop++;
            n_ok += p.crop_w == p.w1 && p.crop_h == p.h1 && p.crop_x == 0 && p.crop_y == 0;
        }
        transform_apply(&tc, seed, &s3, NULL, &out);
    }
    CHECK("first resize smaller than crop_min: crop keeps the whole image", n_crop > 0 && n_ok == n_crop,
          "%d of %d", n_ok, n_crop);
    free(small);

    /* invalid plans are refused by transform_execute */
    uint8_t *img = noise_image(20, 10);
    Image s4 = {img, 20, 10, 20, 10, 600};
    TransformPlan bad = {20, 10, 0, 1, 10, 10, 20, 10, 5, 0, 16, 10, 20, 10};
    CHECK("transform_execute refuses a crop outside the first resize", transform_execute(&bad, &s4,
          NULL, &out, NULL) == -1, "accepted");
    TransformPlan wrong = {21, 10, 0, 0, 10, 0, 20, 10, 0, 0, 0, 0, 20, 10};
    CHECK("transform_execute refuses a plan for another image size",
          transform_execute(&wrong, &s4, NULL, &out, NULL) == -1, "accepted");
    free(img);
    image_free(&out);
}

/* ------------------------------------------------------------------------------------------ */
/* DCT-scaled decode vs full decode + resize, and throughput */

static uint8_t *jpeg_encode(const uint8_t *rgb, int w, int h, int quality, size_t *len) {
    tjhandle tj = tjInitCompress();
    unsigned char *buf = NULL;
    unsigned long n = 0;
    uint8_t *out = NULL;
    if (tjCompress2(tj, rgb, w, 0, h, TJPF_RGB, &buf, &n, TJSAMP_420, quality, 0) == 0) {
        out = malloc(n);
        memcpy(out, buf, n);
        *len = n;
    }
    tjFree(buf);
    tjDestroy(tj);
    return out;
}

static void test_dct_scaled_tolerance(void) {
    const int w = 1280, h = 960;
    uint8_t *rgb = photo_like(w, h);
    size_t len = 0;
    uint8_t *jpg = jpeg_encode(rgb, w, h, 90, &len);
    Decoder *d = decoder_create();
    char err[256];
    Image full = {0}, scaled = {0}, out_full = {0}, out_scaled = {0};
    decode_image(d, jpg, len, 0, 0, 0, &full, err, sizeof(err));
    TransformScratch scr = {0};
    /* configurations whose first resize is at most half of 1280x960 */
    TransformConfig cfgs[3];
    transform_config_default(&cfgs[0], 0);
    cfgs[0].val_size = 240;               /* 320x240: DCT 1/4 */
    transform_config_default(&cfgs[1], 1);
    transform_parse_scales(&cfgs[1], "96,112,128,160,200,240,300,360,420,480");
    cfgs[1].max_size = 800;
    cfgs[1].resize_choices[0] = 200;
    cfgs[1].resize_choices[1] = 300;
    cfgs[1].resize_choices[2] = 400;
    cfgs[1].crop_min = 150;
    cfgs[1].crop_max = 260;
    transform_config_default(&cfgs[2], 0);
    cfgs[2].val_size = 97;                /* 129x97: DCT 1/8 */
    double worst_mean = 0;
    int worst_max = 0, n_scaled = 0, n_cases = 0, hist_over[4] = {0};
    size_t n_values = 0;
    for (int c = 0; c < 3; c++)
        for (uint64_t seed = 0; seed < (c == 1 ? 24u : 1u); seed++) {
            int mw, mh;
            transform_plan_min_size(&cfgs[c], seed, w, h, &mw, &mh);
            decode_image(d, jpg, len, mw, mh, 0, &scaled, err, sizeof(err));
            if (scaled.w == w) continue; /* target above half the source: no DCT scaling */
            n_scaled++;
            int r1 = transform_apply(&cfgs[c], seed, &full, NULL, &out_full);
            TransformPlan p;
            transform_plan(&cfgs[c], seed, w, h, &p);
            int r2 = transform_execute(&p, &scaled, NULL, &out_scaled, &scr);
            if (r1 || r2 || out_full.w != out_scaled.w || out_full.h != out_scaled.h) {
                worst_max = 999;
                continue;
            }
            n_cases++;
            double mean;
            size_t n = (size_t)out_full.w * out_full.h * 3;
            int md = max_diff(out_full.rgb, out_scaled.rgb, n, &mean);
            for (size_t i = 0; i < n; i++) {
                int dd = abs((int)out_full.rgb[i] - (int)out_scaled.rgb[i]);
                hist_over[0] += dd > 4;
                hist_over[1] += dd > 8;
                hist_over[2] += dd > 16;
                hist_over[3] += dd > 32;
            }
            n_values += n;
            if (mean > worst_mean) worst_mean = mean;
            if (md > worst_max) worst_max = md;
        }
    CHECK("DCT-scaled decodes happened", n_scaled >= 5 && n_cases == n_scaled, "%d scaled, %d compared",
          n_scaled, n_cases);
    /* measured (26 cases): worst mean 0.63 levels, worst max 39 on the discs' sharp edges, > 16
     * levels for 0.012 % of the values */
    CHECK("DCT-scaled + resize vs full decode + resize: mean |diff| < 2 levels", worst_mean < 2.0,
          "worst mean %.3f", worst_mean);
    CHECK("DCT-scaled + resize vs full decode + resize: max |diff| < 64, > 16 for < 0.5 % of values",
          worst_max < 64 && hist_over[2] < 0.005 * n_values, "max %d, %d of %zu above 16", worst_max,
          hist_over[2], n_values);
    printf("DCT-scaled vs full decode + resize (%d cases, 1280x960 q90 photo-like): worst mean "
           "|diff| %.3f, worst max %d; values above 4/8/16/32 levels: %.3f%% / %.3f%% / %.4f%% / "
           "%.4f%%\n", n_cases, worst_mean, worst_max, 100.0 * hist_over[0] / n_values,
           100.0 * hist_over[1] / n_values, 100.0 * hist_over[2] / n_values,
           100.0 * hist_over[3] / n_values);
    image_free(&full);
    image_free(&scaled);
    image_free(&out_full);
    image_free(&out_scaled);
    transform_scratch_free(&scr);
    decoder_destroy(d);
    free(jpg);
    free(rgb);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Decode + train transform of a 640x480 q90 JPEG on this core. The machine is shared, so the
 * median per-image time is reported next to the mean. */
static void test_throughput(void) {
    const int w = 640, h = 480;
    uint8_t *rgb = photo_like(w, h);
    size_t len = 0;
    uint8_t *jpg = jpeg_encode(rgb, w, h, 90, &len);
    Decoder *d = decoder_create();
    TransformConfig tc;
    transform_config_default(&tc, 1);
    TransformScratch scr = {0};
    Image img = {0}, out = {0};
    char err[256];
    float boxes[4 * 8];
    int labels[8];
    enum { N = 60 };
    double t_dec[N], t_tf[N], t_all[N], sum_dec = 0, sum_tf = 0;
    int64_t out_pixels = 0;
    for (int i = -3; i < N; i++) { /* 3 warm-up iterations */
        uint64_t seed = rng_hash64(5, (uint64_t)(i + 3));
        double t0 = now_s();
        int mw, mh;
        transform_plan_min_size(&tc, seed, w, h, &mw, &mh);
        decode_image(d, jpg, len, mw, mh, 0, &img, err, sizeof(err));
        double t1 = now_s();
        for (int k = 0; k < 8; k++) {
            boxes[4 * k + 0] = 10.0f * k;
            boxes[4 * k + 1] = 5.0f * k;
            boxes[4 * k + 2] = 10.0f * k + 200;
            boxes[4 * k + 3] = 5.0f * k + 150;
            labels[k] = k;
        }
        Boxes b = {8, boxes, labels};
        TransformPlan p;
        transform_plan(&tc, seed, img.full_w, img.full_h, &p);
        transform_execute(&p, &img, &b, &out, &scr);
        double t2 = now_s();
        if (i < 0) continue;
        t_dec[i] = t1 - t0;
        t_tf[i] = t2 - t1;
        t_all[i] = t2 - t0;
        sum_dec += t1 - t0;
        sum_tf += t2 - t1;
        out_pixels += (int64_t)out.w * out.h;
    }
    qsort(t_dec, N, sizeof(double), cmp_double);
    qsort(t_tf, N, sizeof(double), cmp_double);
    qsort(t_all, N, sizeof(double), cmp_double);
    printf("throughput, one core, 640x480 q90 photo-like JPEG (%zu bytes), train transform "
           "(mean output %.0f kpixels): median decode %.2f ms + transform %.2f ms, %.0f images/s "
           "at the median (%.0f at the mean)\n", len, out_pixels / 1e3 / N, 1e3 * t_dec[N / 2],
           1e3 * t_tf[N / 2], 1.0 / t_all[N / 2], N / (sum_dec + sum_tf));
    CHECK("decode + train transform runs", out.w > 0 && out.h > 0, "no output");
    transform_scratch_free(&scr);
    image_free(&img);
    image_free(&out);
    decoder_destroy(d);
    free(jpg);
    free(rgb);
}

int main(void) {
    test_fixtures();
    test_region_and_flip();
    test_draws();
    test_config_and_edges();
    test_dct_scaled_tolerance();
    test_throughput();
    return test_finish();
}
