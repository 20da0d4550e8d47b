/* resize.c - bilinear resampling with antialiasing, bit-compatible with PIL's
 * Image.resize(size, Image.BILINEAR) on RGB images (see transforms.h).
 *
 * The method (PIL's separable convolution, written here from its description):
 *   - per axis, scale = in / out and filterscale = max(scale, 1); the triangle filter
 *     tri(x) = max(0, 1 - |x|) is stretched by filterscale, so its support is filterscale input
 *     pixels on each side of the output pixel's centre (in + 0.5) * scale: this is the
 *     antialiasing when downscaling; upscaling is plain bilinear interpolation;
 *   - each output pixel's taps run over source indices [int(c - support + 0.5),
 *     int(c + support + 0.5)) clipped to the image, weight tri((i - c + 0.5) / filterscale),
 *     normalised to sum 1 in double, then rounded to 22-bit fixed point (PIL's PRECISION_BITS:
 *     32 bits - 8 bits of pixel - 2 bits of headroom);
 *   - horizontal pass first (only over the source rows the vertical pass needs), rounded to
 *     uint8, then the vertical pass; each sum starts at 0.5 in fixed point and is clipped to
 *     [0, 255] after the shift. An axis whose size does not change is not resampled.
 * The coefficients are computed once per output column / row; the passes are integer-only.
 * A region of the output can be computed alone (the crop after a resize): every output pixel
 * depends only on its own coordinates, so the region is bitwise the crop of the full result.
 * A horizontal flip of the source is folded into the horizontal coefficients (taps read the
 * source mirrored), bitwise equal to flipping first and resizing after. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "transforms.h"
#ifdef __AVX2__
#include <immintrin.h>
#endif

#define PRECISION_BITS 22

/* The taps of a run of output pixels along one axis. */
typedef struct {
    int n;          /* output pixels */
    int ksize;      /* coefficients stored per output (>= the largest count) */
    int taps;       /* padded taps: every output has exactly this many (0: counts vary) */
    int in_size;    /* source pixels along the axis */
    int *first;     /* [n] first source index */
    int *count;     /* [n] number of taps */
    int32_t *coef;  /* [n, ksize] fixed-point weights */
    int32_t *coef_t;/* [taps, n] the same, tap-major (padded taps only; for the SIMD pass) */
} Taps;

void resize_scratch_free(ResizeScratch *s) {
    free(s->buf);
    s->buf = NULL;
    s->cap = 0;
}

/* Grows the scratch buffer to at least bytes, keeping its first keep bytes. */
static int scratch_reserve(ResizeScratch *s, size_t bytes, size_t keep) {
    if (s->cap >= bytes) return 0;
    void *p = malloc(bytes);
    if (!p) return -1;
    if (keep) memcpy(p, s->buf, keep);
    free(s->buf);
    s->buf = p;
    s->cap = bytes;
    return 0;
}

static double triangle(double x) {
    if (x < 0.0) x = -x;
    return x < 1.0 ? 1.0 - x : 0.0;
}

/* Max coefficients per output for in -> out (PIL: 2 * ceil(support) + 1). */
static int taps_ksize(int in_size, int out_size) {
    double filterscale = (double)in_size / out_size;
    if (filterscale < 1.0) filterscale = 1.0;
    return (int)ceil(filterscale) * 2 + 1;
}

static size_t align64(size_t n) { return (n + 63) & ~(size_t)63; }

static size_t taps_bytes(int n, int ksize) {
    return align64(sizeof(int) * (size_t)n) * 2 + align64(sizeof(int32_t) * (size_t)n * ksize) * 2;
}

/* Lays the arrays of t out in mem (taps_bytes(n, ksize) bytes). */
static void taps_place(Taps *t, void *mem, int n, int ksize) {
    char *p = mem;
    t->n = n;
    t->ksize = ksize;
    t->first = (int *)p;
    p += align64(sizeof(int) * (size_t)n);
    t->count = (int *)p;
    p += align64(sizeof(int) * (size_t)n);
    t->coef = (int32_t *)p;
    p += align64(sizeof(int32_t) * (size_t)n * ksize);
    t->coef_t = (int32_t *)p;
}

static void taps_window(double center, double support, int in_size, int *xmin, int *xmax) {
    *xmin = (int)(center - support + 0.5);
    if (*xmin < 0) *xmin = 0;
    *xmax = (int)(center + support + 0.5);
    if (*xmax > in_size) *xmax = in_size;
}

/* Fills t for outputs [out_first, out_first + t->n) of a resize in_size -> out_size. With
 * mirror, the taps read the source mirrored (index i becomes in_size - 1 - i), which is the
 * resize of the horizontally flipped source. With pad, every output gets the same number of
 * taps (t->taps, the largest count): windows are widened with zero weights (moved left at the
 * right edge), which leaves the integer sums unchanged and lets the pass run a fixed-length,
 * unrolled loop (2 taps when upscaling, where PIL's ksize is 3). The floating-point
 * expressions follow PIL's order of operations so that the rounded coefficients are
 * identical. */
static void taps_compute(Taps *t, int in_size, int out_size, int out_first, int mirror, int pad) {
    double scale = (double)in_size / out_size;
    double filterscale = scale < 1.0 ? 1.0 : scale;
    double support = 1.0 * filterscale; /* the triangle filter's support is 1 */
    double ss = 1.0 / filterscale;
    int xmin, xmax;
    t->taps = 0;
    t->in_size = in_size;
    for (int o = 0; pad && o < t->n; o++) {
        taps_window((out_first + o + 0.5) * scale, support, in_size, &xmin, &xmax);
        if (xmax - xmin > t->taps) t->taps = xmax - xmin;
    }
    for (int o = 0; o < t->n; o++) {
        int xx = out_first + o;
        double center = (xx + 0.5) * scale;
        taps_window(center, support, in_size, &xmin, &xmax);
        int count = xmax - xmin;
        int n_taps = pad ? t->taps : count, start = xmin;
        if (start + n_taps > in_size) start = in_size - n_taps;
        int off = xmin - start; /* position of the first real tap in the window */
        double ww = 0.0;
        for (int x = 0; x < count; x++) ww += triangle((x + xmin - center + 0.5) * ss);
        int32_t *k = t->coef + (size_t)o * t->ksize;
        for (int x = 0; x < t->ksize; x++) k[x] = 0;
        for (int x = 0; x < count; x++) {
            /* recomputed rather than stored: ksize can be large for strong downscales */
            double w = triangle((x + xmin - center + 0.5) * ss);
            double v = ww != 0.0 ? w / ww : w;
            /* weights are >= 0, so PIL's rounding is (int)(0.5 + v * 2^22) */
            int32_t q = (int32_t)(0.5 + v * (1 << PRECISION_BITS));
            k[mirror ? n_taps - 1 - (off + x) : off + x] = q;
        }
        t->first[o] = mirror ? in_size - start - n_taps : start;
        t->count[o] = n_taps;
        for (int x = 0; pad && x < n_taps; x++) t->coef_t[(size_t)x * t->n + o] = k[x];
    }
}

static inline uint8_t clip_shift(int32_t acc) {
    int32_t v = acc >> PRECISION_BITS;
    return (uint8_t)(v > 255 ? 255 : v < 0 ? 0 : v);
}

/* Outputs [o0, o1) of one row of the horizontal pass with K = t->taps taps per output (a
 * constant after inlining, so the tap loop is unrolled). */
static inline __attribute__((always_inline)) void row_fixed_taps(const uint8_t *restrict row,
                                                                 const Taps *t, int o0, int o1,
                                                                 uint8_t *restrict out,
                                                                 const int K) {
    const int32_t half = 1 << (PRECISION_BITS - 1);
    for (int o = o0; o < o1; o++) {
        const uint8_t *p = row + (size_t)t->first[o] * 3;
        const int32_t *k = t->coef + (size_t)o * t->ksize;
        int32_t a0 = half, a1 = half, a2 = half;
#pragma GCC unroll 8
        for (int i = 0; i < K; i++) {
            a0 += p[3 * i + 0] * k[i];
            a1 += p[3 * i + 1] * k[i];
            a2 += p[3 * i + 2] * k[i];
        }
        out[3 * o + 0] = clip_shift(a0);
        out[3 * o + 1] = clip_shift(a1);
        out[3 * o + 2] = clip_shift(a2);
    }
}

#ifdef __AVX2__
/* The same for 8 outputs at a time: per tap, one gather of 4 bytes (R, G, B and the next
 * pixel's R) from each output's source pixel, then 32-bit multiply-adds per channel, exactly
 * the scalar integer sums. Blocks whose gather could read past the row's last byte, and the
 * last outputs (the 16-byte stores spill 4 bytes into the following outputs, which are written
 * after), go through the scalar loop. */
static inline __attribute__((always_inline)) void row_fixed_taps_avx2(const uint8_t *restrict row,
                                                                      const Taps *t,
                                                                      uint8_t *restrict out,
                                                                      const int K) {
    const __m256i half = _mm256_set1_epi32(1 << (PRECISION_BITS - 1));
    const __m256i byte = _mm256_set1_epi32(255);
    /* per 128-bit lane: 4 pixels as R,G,B,0 dwords -> 12 packed bytes */
    const __m256i pack = _mm256_setr_epi8(0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1,
                                          0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1);
    int o = 0;
    for (; o + 10 <= t->n; o += 8) {
        int lo = t->first[o], hi = t->first[o + 7]; /* monotonic: mirrored taps decrease */
        if ((lo > hi ? lo : hi) + K >= t->in_size) {
            row_fixed_taps(row, t, o, o + 8, out, K);
            continue;
        }
        __m256i first = _mm256_loadu_si256((const __m256i *)(t->first + o));
        __m256i offset = _mm256_add_epi32(first, _mm256_slli_epi32(first, 1)); /* 3 * first */
        __m256i r = half, g = half, b = half;
#pragma GCC unroll 8
        for (int i = 0; i < K; i++) {
            __m256i px = _mm256_i32gather_epi32((const int *)(row + 3 * i), offset, 1);
            __m256i w = _mm256_loadu_si256((const __m256i *)(t->coef_t + (size_t)i * t->n + o));
            r = _mm256_add_epi32(r, _mm256_mullo_epi32(_mm256_and_si256(px, byte), w));
            g = _mm256_add_epi32(
                g, _mm256_mullo_epi32(_mm256_and_si256(_mm256_srli_epi32(px, 8), byte), w));
            b = _mm256_add_epi32(
                b, _mm256_mullo_epi32(_mm256_and_si256(_mm256_srli_epi32(px, 16), byte), w));
        }
        /* weights are >= 0, so the sums are >= 0: only the upper clip is needed */
        r = _mm256_min_epi32(_mm256_srai_epi32(r, PRECISION_BITS), byte);
        g = _mm256_min_epi32(_mm256_srai_epi32(g, PRECISION_BITS), byte);
        b = _mm256_min_epi32(_mm256_srai_epi32(b, PRECISION_BITS), byte);
        __m256i rgb = _mm256_or_si256(r, _mm256_or_si256(_mm256_slli_epi32(g, 8),
                                                         _mm256_slli_epi32(b, 16)));
        rgb = _mm256_shuffle_epi8(rgb, pack);
        _mm_storeu_si128((__m128i *)(out + 3 * o), _mm256_castsi256_si128(rgb));
        _mm_storeu_si128((__m128i *)(out + 3 * o + 12), _mm256_extracti128_si256(rgb, 1));
    }
    row_fixed_taps(row, t, o, t->n, out, K);
}
#define ROW_FIXED(row, t, out, K) row_fixed_taps_avx2(row, t, out, K)
#else
#define ROW_FIXED(row, t, out, K) row_fixed_taps(row, t, 0, (t)->n, out, K)
#endif

static void row_any_taps(const uint8_t *restrict row, const Taps *t, uint8_t *restrict out) {
    const int32_t half = 1 << (PRECISION_BITS - 1);
    for (int o = 0; o < t->n; o++) {
        const uint8_t *p = row + (size_t)t->first[o] * 3;
        const int32_t *k = t->coef + (size_t)o * t->ksize;
        int32_t a0 = half, a1 = half, a2 = half;
        for (int i = 0, n = t->count[o]; i < n; i++) {
            a0 += p[3 * i + 0] * k[i];
            a1 += p[3 * i + 1] * k[i];
            a2 += p[3 * i + 2] * k[i];
        }
        out[3 * o + 0] = clip_shift(a0);
        out[3 * o + 1] = clip_shift(a1);
        out[3 * o + 2] = clip_shift(a2);
    }
}

/* Horizontal pass: rows [0, n_rows) of src (RGB, row stride src_stride) into tmp ([n_rows,
 * t->n, 3], rows tmp_stride apart). */
static void pass_horizontal(const uint8_t *src, ptrdiff_t src_stride, int n_rows, const Taps *t,
                            uint8_t *tmp, ptrdiff_t tmp_stride) {
    for (int y = 0; y < n_rows; y++) {
        const uint8_t *row = src + y * src_stride;
        uint8_t *out = tmp + y * tmp_stride;
        switch (t->taps) {
        case 2: ROW_FIXED(row, t, out, 2); break; /* upscaling */
        case 3: ROW_FIXED(row, t, out, 3); break;
        case 4: ROW_FIXED(row, t, out, 4); break; /* down by <= 2 */
        case 5: ROW_FIXED(row, t, out, 5); break;
        case 6: ROW_FIXED(row, t, out, 6); break; /* down by <= 3 */
        case 7: ROW_FIXED(row, t, out, 7); break;
        default: row_any_taps(row, t, out);
        }
    }
}

/* The vertical pass's inner loops; `omp simd` keeps them vectorised whatever the cost model. */
static void accumulate_row(int32_t *restrict acc, const uint8_t *restrict row, int32_t w, int n) {
#pragma omp simd
    for (int i = 0; i < n; i++) acc[i] += row[i] * w;
}

static void store_row(uint8_t *restrict out, const int32_t *restrict acc, int n) {
#pragma omp simd
    for (int i = 0; i < n; i++) out[i] = clip_shift(acc[i]);
}

static void pass_vertical(const uint8_t *src, ptrdiff_t src_stride, int row0, const Taps *t,
                          int width3, uint8_t *dst, ptrdiff_t dst_stride, int32_t *acc) {
    const int32_t half = 1 << (PRECISION_BITS - 1);
    for (int o = 0; o < t->n; o++) {
#pragma omp simd
        for (int i = 0; i < width3; i++) acc[i] = half;
        const int32_t *k = t->coef + (size_t)o * t->ksize;
        for (int j = 0; j < t->count[o]; j++)
            accumulate_row(acc, src + (t->first[o] - row0 + j) * src_stride, k[j], width3);
        store_row(dst + o * dst_stride, acc, width3);
    }
}

static void copy_rows(const uint8_t *src, ptrdiff_t src_stride, int n_rows, size_t row_bytes,
                      uint8_t *dst, ptrdiff_t dst_stride) {
    for (int y = 0; y < n_rows; y++) memcpy(dst + y * dst_stride, src + y * src_stride, row_bytes);
}

int resize_bilinear_aa_region(const uint8_t *src, int sw, int sh, ptrdiff_t src_stride,
                              int flip_x, int dw, int dh, int x0, int y0, int rw, int rh,
                              uint8_t *dst, ptrdiff_t dst_stride, ResizeScratch *scratch) {
    if (sw < 1 || sh < 1 || dw < 1 || dh < 1 || rw < 1 || rh < 1 || x0 < 0 || y0 < 0 ||
        x0 > dw - rw || y0 > dh - rh)
        return -1;
    int need_h = dw != sw || flip_x, need_v = dh != sh;
    int kh = need_h ? taps_ksize(sw, dw) : 1, kv = need_v ? taps_ksize(sh, dh) : 1;

    /* Layout of the scratch: horizontal taps, vertical taps, accumulator row, tmp image. */
    size_t off_v = need_h ? taps_bytes(rw, kh) : 0;
    size_t off_acc = off_v + (need_v ? taps_bytes(rh, kv) : 0);
    size_t off_tmp = off_acc + (need_v ? align64(sizeof(int32_t) * (size_t)rw * 3) : 0);
    Taps th = {0}, tv = {0};
    int row_first = y0, row_last = y0 + rh; /* source rows the vertical pass reads */
    if (need_v) {
        /* the vertical taps tell which source rows are needed, hence the tmp image's size */
        if (scratch_reserve(scratch, off_tmp, 0)) return -1;
        taps_place(&tv, (char *)scratch->buf + off_v, rh, kv);
        taps_compute(&tv, sh, dh, y0, 0, 0);
        row_first = tv.first[0];
        row_last = tv.first[rh - 1] + tv.count[rh - 1];
    }
    size_t tmp_bytes = need_h && need_v ? (size_t)(row_last - row_first) * rw * 3 : 0;
    if (scratch_reserve(scratch, off_tmp + tmp_bytes, need_v ? off_tmp : 0)) return -1;
    if (need_v) taps_place(&tv, (char *)scratch->buf + off_v, rh, kv); /* buffer may have moved */
    char *base = scratch->buf;
    if (need_h) {
        taps_place(&th, base, rw, kh);
        taps_compute(&th, sw, dw, x0, flip_x, 1);
    }

    const uint8_t *rows = src + (ptrdiff_t)row_first * src_stride; /* [row_last - row_first, sw, 3] */
    if (need_h && need_v) {
        uint8_t *tmp = (uint8_t *)base + off_tmp; /* [row_last - row_first, rw, 3] */
        pass_horizontal(rows, src_stride, row_last - row_first, &th, tmp, (ptrdiff_t)rw * 3);
        pass_vertical(tmp, (ptrdiff_t)rw * 3, row_first, &tv, rw * 3, dst, dst_stride,
                      (int32_t *)(base + off_acc));
    } else if (need_h) {
        pass_horizontal(rows, src_stride, rh, &th, dst, dst_stride);
    } else if (need_v) {
        pass_vertical(src + (size_t)x0 * 3, src_stride, 0, &tv, rw * 3, dst, dst_stride,
                      (int32_t *)(base + off_acc));
    } else {
        copy_rows(rows + (size_t)x0 * 3, src_stride, rh, (size_t)rw * 3, dst, dst_stride);
    }
    return 0;
}

int resize_bilinear_aa(const uint8_t *src, int sw, int sh, uint8_t *dst, int dw, int dh) {
    ResizeScratch s = {0};
    int rc = resize_bilinear_aa_region(src, sw, sh, (ptrdiff_t)sw * 3, 0, dw, dh, 0, 0, dw, dh,
                                       dst, (ptrdiff_t)dw * 3, &s);
    resize_scratch_free(&s);
    return rc;
}
