/* posenc.c - see posenc.h */
#include "posenc.h"
#include <math.h>
#include <stdlib.h>

static int nearest_src(int dst, int in, int out) {
    float scale = (float)in / (float)out;
    int s = (int)floorf((float)dst * scale);
    return s < in - 1 ? s : in - 1;
}

void mask_downsample_nearest(const uint8_t *mask, int B, int H, int W, int h, int w, uint8_t *out) {
    for (int b = 0; b < B; b++)
        for (int i = 0; i < h; i++) {
            int si = nearest_src(i, H, h);
            for (int j = 0; j < w; j++)
                out[((size_t)b * h + i) * w + j] = mask[((size_t)b * H + si) * W + nearest_src(j, W, w)];
        }
}

void position_encoding_sine(const uint8_t *mask, int B, int h, int w, int D, float *pos) {
    const double two_pi = 6.283185307179586, eps = 1e-6;
    int npf = D / 2;
    double *inv_dim = malloc((size_t)npf * sizeof(double));
    for (int k = 0; k < npf; k++) inv_dim[k] = 1.0 / pow(10000.0, 2.0 * (k / 2) / (double)npf);
    double *ye = malloc((size_t)h * w * sizeof(double)), *xe = malloc((size_t)h * w * sizeof(double));
    for (int b = 0; b < B; b++) {
        const uint8_t *m = mask + (size_t)b * h * w;
        /* cumulative counts of valid cells down each column (y) and along each row (x) */
        for (int i = 0; i < h; i++)
            for (int j = 0; j < w; j++) {
                double valid = m[i * w + j] ? 0.0 : 1.0;
                ye[i * w + j] = valid + (i ? ye[(i - 1) * w + j] : 0.0);
                xe[i * w + j] = valid + (j ? xe[i * w + j - 1] : 0.0);
            }
        for (int i = 0; i < h; i++)
            for (int j = 0; j < w; j++) {
                double y = ye[i * w + j] / (ye[(h - 1) * w + j] + eps) * two_pi;
                double x = xe[i * w + j] / (xe[i * w + w - 1] + eps) * two_pi;
                float *p = pos + ((size_t)b * h * w + (size_t)i * w + j) * D;
                for (int k = 0; k < npf; k++) {
                    double ay = y * inv_dim[k], ax = x * inv_dim[k];
                    p[k] = (float)((k & 1) ? cos(ay) : sin(ay));
                    p[npf + k] = (float)((k & 1) ? cos(ax) : sin(ax));
                }
            }
    }
    free(inv_dim);
    free(ye);
    free(xe);
}
