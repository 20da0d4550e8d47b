/* backend_cpu_conv.c - convolution (im2col + one sgemm) and max-pooling, CNHW layout.
 *
 * With x: [Cin, B, H, W] the column matrix col: [K, B*Ho*Wo], K = Cin*kh*kw, row
 * r = (ci*kh + i)*kw + j, column n = (b*Ho + oy)*Wo + ox, holds
 *     x[ci, b, oy*stride - pad + i*dil, ox*stride - pad + j*dil]   (0 outside the image),
 * and the convolution is the single GEMM  y [Cout, B*Ho*Wo] = w [Cout, K] x col, whose result is
 * already CNHW. A 1x1 stride-1 unpadded convolution needs no col at all: x is the column matrix.
 * The column matrix lives in the backend workspace; when it would exceed CONV_COL_MAX_FLOATS
 * the batch is processed in groups of whole images (one sgemm per group) to bound memory. */
#include <math.h>
#include <string.h>
#include "backend_cpu_internal.h"

/* 128 MiB of columns at most; typical training shapes fit in one group. */
#define CONV_COL_MAX_FLOATS ((size_t)32 << 20)
static size_t g_col_max_floats = CONV_COL_MAX_FLOATS;

void cpu_conv_set_col_limit(size_t floats) {
    g_col_max_floats = floats ? floats : CONV_COL_MAX_FLOATS;
}

static void conv_check_shape(const char *op, const ConvShape *s) {
    ConvShape t = *s;
    conv_shape_init(&t);
    if (s->B < 1 || s->Cin < 1 || s->Cout < 1 || s->H < 1 || s->W < 1 || s->kh < 1 ||
        s->kw < 1 || s->stride < 1 || s->pad < 0 || s->dil < 1)
        cpu_shape_error(op, "ConvShape has a non-positive size, stride or dilation");
    if (t.Ho != s->Ho || t.Wo != s->Wo)
        cpu_shape_error(op, "ConvShape Ho/Wo do not match conv_shape_init()");
    if (s->Ho < 1 || s->Wo < 1) cpu_shape_error(op, "output is empty (kernel larger than input)");
}

static int conv_is_pointwise(const ConvShape *s) {
    return s->kh == 1 && s->kw == 1 && s->stride == 1 && s->pad == 0;
}

/* Images per column group: as many as fit under the column limit, at least one. */
static int conv_images_per_group(const ConvShape *s) {
    size_t per_image = (size_t)s->Cin * s->kh * s->kw * s->Ho * s->Wo;
    size_t n = g_col_max_floats / per_image;
    if (n < 1) n = 1;
    if (n > (size_t)s->B) n = (size_t)s->B;
    return (int)n;
}

/* Output positions o in [0, n_out) whose input position o*stride + off lies in [0, n_in):
 * the half-open range [*lo, *hi) (empty when *lo == *hi). */
static void valid_output_range(int off, int stride, int n_in, int n_out, int *lo, int *hi) {
    int l = off >= 0 ? 0 : (-off + stride - 1) / stride;
    int h = n_in - 1 - off < 0 ? 0 : (n_in - 1 - off) / stride + 1;
    if (h > n_out) h = n_out;
    if (l > h) l = h;
    *lo = l;
    *hi = h;
}

/* col [K, nb*Ho*Wo] from images [b0, b0+nb) of x [Cin, B, H, W]. */
static void im2col(const ConvShape *s, const float *x, int b0, int nb, float *col) {
    const int khw = s->kh * s->kw, K = s->Cin * khw;
    const int H = s->H, W = s->W, Ho = s->Ho, Wo = s->Wo, st = s->stride;
    const size_t plane_in = (size_t)H * W, plane_out = (size_t)Ho * Wo;
    const size_t ncol = (size_t)nb * plane_out;
#pragma omp parallel for schedule(static) if ((size_t)K * ncol > CPU_PAR_MIN)
    for (int r = 0; r < K; r++) {
        const int ci = r / khw, i = (r / s->kw) % s->kh, j = r % s->kw;
        const int off_y = i * s->dil - s->pad, off_x = j * s->dil - s->pad;
        int ox_lo, ox_hi;
        valid_output_range(off_x, st, W, Wo, &ox_lo, &ox_hi);
        float *dst_row = col + (size_t)r * ncol; /* [nb, Ho, Wo] */
        for (int b = 0; b < nb; b++) {
            const float *xp = x + ((size_t)ci * s->B + b0 + b) * plane_in; /* [H, W] */
            for (int oy = 0; oy < Ho; oy++) {
                float *d = dst_row + (size_t)b * plane_out + (size_t)oy * Wo;
                const int iy = oy * st + off_y;
                if (iy < 0 || iy >= H) {
                    memset(d, 0, (size_t)Wo * sizeof(float));
                    continue;
                }
                const float *src = xp + (size_t)iy * W + off_x; /* src[ox*st] = input pixel */
                for (int ox = 0; ox < ox_lo; ox++) d[ox] = 0.0f;
                if (st == 1) {
                    memcpy(d + ox_lo, src + ox_lo, (size_t)(ox_hi - ox_lo) * sizeof(float));
                } else {
                    for (int ox = ox_lo; ox < ox_hi; ox++) d[ox] = src[(size_t)ox * st];
                }
                for (int ox = ox_hi; ox < Wo; ox++) d[ox] = 0.0f;
            }
        }
    }
}

/* dx [Cin, B, H, W] (images [b0, b0+nb)) += the scatter of col [K, nb*Ho*Wo]; the adjoint of
 * im2col. Each (channel, image) plane of dx is written by one thread only. */
static void col2im_add(const ConvShape *s, const float *col, int b0, int nb, float *dx) {
    const int H = s->H, W = s->W, Ho = s->Ho, Wo = s->Wo, st = s->stride;
    const size_t plane_in = (size_t)H * W, plane_out = (size_t)Ho * Wo;
    const size_t ncol = (size_t)nb * plane_out;
    const long planes = (long)s->Cin * nb;
#pragma omp parallel for schedule(static) if ((size_t)s->Cin * s->kh * s->kw * ncol > CPU_PAR_MIN)
    for (long pl = 0; pl < planes; pl++) {
        const int ci = (int)(pl / nb), b = (int)(pl % nb);
        float *dxp = dx + ((size_t)ci * s->B + b0 + b) * plane_in; /* [H, W] */
        for (int i = 0; i < s->kh; i++) {
            const int off_y = i * s->dil - s->pad;
            for (int j = 0; j < s->kw; j++) {
                const int off_x = j * s->dil - s->pad;
                int ox_lo, ox_hi;
                valid_output_range(off_x, st, W, Wo, &ox_lo, &ox_hi);
                const int r = (ci * s->kh + i) * s->kw + j;
                const float *src = col + (size_t)r * ncol + (size_t)b * plane_out; /* [Ho, Wo] */
                for (int oy = 0; oy < Ho; oy++) {
                    const int iy = oy * st + off_y;
                    if (iy < 0 || iy >= H) continue;
                    float *d = dxp + (size_t)iy * W + off_x;
                    const float *c = src + (size_t)oy * Wo;
                    if (st == 1) {
#pragma omp simd
                        for (int ox = ox_lo; ox < ox_hi; ox++) d[ox] += c[ox];
                    } else {
                        for (int ox = ox_lo; ox < ox_hi; ox++) d[(size_t)ox * st] += c[ox];
                    }
                }
            }
        }
    }
}

/* Every row co of y [Cout, N] set to bias[co]; the GEMM then accumulates onto it (beta = 1),
 * which costs no more than the zeroing pass a beta = 0 GEMM does anyway. */
static void fill_rows_with_bias(float *y, const float *bias, int rows, size_t N) {
#pragma omp parallel for schedule(static) if ((size_t)rows * N > CPU_PAR_MIN)
    for (int r = 0; r < rows; r++) {
        float *yr = y + (size_t)r * N;
        const float b = bias[r];
#pragma omp simd
        for (size_t n = 0; n < N; n++) yr[n] = b;
    }
}

void cpu_conv2d_forward(const ConvShape *s, const float *x, const float *w, const float *bias,
                        float *y) {
    conv_check_shape("conv2d_forward", s);
    const int K = s->Cin * s->kh * s->kw;
    const size_t P = (size_t)s->Ho * s->Wo, N = (size_t)s->B * P;
    float beta = 0.0f;
    if (bias) {
        fill_rows_with_bias(y, bias, s->Cout, N);
        beta = 1.0f;
    }
    if (conv_is_pointwise(s)) { /* x [Cin, B*H*W] is the column matrix */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, s->Cout, (int)N, K, 1.0f, w, K, x,
                    (int)N, beta, y, (int)N);
        return;
    }
    const int group = conv_images_per_group(s);
    float *col = cpu_workspace((size_t)K * group * P); /* [K, group*Ho*Wo] */
    for (int b0 = 0; b0 < s->B; b0 += group) {
        const int nb = s->B - b0 < group ? s->B - b0 : group;
        const int ncol = (int)((size_t)nb * P);
        im2col(s, x, b0, nb, col);
        /* y[:, b0*P : (b0+nb)*P] (row stride N) = w x col */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, s->Cout, ncol, K, 1.0f, w, K, col,
                    ncol, beta, y + (size_t)b0 * P, (int)N);
    }
}

void cpu_conv2d_backward_data(const ConvShape *s, const float *dy, const float *w, float *dx) {
    if (!dx) return;
    conv_check_shape("conv2d_backward_data", s);
    const int K = s->Cin * s->kh * s->kw;
    const size_t P = (size_t)s->Ho * s->Wo, N = (size_t)s->B * P;
    if (conv_is_pointwise(s)) { /* dx [Cin, N] += w^T dy */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, s->Cin, (int)N, s->Cout, 1.0f, w, K,
                    dy, (int)N, 1.0f, dx, (int)N);
        return;
    }
    const int group = conv_images_per_group(s);
    float *col = cpu_workspace((size_t)K * group * P); /* [K, group*Ho*Wo] */
    for (int b0 = 0; b0 < s->B; b0 += group) {
        const int nb = s->B - b0 < group ? s->B - b0 : group;
        const int ncol = (int)((size_t)nb * P);
        /* col = w^T [K, Cout] x dy[:, b0*P : (b0+nb)*P] */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, K, ncol, s->Cout, 1.0f, w, K,
                    dy + (size_t)b0 * P, (int)N, 0.0f, col, ncol);
        col2im_add(s, col, b0, nb, dx);
    }
}

/* dbias[r] += sum of row r of dy [rows, N] */
static void add_row_sums(const float *dy, float *dbias, int rows, size_t N) {
#pragma omp parallel for schedule(static) if ((size_t)rows * N > CPU_PAR_MIN)
    for (int r = 0; r < rows; r++) {
        const float *dr = dy + (size_t)r * N;
        double total = 0.0;
        for (size_t lo = 0; lo < N; lo += 1024) { /* float blocks, double across blocks */
            size_t hi = lo + 1024 < N ? lo + 1024 : N;
            float part = 0.0f;
#pragma omp simd reduction(+ : part)
            for (size_t n = lo; n < hi; n++) part += dr[n];
            total += part;
        }
        dbias[r] += (float)total;
    }
}

void cpu_conv2d_backward_weight(const ConvShape *s, const float *dy, const float *x, float *dw,
                                float *dbias) {
    conv_check_shape("conv2d_backward_weight", s);
    const int K = s->Cin * s->kh * s->kw;
    const size_t P = (size_t)s->Ho * s->Wo, N = (size_t)s->B * P;
    if (dbias) add_row_sums(dy, dbias, s->Cout, N);
    if (!dw) return;
    if (conv_is_pointwise(s)) { /* dw [Cout, Cin] += dy x^T */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, s->Cout, K, (int)N, 1.0f, dy, (int)N,
                    x, (int)N, 1.0f, dw, K);
        return;
    }
    const int group = conv_images_per_group(s);
    float *col = cpu_workspace((size_t)K * group * P); /* [K, group*Ho*Wo] */
    for (int b0 = 0; b0 < s->B; b0 += group) {
        const int nb = s->B - b0 < group ? s->B - b0 : group;
        const int ncol = (int)((size_t)nb * P);
        im2col(s, x, b0, nb, col);
        /* dw [Cout, K] += dy[:, b0*P : (b0+nb)*P] x col^T */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, s->Cout, K, ncol, 1.0f,
                    dy + (size_t)b0 * P, (int)N, col, ncol, 1.0f, dw, K);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* max-pool: PyTorch semantics (padding never wins; the first maximum in row-major window      */
/* order wins ties; a NaN propagates), argmax = flat index into the input's H*W plane.         */

static void pool_check_shape(const char *op, const PoolShape *s) {
    PoolShape t = *s;
    pool_shape_init(&t);
    if (s->C < 1 || s->B < 1 || s->H < 1 || s->W < 1 || s->k < 1 || s->stride < 1 || s->pad < 0)
        cpu_shape_error(op, "PoolShape has a non-positive size or stride");
    if (2 * s->pad > s->k) cpu_shape_error(op, "padding larger than half the kernel");
    if (t.Ho != s->Ho || t.Wo != s->Wo || s->Ho < 1 || s->Wo < 1)
        cpu_shape_error(op, "PoolShape Ho/Wo do not match pool_shape_init()");
}

void cpu_maxpool_forward(const PoolShape *s, const float *x, float *y, int32_t *argmax) {
    pool_check_shape("maxpool_forward", s);
    const int H = s->H, W = s->W, Ho = s->Ho, Wo = s->Wo;
    const long planes = (long)s->C * s->B;
#pragma omp parallel for schedule(static) if ((size_t)planes * Ho * Wo > CPU_PAR_MIN / 4)
    for (long pl = 0; pl < planes; pl++) {
        const float *xp = x + (size_t)pl * H * W;    /* [H, W] */
        float *yp = y + (size_t)pl * Ho * Wo;        /* [Ho, Wo] */
        int32_t *ap = argmax + (size_t)pl * Ho * Wo; /* [Ho, Wo] */
        for (int oy = 0; oy < Ho; oy++) {
            const int h0 = oy * s->stride - s->pad;
            const int hs = h0 < 0 ? 0 : h0, he = h0 + s->k < H ? h0 + s->k : H;
            for (int ox = 0; ox < Wo; ox++) {
                const int w0 = ox * s->stride - s->pad;
                const int ws = w0 < 0 ? 0 : w0, we = w0 + s->k < W ? w0 + s->k : W;
                float best = -INFINITY;
                int32_t best_at = hs * W + ws;
                for (int ih = hs; ih < he; ih++)
                    for (int iw = ws; iw < we; iw++) {
                        const float v = xp[ih * W + iw];
                        if (v > best || isnan(v)) {
                            best = v;
                            best_at = ih * W + iw;
                        }
                    }
                yp[oy * Wo + ox] = best;
                ap[oy * Wo + ox] = best_at;
            }
        }
    }
}

void cpu_maxpool_backward(const PoolShape *s, const float *dy, const int32_t *argmax, float *dx) {
    if (!dx) return;
    pool_check_shape("maxpool_backward", s);
    const size_t plane_in = (size_t)s->H * s->W, plane_out = (size_t)s->Ho * s->Wo;
    const long planes = (long)s->C * s->B;
#pragma omp parallel for schedule(static) if ((size_t)planes * plane_out > CPU_PAR_MIN)
    for (long pl = 0; pl < planes; pl++) {
        float *dxp = dx + (size_t)pl * plane_in;
        const float *dyp = dy + (size_t)pl * plane_out;
        const int32_t *ap = argmax + (size_t)pl * plane_out;
        for (size_t o = 0; o < plane_out; o++) dxp[ap[o]] += dyp[o];
    }
}
