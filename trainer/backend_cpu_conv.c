/* backend_cpu_conv.c - convolution (im2col + sgemm) and max-pooling, CNHW layout.
 *
 * With x: [Cin, B, H, W] the column matrix col: [K, B*Ho*Wo], K = Cin*kh*kw, row
 * r = (ci*kh + i)*kw + j, column n = (b*Ho + oy)*Wo + ox, holds
 *     x[ci, b, oy*stride - pad + i*dil, ox*stride - pad + j*dil]   (0 outside the image),
 * and the convolution is the GEMM  y [Cout, B*Ho*Wo] = w [Cout, K] x col, whose result is
 * already CNHW. A 1x1 stride-1 unpadded convolution needs no col at all: x is the column matrix
 * (one sgemm). Otherwise the columns are built in chunks of whole output rows q = b*Ho + oy,
 * one sgemm per chunk into the matching columns of y (row stride B*Ho*Wo): a chunk of at most
 * CONV_COL_CHUNK_FLOATS stays in the last-level cache between im2col writing it and the sgemm
 * reading it, which measured faster than one sgemm over the whole column matrix (3x3, 64
 * channels, 8x56x56: forward 235 -> 345 GFLOP/s, backward-data 210 -> 350), and it bounds the
 * workspace to the chunk. */
#include <math.h>
#include <omp.h>
#include <string.h>
#include "backend_cpu_internal.h"

/* 8 MiB of columns per chunk (2M floats); see the measurements above. */
#define CONV_COL_CHUNK_FLOATS ((size_t)2 << 20)
static size_t g_col_chunk_floats = CONV_COL_CHUNK_FLOATS;

void cpu_conv_set_col_limit(size_t floats) {
    g_col_chunk_floats = floats ? floats : CONV_COL_CHUNK_FLOATS;
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

/* Output rows per column chunk: as many as fit under the chunk limit, at least one. */
static int conv_rows_per_chunk(const ConvShape *s) {
    const size_t per_row = (size_t)s->Cin * s->kh * s->kw * s->Wo;
    const size_t rows = (size_t)s->B * s->Ho;
    size_t n = g_col_chunk_floats / per_row;
    if (n < 1) n = 1;
    if (n > rows) n = rows;
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

/* col [K, nq*Wo]: the columns of output rows [q0, q0+nq) (q = b*Ho + oy) from x [Cin, B, H, W]. */
static void im2col_rows(const ConvShape *s, const float *x, int q0, int nq, float *col) {
    const int khw = s->kh * s->kw, K = s->Cin * khw;
    const int H = s->H, W = s->W, Ho = s->Ho, Wo = s->Wo, st = s->stride;
    const size_t plane_in = (size_t)H * W, ncol = (size_t)nq * Wo;
#pragma omp parallel for schedule(static) if ((size_t)K * ncol > CPU_PAR_MIN)
    for (int r = 0; r < K; r++) {
        const int ci = r / khw, i = (r / s->kw) % s->kh, j = r % s->kw;
        const int off_y = i * s->dil - s->pad, off_x = j * s->dil - s->pad;
        int ox_lo, ox_hi;
        valid_output_range(off_x, st, W, Wo, &ox_lo, &ox_hi);
        for (int q = q0; q < q0 + nq; q++) {
            const int b = q / Ho, oy = q % Ho;
            float *d = col + (size_t)r * ncol + (size_t)(q - q0) * Wo; /* [Wo] */
            const int iy = oy * st + off_y;
            if (iy < 0 || iy >= H) {
                memset(d, 0, (size_t)Wo * sizeof(float));
                continue;
            }
            /* src[ox*st] = input pixel of output column ox */
            const float *src = x + ((size_t)ci * s->B + b) * plane_in + (size_t)iy * W + off_x;
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

/* dx [Cin, B, H, W] += the scatter of col [K, nq*Wo] (output rows [q0, q0+nq)): the adjoint of
 * im2col_rows. Work items are (channel, image) planes of dx, so no two threads write the same
 * element. */
static void col2im_rows_add(const ConvShape *s, const float *col, int q0, int nq, float *dx) {
    const int H = s->H, W = s->W, Ho = s->Ho, Wo = s->Wo, st = s->stride;
    const size_t plane_in = (size_t)H * W, ncol = (size_t)nq * Wo;
    const int b_first = q0 / Ho, b_last = (q0 + nq - 1) / Ho, nb = b_last - b_first + 1;
    const long planes = (long)s->Cin * nb;
#pragma omp parallel for schedule(static) if ((size_t)s->Cin * s->kh * s->kw * ncol > CPU_PAR_MIN)
    for (long pl = 0; pl < planes; pl++) {
        const int ci = (int)(pl / nb), b = b_first + (int)(pl % nb);
        float *dxp = dx + ((size_t)ci * s->B + b) * plane_in; /* [H, W] */
        /* this image's output rows inside the chunk */
        const int qa = q0 > b * Ho ? q0 : b * Ho;
        const int qb = q0 + nq < (b + 1) * Ho ? q0 + nq : (b + 1) * Ho;
        for (int i = 0; i < s->kh; i++) {
            const int off_y = i * s->dil - s->pad;
            for (int j = 0; j < s->kw; j++) {
                const int off_x = j * s->dil - s->pad;
                int ox_lo, ox_hi;
                valid_output_range(off_x, st, W, Wo, &ox_lo, &ox_hi);
                const float *src = col + (size_t)((ci * s->kh + i) * s->kw + j) * ncol;
                for (int q = qa; q < qb; q++) {
                    const int iy = (q - b * Ho) * st + off_y;
                    if (iy < 0 || iy >= H) continue;
                    float *d = dxp + (size_t)iy * W + off_x;
                    const float *c = src + (size_t)(q - q0) * Wo;
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
    const int K = s->Cin * s->kh * s->kw, Wo = s->Wo, rows = s->B * s->Ho;
    const size_t N = (size_t)rows * Wo;
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
    const int chunk = conv_rows_per_chunk(s);
    float *col = cpu_workspace((size_t)K * chunk * Wo); /* [K, chunk*Wo] */
    for (int q0 = 0; q0 < rows; q0 += chunk) {
        const int nq = rows - q0 < chunk ? rows - q0 : chunk, ncol = nq * Wo;
        im2col_rows(s, x, q0, nq, col);
        /* y[:, q0*Wo : (q0+nq)*Wo] (row stride N) (+)= w [Cout, K] x col [K, ncol] */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, s->Cout, ncol, K, 1.0f, w, K, col,
                    ncol, beta, y + (size_t)q0 * Wo, (int)N);
    }
}

void cpu_conv2d_backward_data(const ConvShape *s, const float *dy, const float *w, float *dx) {
    if (!dx) return;
    conv_check_shape("conv2d_backward_data", s);
    const int K = s->Cin * s->kh * s->kw, Wo = s->Wo, rows = s->B * s->Ho;
    const size_t N = (size_t)rows * Wo;
    if (conv_is_pointwise(s)) { /* dx [Cin, N] += w^T dy */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, s->Cin, (int)N, s->Cout, 1.0f, w, K,
                    dy, (int)N, 1.0f, dx, (int)N);
        return;
    }
    const int chunk = conv_rows_per_chunk(s);
    float *col = cpu_workspace((size_t)K * chunk * Wo); /* [K, chunk*Wo] */
    for (int q0 = 0; q0 < rows; q0 += chunk) {
        const int nq = rows - q0 < chunk ? rows - q0 : chunk, ncol = nq * Wo;
        /* col [K, ncol] = w^T [K, Cout] x dy[:, q0*Wo : (q0+nq)*Wo] */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, K, ncol, s->Cout, 1.0f, w, K,
                    dy + (size_t)q0 * Wo, (int)N, 0.0f, col, ncol);
        col2im_rows_add(s, col, q0, nq, dx);
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
    const int K = s->Cin * s->kh * s->kw, Wo = s->Wo, rows = s->B * s->Ho;
    const size_t N = (size_t)rows * Wo;
    if (dbias) add_row_sums(dy, dbias, s->Cout, N);
    if (!dw) return;
    if (conv_is_pointwise(s)) { /* dw [Cout, Cin] += dy x^T */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, s->Cout, K, (int)N, 1.0f, dy, (int)N,
                    x, (int)N, 1.0f, dw, K);
        return;
    }
    const int chunk = conv_rows_per_chunk(s);
    float *col = cpu_workspace((size_t)K * chunk * Wo); /* [K, chunk*Wo] */
    for (int q0 = 0; q0 < rows; q0 += chunk) {
        const int nq = rows - q0 < chunk ? rows - q0 : chunk, ncol = nq * Wo;
        im2col_rows(s, x, q0, nq, col);
        /* dw [Cout, K] += dy[:, q0*Wo : (q0+nq)*Wo] x col^T */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, s->Cout, K, ncol, 1.0f,
                    dy + (size_t)q0 * Wo, (int)N, col, ncol, 1.0f, dw, K);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* max-pool: PyTorch semantics (padding never wins; among equal maxima the first in row-major   */
/* window order wins; a NaN propagates), argmax = flat index into the input's H*W plane.       */
/* Each output row is computed in two passes: a column pass (max over the window's rows, for    */
/* every input column, vectorised) and a row pass over those column maxima. Among equal values  */
/* the smaller flat index wins in both, and for window elements the smaller flat index is the   */
/* earlier one in row-major order, so ties resolve exactly as in the direct k*k scan.           */

static void pool_check_shape(const char *op, const PoolShape *s) {
    PoolShape t = *s;
    pool_shape_init(&t);
    if (s->C < 1 || s->B < 1 || s->H < 1 || s->W < 1 || s->k < 1 || s->stride < 1 || s->pad < 0)
        cpu_shape_error(op, "PoolShape has a non-positive size or stride");
    if (2 * s->pad > s->k) cpu_shape_error(op, "padding larger than half the kernel");
    if (t.Ho != s->Ho || t.Wo != s->Wo || s->Ho < 1 || s->Wo < 1)
        cpu_shape_error(op, "PoolShape Ho/Wo do not match pool_shape_init()");
}

/* colmax/colidx [W]: max of rows [hs, he) of plane xp [H, W] in every column, and its flat index
 * (the top-most one among equals; a NaN wins). */
CPU_HOT static void pool_column_pass(const float *xp, int W, int hs, int he, float *colmax,
                                     int32_t *colidx) {
    const float *r0 = xp + (size_t)hs * W;
    for (int iw = 0; iw < W; iw++) {
        colmax[iw] = r0[iw];
        colidx[iw] = hs * W + iw;
    }
    for (int ih = hs + 1; ih < he; ih++) {
        const float *r = xp + (size_t)ih * W;
#pragma omp simd
        for (int iw = 0; iw < W; iw++) {
            const float v = r[iw], m = colmax[iw];
            const int32_t idx = colidx[iw];
            const int take = (v > m) | (v != v);
            colmax[iw] = take ? v : m;
            colidx[iw] = take ? ih * W + iw : idx;
        }
    }
}

/* Does (v, idx) replace the current (best, best_idx)? Larger, or equal and earlier, or NaN. */
static inline int pool_takes(float v, int32_t idx, float best, int32_t best_idx) {
    return (v > best) | ((v == best) & (idx < best_idx)) | (v != v);
}

/* One output row y [Wo], argmax [Wo] from the column maxima of its window rows. */
CPU_HOT static void pool_row_pass(const float *colmax, const int32_t *colidx, const PoolShape *s,
                                  float *y, int32_t *arg) {
    const int W = s->W, k = s->k, st = s->stride, pad = s->pad;
    /* outputs [lo, hi) have their whole window inside [0, W): no clipping, vectorisable */
    int lo = (pad + st - 1) / st, hi = W - k + pad < 0 ? 0 : (W - k + pad) / st + 1;
    if (hi > s->Wo) hi = s->Wo;
    if (lo > hi) lo = hi;
    for (int ox = lo; ox < hi; ox++) {
        y[ox] = colmax[ox * st - pad];
        arg[ox] = colidx[ox * st - pad];
    }
    for (int j = 1; j < k; j++) {
#pragma omp simd
        for (int ox = lo; ox < hi; ox++) {
            const float v = colmax[ox * st - pad + j], best = y[ox];
            const int32_t idx = colidx[ox * st - pad + j], best_idx = arg[ox];
            const int take = pool_takes(v, idx, best, best_idx);
            y[ox] = take ? v : best;
            arg[ox] = take ? idx : best_idx;
        }
    }
    for (int ox = 0; ox < s->Wo; ox++) { /* the clipped windows at both ends */
        if (ox == lo) ox = hi;
        if (ox >= s->Wo) break;
        const int w0 = ox * st - pad;
        const int ws = w0 < 0 ? 0 : w0, we = w0 + k < W ? w0 + k : W;
        float best = colmax[ws];
        int32_t best_idx = colidx[ws];
        for (int iw = ws + 1; iw < we; iw++) {
            const int take = pool_takes(colmax[iw], colidx[iw], best, best_idx);
            best = take ? colmax[iw] : best;
            best_idx = take ? colidx[iw] : best_idx;
        }
        y[ox] = best;
        arg[ox] = best_idx;
    }
}

void cpu_maxpool_forward(const PoolShape *s, const float *x, float *y, int32_t *argmax) {
    pool_check_shape("maxpool_forward", s);
    const int H = s->H, W = s->W, Ho = s->Ho, Wo = s->Wo;
    const long planes = (long)s->C * s->B;
    /* per thread: colmax [W] floats then colidx [W] int32 */
    float *scratch = cpu_workspace((size_t)omp_get_max_threads() * 2 * W);
#pragma omp parallel if ((size_t)planes * Ho * Wo > CPU_PAR_MIN / 4)
    {
        float *colmax = scratch + (size_t)omp_get_thread_num() * 2 * W;
        int32_t *colidx = (int32_t *)(colmax + W);
#pragma omp for schedule(static)
        for (long pl = 0; pl < planes; pl++) {
            const float *xp = x + (size_t)pl * H * W; /* [H, W] */
            for (int oy = 0; oy < Ho; oy++) {
                const int h0 = oy * s->stride - s->pad;
                const int hs = h0 < 0 ? 0 : h0, he = h0 + s->k < H ? h0 + s->k : H;
                const size_t o = ((size_t)pl * Ho + oy) * Wo; /* output row [Wo] */
                pool_column_pass(xp, W, hs, he, colmax, colidx);
                pool_row_pass(colmax, colidx, s, y + o, argmax + o);
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
