/* dataset_internal.h - private to dataset*.c and check.c: the COCO instances JSON read into
 * flat arrays in the file's order (dataset_json.c), and the binary index built from them and
 * cached on disk (dataset_index.c).
 *
 * Not a public API: other modules include dataset.h (and check.h). */
#ifndef DETR_DATASET_INTERNAL_H
#define DETR_DATASET_INTERNAL_H
#include <stddef.h>
#include <stdint.h>
#include "dataset.h"

/* One entry of "images", as in the JSON. */
typedef struct {
    int64_t id;
    int64_t name_off;     /* offset of file_name in CocoJson.names */
    int32_t width, height;
} CocoImage;

/* One entry of "annotations", as in the JSON. */
typedef struct {
    float bbox[4];        /* x, y, w, h as float32 (JSON number -> double -> float, like the
                           * reference's torch.as_tensor); out-of-range numbers are +-inf */
    int64_t image_id;
    int64_t id;           /* -1 when the annotation has no "id" (has_id = 0) */
    int32_t category;     /* category_id (may be negative or unknown: the callers decide) */
    int32_t iscrowd;      /* 0 or 1 (any non-zero number or true is 1, as `iscrowd == 0` in
                           * the reference) */
    int32_t has_id;
} CocoAnn;

/* The parts of an instances file that the loader and `detr-data check` need. */
typedef struct {
    CocoImage *images;    /* [n_images] */
    int64_t n_images;
    CocoAnn *anns;        /* [n_anns] */
    int64_t n_anns;
    int32_t *category_ids;/* [n_categories] ("categories"[k].id, >= 0) */
    int64_t n_categories;
    char *names;          /* file names, NUL-separated: [names_len] */
    int64_t names_len;
    int has_annotations;  /* the file has an "annotations" key */
} CocoJson;

/* Reads a COCO instances file with a streaming parser that validates the whole document as
 * strict JSON (RFC 8259, UTF-8) and keeps only the fields above, skipping everything else
 * ("segmentation" polygons, "info", ...) without building it in memory. Returns 0; -1 when the
 * file cannot be read or is not valid JSON; -2 when it is valid JSON so far but not a COCO
 * instances file (a missing or mistyped field, a top level that is not an object). err is
 * "path:line:column: text" (1-based; columns count characters, not bytes). */
int coco_json_read(const char *path, CocoJson *out, char *err, size_t errlen);
/* The same, reading `chunk` bytes at a time (coco_json_read: 1 MiB). Tests use tiny chunks
 * so that every token crosses a buffer boundary somewhere. */
int coco_json_read_chunked(const char *path, size_t chunk, CocoJson *out, char *err, size_t errlen);
void coco_json_free(CocoJson *cj);

/* --- hashing (dataset_index.c) --- */

/* 64-bit hash of bytes, 8 bytes at a time (a multiply-rotate mix, not cryptographic): used for
 * the index checksum and the annotation file's content key. */
uint64_t ds_hash64(const void *data, size_t len, uint64_t seed);

/* Identity of an annotation file as the cache key: size, mtime (ns) and a hash of its first
 * and last MiB plus the size (hashing all of a 450 MB file would cost seconds at every open;
 * the trade-off: an edit in the middle that keeps both the size and the mtime is not seen). */
typedef struct {
    uint64_t size;
    int64_t mtime_ns;
    uint64_t content_hash;
} SourceKey;

int ds_source_key(const char *path, SourceKey *key, char *err, size_t errlen);

/* Builds the index blob of a parsed file into a malloc'ed block (the same bytes as the cache
 * file) and points ds at it. Duplicate image ids are an error naming both positions;
 * annotations with unknown image ids are skipped and counted (ds->n_orphan_anns). */
int ds_index_build(const CocoJson *cj, const char *ann_path, const char *abs_path,
                   const SourceKey *key, Dataset *ds, char *err, size_t errlen);

/* Writes ds's blob to path atomically (temporary file + rename). Returns 0 or -1 with err. */
int ds_index_write(const Dataset *ds, const char *path, char *err, size_t errlen);

/* Maps the cache file and validates everything (magic, version, layout, key, absolute path,
 * offsets and counts, checksum, internal consistency). Returns 1 with ds set (from_cache = 1),
 * 0 when there is no usable cache (why in reason: missing, stale, corrupt), -1 never. */
int ds_index_load(const char *path, const char *abs_path, const SourceKey *key, Dataset *ds,
                  char *reason, size_t reason_len);

/* Validates a blob in memory (what ds_index_load checks after the key) and points ds at it.
 * Returns 0 or -1 with the reason. */
int ds_index_attach(void *blob, size_t len, Dataset *ds, char *reason, size_t reason_len);

#endif
