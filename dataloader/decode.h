/* decode.h - image files to RGB uint8: JPEG through libjpeg-turbo's TurboJPEG API (one
 * Decoder per worker thread), PNG through libspng. Grayscale and CMYK become RGB, alpha is
 * dropped, 16-bit samples keep their high byte (PIL's Image.open().convert("RGB"); decode.c
 * lists the one deviation). The format is detected from the bytes, not the file name (a PNG
 * named .jpg works). The pixel count is checked from the header before decoding (max_pixels).
 * Thread safety: a Decoder is used by one thread at a time; different Decoders run in parallel
 * (no global state is written). */
#ifndef DETR_DECODE_H
#define DETR_DECODE_H
#include <stddef.h>
#include <stdint.h>

typedef struct Decoder Decoder;

typedef struct {
    uint8_t *rgb;      /* [h, w, 3], owned by the Image (image_free) */
    int w, h;          /* decoded size (may be DCT-scaled, see decode_image) */
    int full_w, full_h;/* size in the file header */
    size_t cap;        /* bytes allocated in rgb (buffers are reused between calls) */
} Image;

/* NULL when out of memory. */
Decoder *decoder_create(void);
void decoder_destroy(Decoder *d);

/* Reads the header: format and full size. Returns 0 or -1 with err (unknown format, corrupt
 * header). */
int decode_probe(Decoder *d, const uint8_t *bytes, size_t len, int *w, int *h, char *err,
                 size_t errlen);

/* Decodes bytes into img (reusing its buffer). For JPEG, when min_w/min_h > 0, decodes at the
 * smallest DCT scaling factor (1/2, 1/4, 1/8) whose result is still at least min_w x min_h,
 * i.e. only when the final target is at most half the source size; the caller then resizes
 * from the smaller image (transform_plan_min_size gives min_w/min_h). PNGs always decode at
 * full size. max_pixels (0 = no limit): images above it are refused from the header, before any
 * pixel buffer is allocated. Truncated JPEGs are errors (libjpeg only warns; PIL refuses them);
 * other libjpeg warnings are accepted, as PIL does. Returns 0 or -1 with err (empty, unknown
 * format, corrupt or truncated data, too large); img keeps its buffer on failure. */
int decode_image(Decoder *d, const uint8_t *bytes, size_t len, int min_w, int min_h,
                 int64_t max_pixels, Image *img, char *err, size_t errlen);

void image_free(Image *img);

#endif
