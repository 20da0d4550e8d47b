/* decode.c - JPEG (TurboJPEG) and PNG (libspng) files to RGB uint8 (see decode.h).
 *
 * Conversions follow what the reference gets from PIL's Image.open(path).convert("RGB"):
 *   - JPEG grayscale: replicated into R, G, B (TurboJPEG's TJPF_RGB output does it; PIL's L->RGB
 *     does the same). YCbCr JPEGs decode with libjpeg's defaults (accurate integer IDCT, fancy
 *     upsampling), which is also what PIL uses, so full-size decodes are bitwise PIL's.
 *   - JPEG CMYK/YCCK: decoded to TJPF_CMYK (the values as stored in the file), then converted as
 *     PIL does: PIL's JPEG plugin always reads 4-channel JPEGs as "CMYK;I" (Adobe's inverted
 *     polarity, JpegImagePlugin.py: `rawmode = "CMYK;I"  # assume adobe conventions`), i.e.
 *     C = 255 - stored; its CMYK->RGB conversion (Convert.c cmyk2rgb) is
 *     R = clip(nk - MULDIV255(C, nk)) with nk = 255 - K and MULDIV255(a, b) = (t + (t >> 8)) >> 8,
 *     t = a * b + 128. Checked against PIL 9.4 on all 256 C and K values (max diff 0).
 *   - PNG: SPNG_FMT_RGB8: gray replicated, palette expanded, tRNS ignored and alpha dropped
 *     (PIL's convert("RGB") drops alpha without compositing), 16-bit samples keep their high
 *     byte, as PIL's RGB;16B / RGBA;16B / LA;16B unpackers do. One deviation: PIL opens 16-bit
 *     grayscale as mode "I" and convert("RGB") clips the 0..65535 values at 255 (most of the image
 *     turns white); here 16-bit gray keeps its high byte like every other 16-bit format.
 * Bad input never crashes: unknown formats, empty data, corrupt headers and data are errors;
 * the pixel limit is checked from the header before any pixel buffer is allocated.
 * Truncated JPEGs: libjpeg fills the missing part with gray and only warns ("Premature end of
 * JPEG file"); PIL refuses such files ("image file is truncated"), so a warning is an error
 * when it is that message or when the data does not end with the EOI marker (libjpeg keeps
 * only the first warning's text). Other warnings (e.g. "extraneous bytes before marker") are
 * accepted with the decoded pixels, as PIL does. PNGs must hold all their pixel data (libspng
 * checks the chunk CRCs and the zlib stream); one cut after the pixel data (IEND missing) is
 * accepted, as PIL does. JPEG handles are replaced after a fatal error (see jpeg_reset_handle). */
#include "decode.h"
#include <spng.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <turbojpeg.h>

/* libspng limits against hostile PNGs: the image sides (the pixel count is checked against
 * max_pixels separately), the size of one ancillary chunk and of all the ones kept. */
#define PNG_MAX_SIDE (1u << 20)
#define PNG_MAX_CHUNK ((size_t)16 << 20)
#define PNG_MAX_CHUNK_CACHE ((size_t)64 << 20)
/* CMYK JPEGs decode into a scratch buffer first; above this size it is released after use */
#define CMYK_KEEP_BYTES ((size_t)64 << 20)

typedef enum { FMT_UNKNOWN, FMT_JPEG, FMT_PNG } ImageFormat;

struct Decoder {
    tjhandle tj;
    tjscalingfactor down[3];   /* the DCT scaling factors 1/2, 1/4, 1/8 that TurboJPEG has */
    int n_down;
    uint8_t *cmyk;             /* [h, w, 4] CMYK JPEGs decode here first */
    size_t cmyk_cap;
};

static void set_err(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || !errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

Decoder *decoder_create(void) {
    Decoder *d = calloc(1, sizeof(*d));
    if (!d) return NULL;
    d->tj = tjInitDecompress();
    if (!d->tj) {
        free(d);
        return NULL;
    }
    int n = 0;
    tjscalingfactor *sf = tjGetScalingFactors(&n);
    for (int i = 0; sf && i < n; i++) {
        /* kept from largest to smallest: 1/2, 1/4, 1/8 */
        if (sf[i].num == 1 && (sf[i].denom == 2 || sf[i].denom == 4 || sf[i].denom == 8))
            d->down[d->n_down++] = sf[i];
    }
    for (int i = 1; i < d->n_down; i++)
        for (int j = i; j > 0 && d->down[j].denom < d->down[j - 1].denom; j--) {
            tjscalingfactor t = d->down[j];
            d->down[j] = d->down[j - 1];
            d->down[j - 1] = t;
        }
    return d;
}

void decoder_destroy(Decoder *d) {
    if (!d) return;
    if (d->tj) tjDestroy(d->tj);
    free(d->cmyk);
    free(d);
}

void image_free(Image *img) {
    free(img->rgb);
    memset(img, 0, sizeof(*img));
}

static ImageFormat detect_format(const uint8_t *b, size_t len) {
    static const uint8_t png_sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    if (len >= 3 && b[0] == 0xFF && b[1] == 0xD8 && b[2] == 0xFF) return FMT_JPEG;
    if (len >= 8 && memcmp(b, png_sig, 8) == 0) return FMT_PNG;
    return FMT_UNKNOWN;
}

/* A name for formats we recognise but do not decode, for the error message. */
static const char *other_format_name(const uint8_t *b, size_t len) {
    if (len >= 6 && (memcmp(b, "GIF87a", 6) == 0 || memcmp(b, "GIF89a", 6) == 0)) return "GIF";
    if (len >= 12 && memcmp(b, "RIFF", 4) == 0 && memcmp(b + 8, "WEBP", 4) == 0) return "WebP";
    if (len >= 4 && (memcmp(b, "II*\0", 4) == 0 || memcmp(b, "MM\0*", 4) == 0)) return "TIFF";
    if (len >= 2 && b[0] == 'B' && b[1] == 'M') return "BMP";
    return NULL;
}

static int unknown_format(const uint8_t *b, size_t len, char *err, size_t errlen) {
    if (len == 0) {
        set_err(err, errlen, "empty file (0 bytes): not an image");
        return -1;
    }
    const char *name = other_format_name(b, len);
    if (name) {
        set_err(err, errlen, "%s image: only JPEG and PNG are supported (convert it)", name);
        return -1;
    }
    char hex[3 * 8 + 1] = "";
    for (size_t i = 0; i < len && i < 8; i++)
        snprintf(hex + 3 * i, sizeof(hex) - 3 * i, "%02x ", b[i]);
    set_err(err, errlen, "unknown image format (first bytes %s): expected JPEG or PNG", hex);
    return -1;
}

static int check_pixels(int64_t w, int64_t h, int64_t max_pixels, char *err, size_t errlen) {
    if (w < 1 || h < 1) {
        set_err(err, errlen, "image header gives an empty size %lldx%lld", (long long)w,
                (long long)h);
        return -1;
    }
    if (max_pixels > 0 && w * h > max_pixels) {
        set_err(err, errlen,
                "image is %lldx%lld = %lld pixels, above the limit of %lld (raise --max-pixels "
                "to accept it)",
                (long long)w, (long long)h, (long long)(w * h), (long long)max_pixels);
        return -1;
    }
    return 0;
}

static int image_reserve(Image *img, size_t bytes) {
    if (img->cap >= bytes) return 0;
    uint8_t *p = malloc(bytes);
    if (!p) return -1;
    free(img->rgb);
    img->rgb = p;
    img->cap = bytes;
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* JPEG */

/* After a fatal libjpeg error the handle can be left mid-stream (tjDecompressHeader3 in 2.1
 * returns without aborting the decompressor, and the next header read then continues the old
 * stream's marker parsing), so the handle is replaced. */
static void jpeg_reset_handle(Decoder *d) {
    if (d->tj) tjDestroy(d->tj);
    d->tj = tjInitDecompress();
}

static int jpeg_header(Decoder *d, const uint8_t *b, size_t len, int *w, int *h, int *cs,
                       char *err, size_t errlen) {
    int subsamp = 0;
    if (!d->tj) jpeg_reset_handle(d);
    if (!d->tj) {
        set_err(err, errlen, "out of memory (TurboJPEG handle)");
        return -1;
    }
    *w = *h = 0;
    if (tjDecompressHeader3(d->tj, b, (unsigned long)len, w, h, &subsamp, cs) != 0) {
        set_err(err, errlen, "corrupt JPEG header (libjpeg: %s)", tjGetErrorStr2(d->tj));
        jpeg_reset_handle(d);
        return -1;
    }
    if (*w < 1 || *h < 1) { /* a tables-only datastream "succeeds" without a size */
        set_err(err, errlen, "JPEG without an image (tables only, or an empty size)");
        jpeg_reset_handle(d);
        return -1;
    }
    return 0;
}

/* The smallest DCT factor (1/2, 1/4, 1/8) whose output is still >= min_w x min_h; 1/1 when none
 * is (or when no minimum is given). */
static tjscalingfactor jpeg_pick_scale(const Decoder *d, int w, int h, int min_w, int min_h) {
    tjscalingfactor best = {1, 1};
    if (min_w <= 0 || min_h <= 0) return best;
    for (int i = 0; i < d->n_down; i++) {
        tjscalingfactor sf = d->down[i];
        if (TJSCALED(w, sf) >= min_w && TJSCALED(h, sf) >= min_h) best = sf;
    }
    return best;
}

/* EOI marker at the end of the data, allowing trailing zero padding. */
static int jpeg_ends_with_eoi(const uint8_t *b, size_t len) {
    while (len > 2 && b[len - 1] == 0) len--;
    return len >= 2 && b[len - 2] == 0xFF && b[len - 1] == 0xD9;
}

/* PIL's CMYK;I -> RGB (see the header comment), from the values stored in the file. */
static void cmyk_stored_to_rgb(const uint8_t *cmyk, size_t n_pixels, uint8_t *rgb) {
    for (size_t i = 0; i < n_pixels; i++) {
        const uint8_t *s = cmyk + 4 * i;
        int nk = s[3]; /* 255 - K with K = 255 - stored */
        for (int c = 0; c < 3; c++) {
            int ink = 255 - s[c];
            int t = ink * nk + 128;
            int v = nk - (((t >> 8) + t) >> 8);
            rgb[3 * i + c] = (uint8_t)(v < 0 ? 0 : v);
        }
    }
}

/* Runs tjDecompress2 and applies the warning policy. Returns 0 or -1 with err. */
static int jpeg_run(Decoder *d, const uint8_t *b, size_t len, uint8_t *dst, int w, int h,
                    int pixel_format, char *err, size_t errlen) {
    /* LIMITSCANS: refuse progressive JPEGs with absurd scan counts (a CPU-time bomb) */
    if (tjDecompress2(d->tj, b, (unsigned long)len, dst, w, 0, h, pixel_format,
                      TJFLAG_LIMITSCANS) == 0)
        return 0;
    const char *msg = tjGetErrorStr2(d->tj);
    if (tjGetErrorCode(d->tj) != TJERR_WARNING) {
        set_err(err, errlen, "corrupt JPEG data (libjpeg: %s)", msg);
        jpeg_reset_handle(d);
        return -1;
    }
    if (strstr(msg, "Premature end of JPEG file") || !jpeg_ends_with_eoi(b, len)) {
        set_err(err, errlen, "truncated JPEG data (libjpeg: %s)", msg);
        return -1;
    }
    return 0; /* a recoverable warning: PIL accepts these pixels too */
}

static int jpeg_decode(Decoder *d, const uint8_t *b, size_t len, int min_w, int min_h,
                       int64_t max_pixels, Image *img, char *err, size_t errlen) {
    int w, h, cs;
    if (jpeg_header(d, b, len, &w, &h, &cs, err, errlen)) return -1;
    if (check_pixels(w, h, max_pixels, err, errlen)) return -1;
    tjscalingfactor sf = jpeg_pick_scale(d, w, h, min_w, min_h);
    int sw = TJSCALED(w, sf), sh = TJSCALED(h, sf);
    size_t n_pixels = (size_t)sw * sh;
    if (image_reserve(img, n_pixels * 3)) {
        set_err(err, errlen, "out of memory for a %dx%d image", sw, sh);
        return -1;
    }
    if (cs == TJCS_CMYK || cs == TJCS_YCCK) {
        if (d->cmyk_cap < n_pixels * 4) {
            uint8_t *p = malloc(n_pixels * 4);
            if (!p) {
                set_err(err, errlen, "out of memory for a %dx%d CMYK image", sw, sh);
                return -1;
            }
            free(d->cmyk);
            d->cmyk = p;
            d->cmyk_cap = n_pixels * 4;
        }
        int rc = jpeg_run(d, b, len, d->cmyk, sw, sh, TJPF_CMYK, err, errlen);
        if (!rc) cmyk_stored_to_rgb(d->cmyk, n_pixels, img->rgb);
        if (d->cmyk_cap > CMYK_KEEP_BYTES) { /* rare: do not pin a huge buffer per worker */
            free(d->cmyk);
            d->cmyk = NULL;
            d->cmyk_cap = 0;
        }
        if (rc) return -1;
    } else {
        if (jpeg_run(d, b, len, img->rgb, sw, sh, TJPF_RGB, err, errlen)) return -1;
    }
    img->w = sw;
    img->h = sh;
    img->full_w = w;
    img->full_h = h;
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* PNG */

static spng_ctx *png_open(const uint8_t *b, size_t len, struct spng_ihdr *ihdr, char *err,
                          size_t errlen) {
    spng_ctx *ctx = spng_ctx_new(0);
    if (!ctx) {
        set_err(err, errlen, "out of memory (libspng context)");
        return NULL;
    }
    int rc = spng_set_image_limits(ctx, PNG_MAX_SIDE, PNG_MAX_SIDE);
    if (!rc) rc = spng_set_chunk_limits(ctx, PNG_MAX_CHUNK, PNG_MAX_CHUNK_CACHE);
    if (!rc) rc = spng_set_png_buffer(ctx, b, len);
    if (!rc) rc = spng_get_ihdr(ctx, ihdr);
    if (rc) {
        set_err(err, errlen, "corrupt PNG header (libspng: %s)", spng_strerror(rc));
        spng_ctx_free(ctx);
        return NULL;
    }
    return ctx;
}

static int png_decode(const uint8_t *b, size_t len, int64_t max_pixels, Image *img, char *err,
                      size_t errlen) {
    struct spng_ihdr ihdr;
    spng_ctx *ctx = png_open(b, len, &ihdr, err, errlen);
    if (!ctx) return -1;
    size_t bytes = 0;
    int rc = -1;
    if (check_pixels(ihdr.width, ihdr.height, max_pixels, err, errlen)) goto done;
    int sr = spng_decoded_image_size(ctx, SPNG_FMT_RGB8, &bytes);
    if (sr || bytes != (size_t)ihdr.width * ihdr.height * 3) {
        set_err(err, errlen, "unsupported PNG (libspng: %s)", sr ? spng_strerror(sr) : "size");
        goto done;
    }
    if (image_reserve(img, bytes)) {
        set_err(err, errlen, "out of memory for a %ux%u image", ihdr.width, ihdr.height);
        goto done;
    }
    sr = spng_decode_image(ctx, img->rgb, bytes, SPNG_FMT_RGB8, 0);
    if (sr) {
        set_err(err, errlen, "corrupt or truncated PNG data (libspng: %s)", spng_strerror(sr));
        goto done;
    }
    img->w = img->full_w = (int)ihdr.width;
    img->h = img->full_h = (int)ihdr.height;
    rc = 0;
done:
    spng_ctx_free(ctx);
    return rc;
}

/* ---------------------------------------------------------------------------------------- */

int decode_probe(Decoder *d, const uint8_t *bytes, size_t len, int *w, int *h, char *err,
                 size_t errlen) {
    switch (detect_format(bytes, len)) {
    case FMT_JPEG: {
        int cs;
        return jpeg_header(d, bytes, len, w, h, &cs, err, errlen);
    }
    case FMT_PNG: {
        struct spng_ihdr ihdr;
        spng_ctx *ctx = png_open(bytes, len, &ihdr, err, errlen);
        if (!ctx) return -1;
        spng_ctx_free(ctx);
        *w = (int)ihdr.width;
        *h = (int)ihdr.height;
        return 0;
    }
    default:
        return unknown_format(bytes, len, err, errlen);
    }
}

int decode_image(Decoder *d, const uint8_t *bytes, size_t len, int min_w, int min_h,
                 int64_t max_pixels, Image *img, char *err, size_t errlen) {
    switch (detect_format(bytes, len)) {
    case FMT_JPEG:
        return jpeg_decode(d, bytes, len, min_w, min_h, max_pixels, img, err, errlen);
    case FMT_PNG:
        return png_decode(bytes, len, max_pixels, img, err, errlen);
    default:
        return unknown_format(bytes, len, err, errlen);
    }
}
