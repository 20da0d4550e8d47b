/* posenc.h - padding-mask downsampling and the sine position encoding (detr.md §1.4), on the
 * host: both depend only on the mask, not on weights. */
#ifndef DETR_POSENC_H
#define DETR_POSENC_H
#include <stdint.h>

/* mask [B, H, W] -> out [B, h, w] with F.interpolate(mode='nearest') index rule:
 * src = min(floor(dst * (float)H / h), H - 1). */
void mask_downsample_nearest(const uint8_t *mask, int B, int H, int W, int h, int w, uint8_t *out);

/* mask [B, h, w] (1 = padding) -> pos [B*h*w, D] tokens (row b*h*w + i*w + j):
 * channels [0, D/2) encode y, [D/2, D) encode x, sin/cos interleaved, normalised by the valid
 * extent of the row/column and scaled to (0, 2*pi]. */
void position_encoding_sine(const uint8_t *mask, int B, int h, int w, int D, float *pos);

#endif
