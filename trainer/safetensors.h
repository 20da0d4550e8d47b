/* safetensors.h - read and write the safetensors format (Hugging Face), robust against corrupt files.
 *
 * File layout:
 *     u64 little-endian N | N bytes of UTF-8 JSON header | data buffer
 * The header is an object; each tensor entry is
 *     "name": {"dtype": "F32", "shape": [d0, d1, ...], "data_offsets": [begin, end]}
 * with offsets in bytes relative to the start of the data buffer, plus an optional
 *     "__metadata__": {"key": "value", ...}            (string values only).
 *
 * The reader validates everything before any tensor is handed out (see st_open); a file it accepts
 * is one the reference implementation accepts too: tensors tile the data buffer exactly, with no
 * overlap, no gap and nothing after the last tensor. Data is little-endian; tensors in the buffer
 * may be unaligned in files written by other tools, so read through st_read_f32 or memcpy. */
#ifndef DETR_SAFETENSORS_H
#define DETR_SAFETENSORS_H
#include <stddef.h>
#include <stdint.h>

typedef enum { ST_F32, ST_F16, ST_BF16, ST_F64, ST_I64, ST_I32, ST_I16, ST_I8, ST_U8, ST_BOOL, ST_NDTYPE } StDtype;

#define ST_MAX_DIMS 8
/* Largest header the reader accepts (the reference implementation's limit too). */
#define ST_MAX_HEADER_BYTES 100000000ull

typedef struct {
    char *name;
    StDtype dtype;
    int ndim;                     /* 0 for a scalar (shape []) */
    int64_t shape[ST_MAX_DIMS];
    size_t begin, end;            /* byte range in the data buffer */
} StTensor;

typedef struct {
    char *path;
    StTensor *tensors;            /* [n], sorted by name */
    int n;
    char **meta_keys, **meta_vals; /* [n_meta] each */
    int n_meta;
    const uint8_t *data;          /* the data buffer (inside the mapping) */
    size_t data_len;
    void *map_or_buf;             /* whole file: an mmap, or a malloc'd copy when mapping failed */
    size_t file_len;
    int mapped;                   /* 1: map_or_buf is an mmap */
} StFile;

/* "F32", "BF16", ... and the size of one element in bytes. */
const char *st_dtype_name(StDtype dt);
size_t st_dtype_size(StDtype dt);
/* Parses a dtype name; returns 0, or -1 for an unknown name. */
int st_dtype_from_name(const char *name, StDtype *out);

/* Opens and validates a file. Returns 0, or -1 with a message in err naming the file, what is wrong
 * and, where there is one, the fix; on -1, f holds nothing to close. */
int st_open(const char *path, StFile *f, char *err, size_t errlen);
/* NULL if absent. */
const StTensor *st_find(const StFile *f, const char *name);
/* Metadata value for key, NULL if absent. */
const char *st_meta(const StFile *f, const char *key);
/* Product of the dims (1 for a scalar, 0 if any dim is 0). */
size_t st_numel(const StTensor *t);
/* Converts the tensor to float32 into dst [numel] (F16, BF16, F64, the integer types and BOOL
 * included). Returns 0, or -1 with a message (never happens for a tensor of an opened file,
 * kept for the caller's convenience with a hand-made StTensor). */
int st_read_f32(const StFile *f, const StTensor *t, float *dst, char *err, size_t errlen);
/* The tensor's raw bytes (end - begin of them), little-endian, possibly unaligned. */
const void *st_data(const StFile *f, const StTensor *t);
void st_close(StFile *f);

/* Writer. Ownership: st_writer_add / st_writer_add_f32 BORROW data, which must stay valid and
 * unchanged until st_writer_save returns; st_writer_add_copy, st_writer_add_scalar and
 * st_writer_meta copy. Mistakes in the add calls (duplicate or empty name, too many dims, a
 * negative dim, NULL data for a non-empty tensor) are remembered and reported by st_writer_save.
 * The file is written the way the Python library writes it: tensors ordered by element size
 * (largest first, which keeps every tensor aligned to its element size) then by name, header
 * padded with spaces to a multiple of 8. The save is atomic: a temporary file in the same folder,
 * fsync, rename over path, fsync of the folder. */
typedef struct StWriter StWriter;
StWriter *st_writer_new(void);
void st_writer_add(StWriter *w, const char *name, StDtype dt, int ndim, const int64_t *shape, const void *data);
void st_writer_add_copy(StWriter *w, const char *name, StDtype dt, int ndim, const int64_t *shape, const void *data);
void st_writer_add_f32(StWriter *w, const char *name, int ndim, const int64_t *shape, const float *data);
void st_writer_add_scalar(StWriter *w, const char *name, float v); /* F32, shape [] */
void st_writer_meta(StWriter *w, const char *key, const char *value);
int st_writer_save(StWriter *w, const char *path, char *err, size_t errlen);
void st_writer_free(StWriter *w);

#endif
