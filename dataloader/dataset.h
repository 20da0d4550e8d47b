/* dataset.h - a COCO-format detection dataset: the instances JSON parsed once (jansson) into a
 * compact binary index cached on disk, keyed on the annotation file's size, mtime and a content
 * hash, so re-opening a train2017-sized file takes well under a second. A stale or corrupt
 * cache is rebuilt, never trusted.
 *
 * Boxes are kept as in the JSON (x, y, w, h in pixels of the original image, plus iscrowd);
 * the reference's ConvertCocoPolysToMask (drop crowd, xywh -> xyxy, clamp to the image, drop
 * degenerate boxes) is applied by dataset_targets(). */
#ifndef DETR_DATASET_H
#define DETR_DATASET_H
#include <stddef.h>
#include <stdint.h>

typedef struct {
    int64_t id;          /* COCO image id */
    uint32_t file_off;   /* offset of the file name in Dataset.names */
    int32_t width, height;
    uint32_t first_ann;  /* index of its first annotation in Dataset.anns */
    uint32_t n_ann;
} DsImage;

typedef struct {
    float bbox[4];       /* x, y, w, h (pixels, as in the JSON) */
    int32_t category;    /* COCO category id */
    int32_t iscrowd;
    int64_t id;          /* annotation id */
} DsAnn;

typedef struct {
    char *ann_path, *images_dir;
    DsImage *images;     /* [n_images], in the JSON's order */
    int64_t n_images;
    DsAnn *anns;         /* [n_anns], grouped by image */
    int64_t n_anns;
    char *names;         /* file names, NUL-separated */
    int32_t *category_ids; /* [n_categories] from the JSON's "categories" */
    int n_categories;
    int num_classes;     /* max category id + 1 (the reference's num_classes) */
    int from_cache;      /* 1 if the index was read from the cache */
    void *mapping;       /* private: cache file mapping or heap block */
    size_t mapping_len;
    int64_t n_orphan_anns;   /* annotations skipped: their image_id is not in "images" */
    int64_t n_unknown_category_anns; /* annotations whose category_id is not in "categories"
                                      * (kept: num_classes covers them; negative ids are
                                      * dropped by dataset_targets) */
} Dataset;

/* Finds annotations/instances_<split>*.json and the <split>* image folder under dir
 * (split = "train" or "val"). Returns 0 or -1 with err naming what is missing. */
int dataset_find(const char *dir, const char *split, char *ann_out, size_t ann_len, char *img_out,
                 size_t img_len, char *err, size_t errlen);

/* Opens a dataset. cache_dir NULL = $XDG_CACHE_HOME/detr (or ~/.cache/detr). Malformed JSON is
 * an error with line and column; duplicate image ids are an error. Returns 0 or -1 with err.
 * Details: images_dir NULL means "." (file names relative to the working folder). The cache
 * file is <cache>/coco-index-<hash of the absolute annotation path>.bin; when the folder cannot
 * be created or written, the dataset still opens (from the JSON, with a warning on stderr).
 * Annotations with unknown image ids are skipped with one warning line (n_orphan_anns). */
int dataset_open(const char *ann_path, const char *images_dir, const char *cache_dir, Dataset *ds,
                 char *err, size_t errlen);
void dataset_close(Dataset *ds);

/* The cache file dataset_open uses for ann_path (cache_dir as in dataset_open). Returns 0 or -1
 * with err (annotation file missing, no cache folder). */
int dataset_index_path(const char *ann_path, const char *cache_dir, char *out, size_t len,
                       char *err, size_t errlen);

static inline const char *dataset_file_name(const Dataset *ds, int64_t i) {
    return ds->names + ds->images[i].file_off;
}

/* Training targets of image i after the reference's filtering: crowd boxes dropped (unless
 * keep_crowd), boxes converted to xyxy, clamped to [0,img_w]x[0,img_h] (the decoded image's
 * size), boxes with x1<=x0 or y1<=y0 dropped. Non-finite boxes are dropped and counted in
 * *n_dropped_invalid. Writes at most max boxes: boxes_xyxy [n,4] pixels, labels [n] category
 * ids. Returns n.
 * Details: *n_dropped_invalid (may be NULL) is SET (not added to) to the number of boxes
 * dropped for a reason the reference does not have: a NaN/Inf coordinate, a negative width or
 * height, a negative category id, or no room left (more than max kept boxes). Crowd and
 * degenerate boxes are the reference's normal filtering and are not counted. The arithmetic
 * is float32 like the reference's tensors (x1 = x + w, then clamp). Thread-safe: reads only. */
int dataset_targets(const Dataset *ds, int64_t i, int img_w, int img_h, int keep_crowd,
                    float *boxes_xyxy, int *labels, int max, int *n_dropped_invalid);

#endif
