/* coco_eval.c - COCO bounding-box evaluation (pycocotools COCOeval, iouType 'bbox'). See coco_eval.h.
 *
 * Layout of the computation (pycocotools' evaluate / accumulate / summarize):
 *   cells     one per (category, image) pair that has a GT or a detection, ascending (category,
 *             image id); a cell's GTs are in file order, its detections stable-sorted by
 *             descending score and cut to 100 (COCOeval's evaluateImg input).
 *   evaluate  per cell: the IoU matrix once, then for each area range the greedy matching at each
 *             IoU threshold -> one flag byte per (area, threshold, detection) and the number of
 *             non-ignored GTs per area range. Cells are independent (OpenMP).
 *   accumulate per category (independent, OpenMP) and maxDets: the detections of its cells, stable-
 *             sorted by score; per area range and threshold the cumulative TP/FP, recall and the
 *             interpolated precision at the 101 recall thresholds.
 *   summarize the means of the entries > -1 of the precision / recall slices, summed in numpy's
 *             pairwise order.
 * Work is O(total detections * log) plus, per cell, O(D * G) for the IoUs and the matching. */
#include "coco_eval.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

enum {
    N_AREA = 4,      /* all, small, medium, large */
    N_MAXDET = 3,    /* 1, 10, 100 */
    MAX_DETS = 100,  /* detections kept per image and category */
    FLAG_MATCHED = 1,
    FLAG_IGNORED = 2,
};

static const double AREA_RANGES[N_AREA][2] = {{0, 1e10}, {0, 1024}, {1024, 9216}, {9216, 1e10}};
static const int MAX_DETS_LIST[N_MAXDET] = {1, 10, 100};

const char *const coco_eval_stat_names[COCO_EVAL_NUM_STATS] = {
    "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"};

typedef struct {
    double box[4]; /* x, y, w, h */
    double area;   /* the `area` field (w*h when absent) */
    int32_t img;   /* index into image_ids */
    int32_t cat;   /* index into cat_ids */
    uint8_t crowd;
} GtBox;

typedef struct {
    double box[4]; /* x, y, w, h */
    double score;
    int64_t category_id; /* as given (written back out even when not in the GT) */
    int32_t img;         /* index into image_ids */
    int32_t cat;         /* index into cat_ids, -1: category not in the GT (not evaluated) */
} Det;

struct CocoEval {
    int n_images;
    int64_t *image_ids; /* [n_images] ascending, unique */
    int *widths, *heights; /* [n_images] from the file, 0 when absent */
    int n_cats;
    int64_t *cat_ids; /* [n_cats] ascending, unique */
    int64_t n_gt;
    GtBox *gt; /* [n_gt] sorted by (cat, img, file order) */
    int64_t n_det, cap_det;
    Det *det; /* [n_det] in insertion order (= the result file's order) */
    char last_error[1024];
};

/* Sort record for grouping GTs / detections by (category, image) while keeping their order in
 * the file within a pair: qsort is not stable, so the position is the last key. */
typedef struct {
    int32_t cat, img;
    int64_t pos;
} PairKey;

static int cmp_pair_key(const void *a, const void *b) {
    const PairKey *x = a, *y = b;
    if (x->cat != y->cat) return (x->cat > y->cat) - (x->cat < y->cat);
    if (x->img != y->img) return (x->img > y->img) - (x->img < y->img);
    return (x->pos > y->pos) - (x->pos < y->pos);
}

/* Sort record for "stable sort by descending score": ties keep ascending pos. */
typedef struct {
    double score;
    int64_t pos;
} ScoreKey;

static int cmp_score_key(const void *a, const void *b) {
    const ScoreKey *x = a, *y = b;
    if (x->score != y->score) return x->score < y->score ? 1 : -1;
    return (x->pos > y->pos) - (x->pos < y->pos);
}

static void set_err(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || errlen == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* ------------------------------------------------------------------------------------------------
 * Thresholds (numpy.linspace: element i is start + i * ((stop - start) / (num - 1)), last = stop)
 * ---------------------------------------------------------------------------------------------- */

static void linspace(double start, double stop, int num, double *out) {
    double step = (stop - start) / (double)(num - 1);
    for (int i = 0; i < num; i++) out[i] = (double)i * step + start;
    out[num - 1] = stop;
}

void coco_eval_thresholds(double iou[COCO_EVAL_NUM_IOU], double recall[COCO_EVAL_NUM_RECALL]) {
    if (iou) linspace(0.5, 0.95, COCO_EVAL_NUM_IOU, iou);
    if (recall) linspace(0.0, 1.0, COCO_EVAL_NUM_RECALL, recall);
}

/* ------------------------------------------------------------------------------------------------
 * Id lookups
 * ---------------------------------------------------------------------------------------------- */

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Index of id in the ascending array ids[n], or -1. */
static int find_id(const int64_t *ids, int n, int64_t id) {
    int lo = 0, hi = n - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        if (ids[mid] == id) return mid;
        if (ids[mid] < id) lo = mid + 1;
        else hi = mid - 1;
    }
    return -1;
}

/* Sorts ids[n] and removes duplicates; returns the new count. */
static int sort_unique(int64_t *ids, int n) {
    if (n == 0) return 0;
    qsort(ids, (size_t)n, sizeof(int64_t), cmp_i64);
    int k = 1;
    for (int i = 1; i < n; i++)
        if (ids[i] != ids[k - 1]) ids[k++] = ids[i];
    return k;
}

/* ------------------------------------------------------------------------------------------------
 * JSON field helpers: 1 = present and valid, 0 = absent, -1 = present with the wrong type
 * ---------------------------------------------------------------------------------------------- */

static int get_int64(const json_t *obj, const char *key, int64_t *out) {
    const json_t *v = json_object_get(obj, key);
    if (!v) return 0;
    if (json_is_integer(v)) {
        *out = (int64_t)json_integer_value(v);
        return 1;
    }
    if (json_is_real(v)) { /* 3.0 is accepted as 3, as Python's dict lookups would */
        double d = json_real_value(v);
        if (d == floor(d) && fabs(d) < 9.0e15) {
            *out = (int64_t)d;
            return 1;
        }
    }
    return -1;
}

/* iscrowd: an integer (or true/false); absent = 0. */
static int get_crowd(const json_t *obj, int64_t *out) {
    const json_t *v = json_object_get(obj, "iscrowd");
    if (v && json_is_boolean(v)) {
        *out = json_is_true(v);
        return 1;
    }
    return get_int64(obj, "iscrowd", out);
}

static int get_number(const json_t *obj, const char *key, double *out) {
    const json_t *v = json_object_get(obj, key);
    if (!v) return 0;
    if (!json_is_number(v)) return -1;
    *out = json_number_value(v);
    return 1;
}

static int get_box(const json_t *obj, const char *key, double box[4]) {
    const json_t *v = json_object_get(obj, key);
    if (!v) return 0;
    if (!json_is_array(v) || json_array_size(v) != 4) return -1;
    for (size_t i = 0; i < 4; i++) {
        const json_t *x = json_array_get(v, i);
        if (!json_is_number(x)) return -1;
        box[i] = json_number_value(x);
    }
    return 1;
}

static const json_t *get_array(const json_t *root, const char *key, const char *src, int required,
                               char *err, size_t errlen) {
    const json_t *v = json_object_get(root, key);
    if (!v && !required) return NULL;
    if (!v || !json_is_array(v)) {
        set_err(err, errlen, "%s: the field `%s` is %s; a COCO instances file has a list `%s`", src,
                key, v ? "not a list" : "missing", key);
        return NULL;
    }
    return v;
}

/* ------------------------------------------------------------------------------------------------
 * Ground truth
 * ---------------------------------------------------------------------------------------------- */

/* images[]: ids (sorted, unique) and sizes. */
static int parse_images(CocoEval *e, const json_t *arr, const char *src, char *err, size_t errlen) {
    size_t n = json_array_size(arr);
    if (n > (size_t)INT32_MAX) {
        set_err(err, errlen, "%s: %zu images is more than this evaluator supports", src, n);
        return -1;
    }
    e->image_ids = malloc((n ? n : 1) * sizeof(int64_t));
    e->widths = calloc(n ? n : 1, sizeof(int));
    e->heights = calloc(n ? n : 1, sizeof(int));
    if (!e->image_ids || !e->widths || !e->heights) {
        set_err(err, errlen, "%s: out of memory for %zu images", src, n);
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        const json_t *im = json_array_get(arr, i);
        int64_t id = 0;
        if (!json_is_object(im) || get_int64(im, "id", &id) != 1) {
            set_err(err, errlen, "%s: images[%zu].id is missing or not an integer; every image needs "
                    "an integer `id`", src, i);
            return -1;
        }
        e->image_ids[i] = id;
    }
    e->n_images = sort_unique(e->image_ids, (int)n);
    for (size_t i = 0; i < n; i++) { /* sizes, now that the indices are final */
        const json_t *im = json_array_get(arr, i);
        int64_t id = 0, w = 0, h = 0;
        get_int64(im, "id", &id);
        int k = find_id(e->image_ids, e->n_images, id);
        if (get_int64(im, "width", &w) == 1 && w > 0 && w <= INT32_MAX) e->widths[k] = (int)w;
        if (get_int64(im, "height", &h) == 1 && h > 0 && h <= INT32_MAX) e->heights[k] = (int)h;
    }
    return 0;
}

static int parse_categories(CocoEval *e, const json_t *arr, const char *src, char *err, size_t errlen) {
    size_t n = json_array_size(arr);
    if (n > (size_t)INT32_MAX) {
        set_err(err, errlen, "%s: %zu categories is more than this evaluator supports", src, n);
        return -1;
    }
    e->cat_ids = malloc((n ? n : 1) * sizeof(int64_t));
    if (!e->cat_ids) {
        set_err(err, errlen, "%s: out of memory", src);
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        const json_t *c = json_array_get(arr, i);
        if (!json_is_object(c) || get_int64(c, "id", &e->cat_ids[i]) != 1) {
            set_err(err, errlen, "%s: categories[%zu].id is missing or not an integer; every "
                    "category needs an integer `id`", src, i);
            return -1;
        }
    }
    e->n_cats = sort_unique(e->cat_ids, (int)n);
    return 0;
}

/* One annotation into *g; returns 1 kept, 0 dropped (image or category not in the GT, as
 * pycocotools' getAnnIds filters them), -1 error. *ann_id gets its id (or -1 when absent). */
static int parse_annotation(const CocoEval *e, const json_t *a, size_t i, const char *src, GtBox *g,
                            int64_t *ann_id, char *err, size_t errlen) {
    int64_t image_id = 0, cat_id = 0, crowd = 0;
    *ann_id = -1;
    if (!json_is_object(a)) {
        set_err(err, errlen, "%s: annotations[%zu] is not an object", src, i);
        return -1;
    }
    const char *bad = get_int64(a, "image_id", &image_id) != 1      ? "image_id (an integer)"
                      : get_int64(a, "category_id", &cat_id) != 1 ? "category_id (an integer)"
                      : get_box(a, "bbox", g->box) != 1            ? "bbox ([x, y, w, h], 4 numbers)"
                      : get_number(a, "area", &g->area) < 0         ? "area (a number)"
                      : get_crowd(a, &crowd) < 0                    ? "iscrowd (0 or 1)"
                      : get_int64(a, "id", ann_id) < 0              ? "id (an integer)"
                                                                    : NULL;
    if (bad) {
        set_err(err, errlen, "%s: annotations[%zu]: missing or invalid %s; bounding-box evaluation "
                "needs image_id, category_id and bbox on every annotation", src, i, bad);
        return -1;
    }
    for (int k = 0; k < 4; k++)
        if (!isfinite(g->box[k])) {
            set_err(err, errlen, "%s: annotations[%zu].bbox has a value that is not finite", src, i);
            return -1;
        }
    if (!json_object_get(a, "area")) g->area = g->box[2] * g->box[3];
    g->crowd = crowd != 0;
    g->img = find_id(e->image_ids, e->n_images, image_id);
    g->cat = find_id(e->cat_ids, e->n_cats, cat_id);
    return g->img >= 0 && g->cat >= 0;
}

typedef struct {
    int64_t ann_id;
    size_t index; /* position in annotations[] */
} AnnId;

static int cmp_ann_id(const void *a, const void *b) {
    const AnnId *x = a, *y = b;
    if (x->ann_id != y->ann_id) return (x->ann_id > y->ann_id) - (x->ann_id < y->ann_id);
    return (x->index > y->index) - (x->index < y->index);
}

/* pycocotools keys annotations by id: with a repeated id it would silently evaluate the last
 * one in place of the others. Refuse instead. */
static int check_unique_ann_ids(AnnId *ids, size_t n, const char *src, char *err, size_t errlen) {
    qsort(ids, n, sizeof(AnnId), cmp_ann_id);
    for (size_t i = 1; i < n; i++)
        if (ids[i].ann_id == ids[i - 1].ann_id) {
            set_err(err, errlen, "%s: annotations[%zu] and annotations[%zu] have the same id %lld; "
                    "pycocotools would silently evaluate only one of them: give every annotation a "
                    "unique id", src, ids[i - 1].index, ids[i].index, (long long)ids[i].ann_id);
            return -1;
        }
    return 0;
}


/* Reorders e->gt[0..n_gt) by (category, image), file order within a pair. */
static int sort_gt(CocoEval *e) {
    size_t n = e->n_gt ? (size_t)e->n_gt : 1;
    PairKey *keys = malloc(n * sizeof(PairKey));
    GtBox *sorted = malloc(n * sizeof(GtBox));
    if (!keys || !sorted) {
        free(keys);
        free(sorted);
        return -1;
    }
    for (int64_t i = 0; i < e->n_gt; i++) keys[i] = (PairKey){e->gt[i].cat, e->gt[i].img, i};
    qsort(keys, (size_t)e->n_gt, sizeof(PairKey), cmp_pair_key);
    for (int64_t i = 0; i < e->n_gt; i++) sorted[i] = e->gt[keys[i].pos];
    free(keys);
    free(e->gt);
    e->gt = sorted;
    return 0;
}

static int parse_annotations(CocoEval *e, const json_t *arr, const char *src, char *err, size_t errlen) {
    size_t n = arr ? json_array_size(arr) : 0;
    e->gt = malloc((n ? n : 1) * sizeof(GtBox));
    AnnId *ids = malloc((n ? n : 1) * sizeof(AnnId));
    if (!e->gt || !ids) {
        free(ids);
        set_err(err, errlen, "%s: out of memory for %zu annotations", src, n);
        return -1;
    }
    size_t n_ids = 0;
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        int64_t ann_id;
        int kept = parse_annotation(e, json_array_get(arr, i), i, src, &e->gt[e->n_gt], &ann_id, err, errlen);
        if (kept < 0) rc = -1;
        else if (kept) e->n_gt++;
        if (kept >= 0 && ann_id >= 0) ids[n_ids++] = (AnnId){ann_id, i};
    }
    if (rc == 0) rc = check_unique_ann_ids(ids, n_ids, src, err, errlen);
    free(ids);
    if (rc == 0 && sort_gt(e) != 0) {
        set_err(err, errlen, "%s: out of memory", src);
        rc = -1;
    }
    return rc;
}

CocoEval *coco_eval_gt_from_json(const json_t *gt, const char *source, char *err, size_t errlen) {
    const char *src = source ? source : "ground truth";
    if (!json_is_object(gt)) {
        set_err(err, errlen, "%s: not a COCO instances file (the top level must be an object with "
                "`images`, `categories` and `annotations`)", src);
        return NULL;
    }
    const json_t *images = get_array(gt, "images", src, 1, err, errlen);
    if (!images) return NULL;
    const json_t *cats = get_array(gt, "categories", src, 1, err, errlen);
    if (!cats) return NULL;
    const json_t *anns = json_object_get(gt, "annotations");
    if (anns && !(anns = get_array(gt, "annotations", src, 1, err, errlen))) return NULL;
    CocoEval *e = calloc(1, sizeof(CocoEval));
    if (!e) {
        set_err(err, errlen, "%s: out of memory", src);
        return NULL;
    }
    if (parse_images(e, images, src, err, errlen) || parse_categories(e, cats, src, err, errlen) ||
        parse_annotations(e, anns, src, err, errlen)) {
        coco_eval_free(e);
        return NULL;
    }
    return e;
}

static json_t *load_json_file(const char *path, char *err, size_t errlen) {
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je); /* a repeated key: the last wins, as in Python */
    if (!root) {
        if (je.line < 1) set_err(err, errlen, "%s: %s", path, je.text);
        else set_err(err, errlen, "%s: line %d, column %d: %s (the file is not valid JSON)", path,
                     je.line, je.column, je.text);
    }
    return root;
}

CocoEval *coco_eval_load_gt(const char *path, char *err, size_t errlen) {
    json_t *root = load_json_file(path, err, errlen);
    if (!root) return NULL;
    CocoEval *e = coco_eval_gt_from_json(root, path, err, errlen);
    json_decref(root);
    return e;
}

void coco_eval_free(CocoEval *e) {
    if (!e) return;
    free(e->image_ids);
    free(e->widths);
    free(e->heights);
    free(e->cat_ids);
    free(e->gt);
    free(e->det);
    free(e);
}

int coco_eval_num_images(const CocoEval *e) { return e->n_images; }
int coco_eval_num_categories(const CocoEval *e) { return e->n_cats; }
int64_t coco_eval_num_gt(const CocoEval *e) { return e->n_gt; }
int64_t coco_eval_num_detections(const CocoEval *e) { return e->n_det; }
const char *coco_eval_last_error(const CocoEval *e) { return e->last_error; }

int coco_eval_image_size(const CocoEval *e, int64_t image_id, int *width, int *height) {
    int k = find_id(e->image_ids, e->n_images, image_id);
    if (k < 0) return -1;
    if (width) *width = e->widths[k];
    if (height) *height = e->heights[k];
    return 0;
}

/* ------------------------------------------------------------------------------------------------
 * Detections
 * ---------------------------------------------------------------------------------------------- */

static int reserve_dets(CocoEval *e, int64_t more) {
    if (more < 0 || e->n_det > INT64_MAX / 2 - more) return -1;
    int64_t need = e->n_det + more;
    if (need <= e->cap_det) return 0;
    int64_t cap = e->cap_det ? e->cap_det : 1024;
    while (cap < need) cap *= 2;
    Det *d = realloc(e->det, (size_t)cap * sizeof(Det));
    if (!d) return -1;
    e->det = d;
    e->cap_det = cap;
    return 0;
}

static void append_det(CocoEval *e, int img, int64_t category_id, const double box[4], double score) {
    Det *d = &e->det[e->n_det++];
    memcpy(d->box, box, sizeof(d->box));
    d->score = score;
    d->category_id = category_id;
    d->img = img;
    d->cat = find_id(e->cat_ids, e->n_cats, category_id); /* -1: kept, written, not evaluated */
}

int coco_eval_add_detections(CocoEval *e, int64_t image_id, int n, const int *category_ids,
                             const float *boxes_xywh, const float *scores) {
    e->last_error[0] = 0;
    if (n < 0 || (n > 0 && (!category_ids || !boxes_xywh || !scores))) {
        set_err(e->last_error, sizeof(e->last_error), "coco_eval_add_detections: n = %d with %s",
                n, n < 0 ? "a negative count" : "a NULL array");
        return -1;
    }
    int img = find_id(e->image_ids, e->n_images, image_id);
    if (img < 0) {
        set_err(e->last_error, sizeof(e->last_error), "detections for image id %lld, which is not "
                "in the ground truth's images (%d images); evaluate against the annotation file "
                "of the images that were run", (long long)image_id, e->n_images);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        int finite = isfinite(scores[i]);
        for (int k = 0; k < 4; k++) finite = finite && isfinite(boxes_xywh[4 * i + k]);
        if (!finite) {
            set_err(e->last_error, sizeof(e->last_error), "detection %d of image id %lld has a "
                    "score or box value that is not finite (NaN or Inf: has training diverged?)",
                    i, (long long)image_id);
            return -1;
        }
    }
    if (reserve_dets(e, n) != 0) {
        set_err(e->last_error, sizeof(e->last_error), "out of memory for %lld detections",
                (long long)(e->n_det + n));
        return -1;
    }
    for (int i = 0; i < n; i++) {
        double box[4] = {boxes_xywh[4 * i], boxes_xywh[4 * i + 1], boxes_xywh[4 * i + 2], boxes_xywh[4 * i + 3]};
        append_det(e, img, category_ids[i], box, scores[i]);
    }
    return 0;
}

void coco_eval_clear_detections(CocoEval *e) { e->n_det = 0; }

/* Names the image ids of the detections that are not in the GT (ids[n], sorted here). */
static void unknown_images_error(int64_t *ids, int64_t n_dets, const char *src, int n_images,
                                 char *err, size_t errlen) {
    int n = sort_unique(ids, (int)n_dets);
    char list[256] = "";
    size_t len = 0;
    for (int i = 0; i < n && i < 10; i++)
        len += (size_t)snprintf(list + len, sizeof(list) - len, "%s%lld", i ? ", " : "", (long long)ids[i]);
    set_err(err, errlen, "%s: %lld detection(s) refer to %d image id(s) that are not in the ground "
            "truth's %d images: %s%s; pycocotools refuses such a result file too (\"Results do not "
            "correspond to current coco set\"): evaluate with the annotation file of the images the "
            "detections were made on", src, (long long)n_dets, n, n_images, list, n > 10 ? ", ..." : "");
}

/* Validates every element of the result list; on success *n_unknown is the count of detections
 * whose image is not in the GT (their image ids are in unknown[]). */
static int check_result_list(const CocoEval *e, const json_t *list, const char *src, int64_t *unknown,
                             int64_t *n_unknown, char *err, size_t errlen) {
    size_t n = json_array_size(list);
    *n_unknown = 0;
    for (size_t i = 0; i < n; i++) {
        const json_t *d = json_array_get(list, i);
        int64_t image_id = 0, cat_id = 0;
        double box[4], score = 0;
        const char *bad = !json_is_object(d)                              ? "the element (an object)"
                          : get_int64(d, "image_id", &image_id) != 1      ? "image_id (an integer)"
                          : get_int64(d, "category_id", &cat_id) != 1     ? "category_id (an integer)"
                          : get_box(d, "bbox", box) != 1                  ? "bbox ([x, y, w, h], 4 numbers)"
                          : get_number(d, "score", &score) != 1           ? "score (a number)"
                                                                          : NULL;
        if (bad) {
            set_err(err, errlen, "%s: [%zu]: missing or invalid %s; a COCO result file is a list of "
                    "{\"image_id\", \"category_id\", \"bbox\": [x, y, w, h], \"score\"}", src, i, bad);
            return -1;
        }
        if (find_id(e->image_ids, e->n_images, image_id) < 0) unknown[(*n_unknown)++] = image_id;
    }
    return 0;
}

int coco_eval_add_detections_json(CocoEval *e, const json_t *list, const char *source, char *err,
                                  size_t errlen) {
    const char *src = source ? source : "detections";
    if (!json_is_array(list)) {
        set_err(err, errlen, "%s: not a COCO result file (the top level must be a list of "
                "{\"image_id\", \"category_id\", \"bbox\", \"score\"} objects)", src);
        return -1;
    }
    size_t n = json_array_size(list);
    int64_t *unknown = malloc((n ? n : 1) * sizeof(int64_t)), n_unknown = 0;
    if (!unknown || reserve_dets(e, (int64_t)n) != 0) {
        free(unknown);
        set_err(err, errlen, "%s: out of memory for %zu detections", src, n);
        return -1;
    }
    int rc = check_result_list(e, list, src, unknown, &n_unknown, err, errlen);
    if (rc == 0 && n_unknown > 0) {
        unknown_images_error(unknown, n_unknown, src, e->n_images, err, errlen);
        rc = -1;
    }
    free(unknown);
    if (rc) return rc;
    for (size_t i = 0; i < n; i++) {
        const json_t *d = json_array_get(list, i);
        int64_t image_id = 0, cat_id = 0;
        double box[4], score = 0;
        get_int64(d, "image_id", &image_id);
        get_int64(d, "category_id", &cat_id);
        get_box(d, "bbox", box);
        get_number(d, "score", &score);
        append_det(e, find_id(e->image_ids, e->n_images, image_id), cat_id, box, score);
    }
    return 0;
}

int coco_eval_load_detections(CocoEval *e, const char *path, char *err, size_t errlen) {
    json_t *root = load_json_file(path, err, errlen);
    if (!root) return -1;
    int rc = coco_eval_add_detections_json(e, root, path, err, errlen);
    json_decref(root);
    return rc;
}

/* ------------------------------------------------------------------------------------------------
 * evaluate: cells and per-cell matching (COCOeval.computeIoU + evaluateImg)
 * ---------------------------------------------------------------------------------------------- */

enum { T_ = COCO_EVAL_NUM_IOU, R_ = COCO_EVAL_NUM_RECALL };

typedef struct {
    int32_t cat, img;
    int64_t gt_begin;   /* into e->gt */
    int32_t n_gt;
    int64_t dt_begin;   /* into Run.dt_index */
    int64_t n_dt_all;   /* detections of the pair */
    int32_t n_dt;       /* kept: min(n_dt_all, 100) */
    int64_t flag_off;   /* into Run.flags: [N_AREA][T][n_dt] */
    int32_t npig[N_AREA]; /* non-ignored GTs per area range */
} Cell;

typedef struct {
    const CocoEval *e;
    double iou_thr[T_], rec_thr[R_];
    int64_t n_cells;
    Cell *cells;         /* [n_cells] ascending (category, image) */
    int64_t *cat_begin;  /* [n_cats + 1]: category k's cells are [cat_begin[k], cat_begin[k+1]) */
    int64_t n_eval;      /* detections with a GT category */
    int64_t *dt_index;   /* [n_eval] detection indices grouped by cell; each cell's by descending score */
    uint8_t *flags;      /* FLAG_MATCHED | FLAG_IGNORED per (cell, area, threshold, kept detection) */
    double *precision;   /* [T][R][K][A][M], -1 = undefined */
    double *recall;      /* [T][K][A][M], -1 = undefined */
} Run;

static void run_free(Run *r) {
    free(r->cells);
    free(r->cat_begin);
    free(r->dt_index);
    free(r->flags);
    free(r->precision);
    free(r->recall);
}

/* pycocotools' bbox IoU (maskApi.c bbIou), in its operation order; boxes are [x, y, w, h].
 * For a crowd GT the union is the detection's area. */
static double coco_iou(const double *d, const double *g, int crowd) {
    double iw = fmin(d[2] + d[0], g[2] + g[0]) - fmax(d[0], g[0]);
    if (iw <= 0) return 0;
    double ih = fmin(d[3] + d[1], g[3] + g[1]) - fmax(d[1], g[1]);
    if (ih <= 0) return 0;
    double inter = iw * ih, da = d[2] * d[3];
    double uni = crowd ? da : da + g[2] * g[3] - inter;
    return inter / uni;
}

/* Groups the evaluated detections and the GTs into cells. */
static int build_cells(Run *r) {
    const CocoEval *e = r->e;
    int64_t n_eval = 0;
    for (int64_t i = 0; i < e->n_det; i++) n_eval += e->det[i].cat >= 0;
    PairKey *keys = malloc((size_t)(n_eval ? n_eval : 1) * sizeof(PairKey));
    r->dt_index = malloc((size_t)(n_eval ? n_eval : 1) * sizeof(int64_t));
    r->cells = malloc((size_t)(n_eval + e->n_gt + 1) * sizeof(Cell));
    r->cat_begin = calloc((size_t)e->n_cats + 1, sizeof(int64_t));
    if (!keys || !r->dt_index || !r->cells || !r->cat_begin) {
        free(keys);
        return -1;
    }
    r->n_eval = n_eval;
    for (int64_t i = 0, k = 0; i < e->n_det; i++)
        if (e->det[i].cat >= 0) keys[k++] = (PairKey){e->det[i].cat, e->det[i].img, i};
    qsort(keys, (size_t)n_eval, sizeof(PairKey), cmp_pair_key);
    for (int64_t i = 0; i < n_eval; i++) r->dt_index[i] = keys[i].pos;

    int64_t gi = 0, di = 0, nc = 0, flag_off = 0;
    while (gi < e->n_gt || di < n_eval) {
        /* the smaller (category, image) key of the next GT and the next detection */
        int use_gt = gi < e->n_gt &&
                     (di >= n_eval || e->gt[gi].cat < keys[di].cat ||
                      (e->gt[gi].cat == keys[di].cat && e->gt[gi].img <= keys[di].img));
        Cell *c = &r->cells[nc++];
        memset(c, 0, sizeof(*c));
        c->cat = use_gt ? e->gt[gi].cat : keys[di].cat;
        c->img = use_gt ? e->gt[gi].img : keys[di].img;
        c->gt_begin = gi;
        while (gi < e->n_gt && e->gt[gi].cat == c->cat && e->gt[gi].img == c->img) gi++, c->n_gt++;
        c->dt_begin = di;
        while (di < n_eval && keys[di].cat == c->cat && keys[di].img == c->img) di++, c->n_dt_all++;
        c->n_dt = (int32_t)(c->n_dt_all < MAX_DETS ? c->n_dt_all : MAX_DETS);
        c->flag_off = flag_off;
        flag_off += (int64_t)N_AREA * T_ * c->n_dt;
        r->cat_begin[c->cat + 1] = nc;
    }
    free(keys);
    r->n_cells = nc;
    for (int k = 0; k < e->n_cats; k++) /* categories without cells: empty ranges */
        if (r->cat_begin[k + 1] < r->cat_begin[k]) r->cat_begin[k + 1] = r->cat_begin[k];
    r->flags = malloc((size_t)(flag_off ? flag_off : 1));
    return r->flags ? 0 : -1;
}

typedef struct {
    double *iou;       /* [D, G] detection x GT (file order) */
    int32_t *order;    /* [G] GT positions: non-ignored first (stable) */
    uint8_t *gt_ig;    /* [G] ignore flag in that order */
    uint8_t *matched;  /* [G] matched at the current threshold, in that order */
    ScoreKey *sk;      /* [n_dt_all] */
} CellScratch;

/* Stable sort of the cell's detections by descending score (dt_index holds them in insertion
 * order, which is the position key). */
static void sort_cell_dets(const CocoEval *e, const Cell *c, int64_t *dt, ScoreKey *sk) {
    for (int64_t i = 0; i < c->n_dt_all; i++) sk[i] = (ScoreKey){e->det[dt[i]].score, dt[i]};
    qsort(sk, (size_t)c->n_dt_all, sizeof(ScoreKey), cmp_score_key);
    for (int64_t i = 0; i < c->n_dt_all; i++) dt[i] = sk[i].pos;
}

/* GT order and ignore flags for one area range; returns the number of non-ignored GTs. */
static int32_t order_gts(const GtBox *g, int G, const double rng[2], int32_t *order, uint8_t *gt_ig) {
    int32_t n = 0;
    for (int pass = 0; pass < 2; pass++)
        for (int j = 0; j < G; j++) {
            int ig = g[j].crowd || g[j].area < rng[0] || g[j].area > rng[1];
            if (ig != pass) continue;
            gt_ig[n] = (uint8_t)ig;
            order[n++] = j;
        }
    int32_t non_ignored = 0;
    for (int j = 0; j < G; j++) non_ignored += !gt_ig[j];
    return non_ignored;
}

/* Greedy matching of the kept detections at one IoU threshold (evaluateImg's inner loops). */
static void match_threshold(const GtBox *g, int G, int D, const CellScratch *s, double thr,
                            const double *dt_area, const double rng[2], uint8_t *flags /* [D] */) {
    memset(s->matched, 0, (size_t)G);
    for (int d = 0; d < D; d++) {
        double best = fmin(thr, 1 - 1e-10);
        int m = -1;
        for (int k = 0; k < G; k++) {
            int j = s->order[k];
            if (s->matched[k] && !g[j].crowd) continue;
            if (m > -1 && !s->gt_ig[m] && s->gt_ig[k]) break; /* found a real GT; the rest are ignored */
            double v = s->iou[(size_t)d * G + j];
            if (v < best) continue;
            best = v; /* >=: an equal IoU moves the match to the later GT */
            m = k;
        }
        if (m >= 0) {
            flags[d] = (uint8_t)(FLAG_MATCHED | (s->gt_ig[m] ? FLAG_IGNORED : 0));
            s->matched[m] = 1;
        } else {
            flags[d] = dt_area[d] < rng[0] || dt_area[d] > rng[1] ? FLAG_IGNORED : 0;
        }
    }
}

static void evaluate_cell(Run *r, Cell *c, CellScratch *s) {
    const CocoEval *e = r->e;
    int64_t *dt = r->dt_index + c->dt_begin;
    sort_cell_dets(e, c, dt, s->sk);
    const GtBox *g = e->gt + c->gt_begin;
    int G = c->n_gt, D = c->n_dt;
    double dt_area[MAX_DETS];
    for (int d = 0; d < D; d++) {
        const double *b = e->det[dt[d]].box;
        dt_area[d] = b[2] * b[3];
        for (int j = 0; j < G; j++) s->iou[(size_t)d * G + j] = coco_iou(b, g[j].box, g[j].crowd);
    }
    for (int a = 0; a < N_AREA; a++) {
        c->npig[a] = order_gts(g, G, AREA_RANGES[a], s->order, s->gt_ig);
        for (int t = 0; t < T_; t++)
            match_threshold(g, G, D, s, r->iou_thr[t], dt_area, AREA_RANGES[a],
                            r->flags + c->flag_off + ((int64_t)a * T_ + t) * D);
    }
}

static int evaluate_all(Run *r) {
    int64_t max_g = 1, max_dg = 1, max_dall = 1;
    for (int64_t i = 0; i < r->n_cells; i++) {
        const Cell *c = &r->cells[i];
        if (c->n_gt > max_g) max_g = c->n_gt;
        if ((int64_t)c->n_gt * c->n_dt > max_dg) max_dg = (int64_t)c->n_gt * c->n_dt;
        if (c->n_dt_all > max_dall) max_dall = c->n_dt_all;
    }
    int failed = 0;
#pragma omp parallel
    {
        CellScratch s = {malloc((size_t)max_dg * sizeof(double)), malloc((size_t)max_g * sizeof(int32_t)),
                         malloc((size_t)max_g), malloc((size_t)max_g),
                         malloc((size_t)max_dall * sizeof(ScoreKey))};
        int ok = s.iou && s.order && s.gt_ig && s.matched && s.sk;
        if (!ok) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic, 256)
        for (int64_t i = 0; i < r->n_cells; i++)
            if (ok) evaluate_cell(r, &r->cells[i], &s);
        free(s.iou);
        free(s.order);
        free(s.gt_ig);
        free(s.matched);
        free(s.sk);
    }
    return failed ? -1 : 0;
}

/* ------------------------------------------------------------------------------------------------
 * accumulate (COCOeval.accumulate)
 * ---------------------------------------------------------------------------------------------- */

static size_t prec_at(const Run *r, int t, int q, int k, int a, int m) {
    return (((((size_t)t * R_ + (size_t)q) * (size_t)r->e->n_cats + (size_t)k) * N_AREA + (size_t)a) * N_MAXDET) + (size_t)m;
}

static size_t rec_at(const Run *r, int t, int k, int a, int m) {
    return ((((size_t)t * (size_t)r->e->n_cats + (size_t)k) * N_AREA + (size_t)a) * N_MAXDET) + (size_t)m;
}

typedef struct {
    ScoreKey *sk;       /* [N] concatenated detections, then sorted; pos = concatenation index */
    const uint8_t **fl; /* [N] the entry's flags for area 0, threshold 0 */
    int32_t *stride;    /* [N] the entry's cell n_dt (flags of (a, t) are at fl + (a*T+t)*stride) */
    double *rc, *pr;    /* [N] */
} AccScratch;

/* Precision at the recall thresholds and the final recall of one (category, area, maxDet, IoU). */
static void accumulate_curve(Run *r, const AccScratch *s, int64_t N, int32_t npig, int k, int a, int m, int t) {
    double tp = 0, fp = 0;
    for (int64_t j = 0; j < N; j++) {
        int64_t p = s->sk[j].pos;
        uint8_t f = s->fl[p][((int64_t)a * T_ + t) * s->stride[p]];
        if (!(f & FLAG_IGNORED)) {
            if (f & FLAG_MATCHED) tp += 1;
            else fp += 1;
        }
        s->rc[j] = tp / (double)npig;
        s->pr[j] = tp / (fp + tp + 2.220446049250313e-16); /* numpy: tp / (fp + tp + np.spacing(1)) */
    }
    r->recall[rec_at(r, t, k, a, m)] = N ? s->rc[N - 1] : 0;
    for (int64_t j = N - 1; j > 0; j--) /* precision made non-increasing from the right */
        if (s->pr[j] > s->pr[j - 1]) s->pr[j - 1] = s->pr[j];
    int64_t j = 0;
    for (int q = 0; q < R_; q++) { /* searchsorted(rc, recThrs, 'left') */
        while (j < N && s->rc[j] < r->rec_thr[q]) j++;
        r->precision[prec_at(r, t, q, k, a, m)] = j < N ? s->pr[j] : 0;
    }
}

static void accumulate_category(Run *r, int k, AccScratch *s) {
    const Cell *c0 = r->cells + r->cat_begin[k], *c1 = r->cells + r->cat_begin[k + 1];
    if (c0 == c1) return; /* no GT and no detection: stays -1 */
    for (int m = 0; m < N_MAXDET; m++) {
        int64_t N = 0;
        for (const Cell *c = c0; c < c1; c++) {
            int keep = c->n_dt < MAX_DETS_LIST[m] ? c->n_dt : MAX_DETS_LIST[m];
            const int64_t *dt = r->dt_index + c->dt_begin;
            for (int d = 0; d < keep; d++, N++) {
                s->sk[N] = (ScoreKey){r->e->det[dt[d]].score, N};
                s->fl[N] = r->flags + c->flag_off + d;
                s->stride[N] = c->n_dt;
            }
        }
        qsort(s->sk, (size_t)N, sizeof(ScoreKey), cmp_score_key);
        for (int a = 0; a < N_AREA; a++) {
            int32_t npig = 0;
            for (const Cell *c = c0; c < c1; c++) npig += c->npig[a];
            if (npig == 0) continue; /* no non-ignored GT: stays -1 */
            for (int t = 0; t < T_; t++) accumulate_curve(r, s, N, npig, k, a, m, t);
        }
    }
}

static int accumulate_all(Run *r) {
    const CocoEval *e = r->e;
    size_t np = (size_t)T_ * R_ * (size_t)e->n_cats * N_AREA * N_MAXDET;
    size_t nr = (size_t)T_ * (size_t)e->n_cats * N_AREA * N_MAXDET;
    r->precision = malloc((np ? np : 1) * sizeof(double));
    r->recall = malloc((nr ? nr : 1) * sizeof(double));
    if (!r->precision || !r->recall) return -1;
    for (size_t i = 0; i < np; i++) r->precision[i] = -1;
    for (size_t i = 0; i < nr; i++) r->recall[i] = -1;
    int64_t max_n = 1;
    for (int k = 0; k < e->n_cats; k++) {
        int64_t n = 0;
        for (int64_t i = r->cat_begin[k]; i < r->cat_begin[k + 1]; i++) n += r->cells[i].n_dt;
        if (n > max_n) max_n = n;
    }
    int failed = 0;
#pragma omp parallel
    {
        AccScratch s = {malloc((size_t)max_n * sizeof(ScoreKey)), malloc((size_t)max_n * sizeof(uint8_t *)),
                        malloc((size_t)max_n * sizeof(int32_t)), malloc((size_t)max_n * sizeof(double)),
                        malloc((size_t)max_n * sizeof(double))};
        int ok = s.sk && s.fl && s.stride && s.rc && s.pr;
        if (!ok) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (int k = 0; k < e->n_cats; k++)
            if (ok) accumulate_category(r, k, &s);
        free(s.sk);
        free(s.fl);
        free(s.stride);
        free(s.rc);
        free(s.pr);
    }
    return failed ? -1 : 0;
}

/* ------------------------------------------------------------------------------------------------
 * summarize (COCOeval.summarize)
 * ---------------------------------------------------------------------------------------------- */

/* numpy's pairwise summation (np.add.reduce on a contiguous float64 array), so that the means
 * are the same doubles as np.mean's. */
static double pairwise_sum(const double *a, int64_t n) {
    if (n < 8) {
        double s = -0.0;
        for (int64_t i = 0; i < n; i++) s += a[i];
        return s;
    }
    if (n <= 128) {
        double p[8];
        for (int j = 0; j < 8; j++) p[j] = a[j];
        int64_t i = 8;
        for (; i < n - (n % 8); i += 8)
            for (int j = 0; j < 8; j++) p[j] += a[i + j];
        double s = ((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7]));
        for (; i < n; i++) s += a[i];
        return s;
    }
    int64_t n2 = n / 2;
    n2 -= n2 % 8;
    return pairwise_sum(a, n2) + pairwise_sum(a + n2, n - n2);
}

/* Mean of the values > -1 (compacted in place), or -1 when there are none. */
static double mean_defined(double *v, int64_t n) {
    int64_t m = 0;
    for (int64_t i = 0; i < n; i++)
        if (v[i] > -1) v[m++] = v[i];
    return m ? pairwise_sum(v, m) / (double)m : -1;
}

/* AP over the thresholds t0..t1-1 (all recall thresholds, all categories), numpy's C order. */
static double summarize_ap(const Run *r, int t0, int t1, int a, int m, double *buf) {
    int64_t n = 0;
    for (int t = t0; t < t1; t++)
        for (int q = 0; q < R_; q++)
            for (int k = 0; k < r->e->n_cats; k++) buf[n++] = r->precision[prec_at(r, t, q, k, a, m)];
    return mean_defined(buf, n);
}

static double summarize_ar(const Run *r, int a, int m, double *buf) {
    int64_t n = 0;
    for (int t = 0; t < T_; t++)
        for (int k = 0; k < r->e->n_cats; k++) buf[n++] = r->recall[rec_at(r, t, k, a, m)];
    return mean_defined(buf, n);
}

/* Index of the threshold equal to x (COCOeval selects AP50/AP75 with iouThr == x), or -1. */
static int threshold_index(const Run *r, double x) {
    for (int t = 0; t < T_; t++)
        if (r->iou_thr[t] == x) return t;
    return -1;
}

static int summarize(const Run *r, CocoEvalResult *out) {
    int K = r->e->n_cats;
    double *buf = malloc(((size_t)T_ * R_ * (size_t)K + 1) * sizeof(double));
    out->category_ids = malloc(((size_t)K + 1) * sizeof(int64_t));
    out->category_ap = malloc(((size_t)K + 1) * sizeof(double));
    if (!buf || !out->category_ids || !out->category_ap) {
        free(buf);
        return -1;
    }
    int t50 = threshold_index(r, 0.5), t75 = threshold_index(r, 0.75);
    double *st = out->stats;
    st[0] = summarize_ap(r, 0, T_, 0, 2, buf);
    st[1] = t50 < 0 ? -1 : summarize_ap(r, t50, t50 + 1, 0, 2, buf);
    st[2] = t75 < 0 ? -1 : summarize_ap(r, t75, t75 + 1, 0, 2, buf);
    for (int a = 1; a < N_AREA; a++) st[2 + a] = summarize_ap(r, 0, T_, a, 2, buf);
    for (int m = 0; m < N_MAXDET; m++) st[6 + m] = summarize_ar(r, 0, m, buf);
    for (int a = 1; a < N_AREA; a++) st[8 + a] = summarize_ar(r, a, 2, buf);
    out->n_categories = K;
    for (int k = 0; k < K; k++) {
        int64_t n = 0;
        for (int t = 0; t < T_; t++)
            for (int q = 0; q < R_; q++) buf[n++] = r->precision[prec_at(r, t, q, k, 0, 2)];
        out->category_ids[k] = r->e->cat_ids[k];
        out->category_ap[k] = mean_defined(buf, n);
    }
    free(buf);
    return 0;
}

int coco_eval_run(CocoEval *e, CocoEvalResult *out, char *err, size_t errlen) {
    memset(out, 0, sizeof(*out));
    Run r;
    memset(&r, 0, sizeof(r));
    r.e = e;
    coco_eval_thresholds(r.iou_thr, r.rec_thr);
    int rc = build_cells(&r);
    if (rc == 0) rc = evaluate_all(&r);
    if (rc == 0) rc = accumulate_all(&r);
    if (rc == 0) rc = summarize(&r, out);
    if (rc == 0) {
        out->n_detections = r.n_eval;
        out->n_dropped = e->n_det - r.n_eval;
    } else {
        coco_eval_result_free(out);
        set_err(err, errlen, "COCO evaluation: out of memory (%lld GT boxes, %lld detections)",
                (long long)e->n_gt, (long long)e->n_det);
    }
    run_free(&r);
    return rc;
}

void coco_eval_result_free(CocoEvalResult *r) {
    if (!r) return;
    free(r->category_ids);
    free(r->category_ap);
    r->category_ids = NULL;
    r->category_ap = NULL;
    r->n_categories = 0;
}

/* ------------------------------------------------------------------------------------------------
 * Output
 * ---------------------------------------------------------------------------------------------- */

void coco_eval_print_summary(FILE *f, const double stats[COCO_EVAL_NUM_STATS]) {
    static const char *area[] = {"all", "small", "medium", "large"};
    static const struct {
        int ap, area, maxdet;
        const char *iou;
    } rows[COCO_EVAL_NUM_STATS] = {
        {1, 0, 100, "0.50:0.95"}, {1, 0, 100, "0.50"}, {1, 0, 100, "0.75"}, {1, 1, 100, "0.50:0.95"},
        {1, 2, 100, "0.50:0.95"}, {1, 3, 100, "0.50:0.95"}, {0, 0, 1, "0.50:0.95"}, {0, 0, 10, "0.50:0.95"},
        {0, 0, 100, "0.50:0.95"}, {0, 1, 100, "0.50:0.95"}, {0, 2, 100, "0.50:0.95"}, {0, 3, 100, "0.50:0.95"},
    };
    for (int i = 0; i < COCO_EVAL_NUM_STATS; i++)
        fprintf(f, " %-18s %s @[ IoU=%-9s | area=%6s | maxDets=%3d ] = %0.3f\n",
                rows[i].ap ? "Average Precision" : "Average Recall", rows[i].ap ? "(AP)" : "(AR)",
                rows[i].iou, area[rows[i].area], rows[i].maxdet, stats[i]);
}

/* The shortest %g form (15 to 17 digits) that reads back as exactly v. */
static void format_double(double v, char *buf, size_t len) {
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(buf, len, "%.*g", prec, v);
        if (strtod(buf, NULL) == v) return;
    }
}

static int write_dets(FILE *f, const CocoEval *e) {
    char num[5][40];
    if (fputc('[', f) == EOF) return -1;
    for (int64_t i = 0; i < e->n_det; i++) {
        const Det *d = &e->det[i];
        for (int k = 0; k < 4; k++) format_double(d->box[k], num[k], sizeof(num[k]));
        format_double(d->score, num[4], sizeof(num[4]));
        if (fprintf(f, "%s\n{\"image_id\": %lld, \"category_id\": %lld, \"bbox\": [%s, %s, %s, %s], "
                    "\"score\": %s}", i ? "," : "", (long long)e->image_ids[d->img],
                    (long long)d->category_id, num[0], num[1], num[2], num[3], num[4]) < 0)
            return -1;
    }
    return fputs("\n]\n", f) == EOF ? -1 : 0;
}

/* fsync of the folder holding path, so that the rename is durable. Best effort. */
static void sync_parent_dir(const char *path) {
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash == dir) slash[1] = 0;
    else if (slash) *slash = 0;
    else snprintf(dir, sizeof(dir), ".");
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

int coco_eval_write_results(const CocoEval *e, const char *path, char *err, size_t errlen) {
    char tmp[4096];
    if (snprintf(tmp, sizeof(tmp), "%s.tmp.XXXXXX", path) >= (int)sizeof(tmp)) {
        set_err(err, errlen, "%s: path too long", path);
        return -1;
    }
    int fd = mkstemp(tmp);
    if (fd < 0) {
        set_err(err, errlen, "%s: cannot create a temporary file beside it (%s); check that the "
                "folder exists and is writable", path, strerror(errno));
        return -1;
    }
    FILE *f = fdopen(fd, "w");
    if (!f) {
        close(fd);
        unlink(tmp);
        set_err(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    int rc = fchmod(fd, 0644) != 0 || write_dets(f, e) != 0 || fflush(f) != 0 || fsync(fd) != 0 ? -1 : 0;
    int saved = errno;
    if (fclose(f) != 0 && rc == 0) rc = -1, saved = errno;
    if (rc == 0 && rename(tmp, path) != 0) rc = -1, saved = errno;
    if (rc != 0) {
        unlink(tmp);
        set_err(err, errlen, "%s: writing the detections failed (%s); the previous file, if any, is "
                "unchanged", path, strerror(saved));
        return -1;
    }
    sync_parent_dir(path);
    return 0;
}
