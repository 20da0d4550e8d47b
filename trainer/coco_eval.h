/* coco_eval.h - COCO bounding-box evaluation, the numbers of pycocotools' COCOeval(iouType='bbox')
 * with its default parameters: the 12 summary statistics and the per-category AP.
 *
 * Usage:
 *   CocoEval *e = coco_eval_load_gt("instances_val.json", err, sizeof err);
 *   coco_eval_add_detections(e, image_id, n, category_ids, boxes_xywh, scores);  (per image)
 *      or coco_eval_load_detections(e, "results.json", err, sizeof err);
 *   CocoEvalResult r;
 *   coco_eval_run(e, &r, err, sizeof err);      r.stats[0] is AP@[.50:.95]
 *   coco_eval_write_results(e, "detections.json", err, sizeof err);   (COCO result file)
 *   coco_eval_result_free(&r); coco_eval_clear_detections(e);  (the next evaluation reuses the GT)
 *   coco_eval_free(e);
 *
 * Semantics (pycocotools', see ../shared/testdata/cocoeval/README.md for the rules in full):
 *   - the images are all GT `images` and the categories all GT `categories`, sorted by id;
 *   - detections of a category that is not in the GT are kept (and written out) but not evaluated;
 *     detections of an image that is not in the GT are an error (pycocotools asserts);
 *   - a GT is ignored when iscrowd != 0 (an `ignore` field has no effect); its area for the area
 *     ranges is its `area` field (w*h when the field is absent, where pycocotools would fail);
 *     a detection's area is w*h;
 *   - per image and category the detections are stable-sorted by descending score (ties keep
 *     their insertion order) and only the first 100 are kept; greedy matching per IoU threshold;
 *   - an undefined statistic (no non-ignored GT in its slice) is -1.
 * Unlike pycocotools, an empty detection set is accepted (every defined statistic is then 0).
 * All arithmetic is IEEE double, in pycocotools' operation order; results match it to ~1e-15.
 *
 * Errors: functions that can fail return NULL / -1 and write a message naming the file, the
 * JSON field (e.g. "annotations[12].bbox") and the fix into err. No function prints. */
#ifndef DETR_COCO_EVAL_H
#define DETR_COCO_EVAL_H
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

struct json_t; /* jansson's json_t */

enum { COCO_EVAL_NUM_STATS = 12, COCO_EVAL_NUM_IOU = 10, COCO_EVAL_NUM_RECALL = 101 };

/* Short names of the 12 statistics in COCOeval order:
 * AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl. */
extern const char *const coco_eval_stat_names[COCO_EVAL_NUM_STATS];

typedef struct CocoEval CocoEval;

typedef struct {
    double stats[COCO_EVAL_NUM_STATS]; /* COCOeval.stats order; -1 = undefined */
    int n_categories;                  /* the GT categories, ascending id */
    int64_t *category_ids;             /* [n_categories] */
    double *category_ap;               /* [n_categories] AP@[.50:.95], area all, maxDets 100; -1 without GT */
    int64_t n_detections;              /* detections evaluated (category in the GT) */
    int64_t n_dropped;                 /* detections skipped: category not in the GT */
} CocoEvalResult;

/* Ground truth from a COCO instances JSON file (`images`, `categories`, `annotations` with
 * `image_id`, `category_id`, `bbox` [x,y,w,h], `area`, `iscrowd`; segmentations are ignored). */
CocoEval *coco_eval_load_gt(const char *path, char *err, size_t errlen);
/* The same from an already parsed JSON object; `source` names it in messages. */
CocoEval *coco_eval_gt_from_json(const struct json_t *gt, const char *source, char *err, size_t errlen);
void coco_eval_free(CocoEval *e);

int coco_eval_num_images(const CocoEval *e);
int coco_eval_num_categories(const CocoEval *e);
int64_t coco_eval_num_gt(const CocoEval *e);       /* GT annotations kept (image and category known) */
int64_t coco_eval_num_detections(const CocoEval *e); /* detections added so far, all categories */
/* Width and height of a GT image as the file gives them (0 when absent); -1 if the id is unknown. */
int coco_eval_image_size(const CocoEval *e, int64_t image_id, int *width, int *height);

/* Appends n detections of one image (the trainer's path; e.g. detr_postprocess's output, with the
 * model's labels as category ids, as the reference does). boxes_xywh [n, 4] are COCO pixels
 * [x, y, w, h]; scores [n]. Returns 0, or -1 (nothing added) when the image id is not in the GT or
 * a value is not finite; the message is then in coco_eval_last_error(e). */
int coco_eval_add_detections(CocoEval *e, int64_t image_id, int n, const int *category_ids,
                             const float *boxes_xywh, const float *scores);
const char *coco_eval_last_error(const CocoEval *e);

/* Appends the detections of a COCO result file: a JSON list of
 * {"image_id", "category_id", "bbox": [x, y, w, h], "score"} (other fields are ignored; an empty
 * list is fine). On error (malformed JSON, a missing or mistyped field, image ids that are not in
 * the GT, which are all named) nothing is added and -1 is returned. */
int coco_eval_load_detections(CocoEval *e, const char *path, char *err, size_t errlen);
int coco_eval_add_detections_json(CocoEval *e, const struct json_t *list, const char *source,
                                  char *err, size_t errlen);
void coco_eval_clear_detections(CocoEval *e);

/* evaluate + accumulate + summarize over the detections added so far. Fills *r (free it with
 * coco_eval_result_free). Returns 0, or -1 when out of memory. */
int coco_eval_run(CocoEval *e, CocoEvalResult *r, char *err, size_t errlen);
void coco_eval_result_free(CocoEvalResult *r);

/* Writes every added detection as a COCO result JSON list, atomically (temporary file in the
 * same folder, fsync, rename): the file is either the complete new one or absent/unchanged.
 * Numbers are written so that they read back as exactly the doubles evaluated here. */
int coco_eval_write_results(const CocoEval *e, const char *path, char *err, size_t errlen);

/* Prints the 12 lines of COCOeval.summarize() (" Average Precision  (AP) @[ IoU=0.50:0.95 | ..."). */
void coco_eval_print_summary(FILE *f, const double stats[COCO_EVAL_NUM_STATS]);

/* The thresholds as pycocotools builds them with numpy.linspace (not the decimal values). */
void coco_eval_thresholds(double iou[COCO_EVAL_NUM_IOU], double recall[COCO_EVAL_NUM_RECALL]);

#endif
