/* check.h (dataloader) - `detr-data check`: validates a COCO-format dataset and lists every
 * problem, one line each ("<kind>: <detail>"), then a summary with the count of every kind.
 *
 * What is checked: the JSON (syntax with line and column, required fields and their types),
 * duplicate image / annotation / category ids, images with a bad size in the JSON, image files
 * (missing, unreadable, undecodable or truncated, above max_pixels, size differing from the
 * JSON: the size comes from the file's header), boxes (NaN/Inf, zero or negative width or
 * height, outside the image by more than box_tolerance pixels), annotations whose image id or
 * category id is unknown.
 *
 * Not to be confused with tests/unit/check.h (the test harness): from outside dataloader/,
 * include this one as "../../dataloader/check.h". */
#ifndef DETR_DATASET_CHECK_H
#define DETR_DATASET_CHECK_H
#include <stdint.h>
#include <stdio.h>

typedef enum {
    CHECK_JSON = 0,          /* malformed JSON or a missing / mistyped field (checking stops) */
    CHECK_DUP_IMAGE_ID,      /* one per extra occurrence */
    CHECK_DUP_ANN_ID,
    CHECK_DUP_CATEGORY_ID,
    CHECK_BAD_IMAGE_SIZE,    /* width or height <= 0 in the JSON */
    CHECK_MISSING_IMAGE,     /* no such file */
    CHECK_UNREADABLE_IMAGE,  /* permission, a folder, empty file, I/O error */
    CHECK_UNDECODABLE_IMAGE, /* unknown format, corrupt or truncated data */
    CHECK_TOO_LARGE_IMAGE,   /* more pixels than max_pixels (from the header) */
    CHECK_SIZE_MISMATCH,     /* file's size differs from the JSON's width x height */
    CHECK_UNKNOWN_IMAGE_ID,  /* annotation's image_id not in "images" */
    CHECK_UNKNOWN_CATEGORY,  /* annotation's category_id not in "categories" */
    CHECK_BAD_BOX,           /* NaN/Inf, or width or height <= 0 */
    CHECK_BOX_OUT_OF_RANGE,  /* outside its image by more than box_tolerance pixels */
    CHECK_NKINDS
} CheckKind;

/* Short name of a kind as printed at the start of its lines, e.g. "missing-image". */
const char *check_kind_name(CheckKind k);

typedef struct {
    int64_t max_pixels;      /* images above it are problems; default 100e6 (the loader's) */
    int decode;              /* 1 (default): decode every image fully, catching truncated and
                              * corrupt data the loader would skip; 0: read headers only */
    double box_tolerance;    /* pixels a box may overhang its image (annotation tools round);
                              * default 1.0 */
    const char *cache_dir;   /* unused: check always reads the JSON itself (a file with
                              * duplicate ids cannot be indexed); kept for the command's --cache */
    int threads;             /* image checks in parallel; 0 = OpenMP's default */
} CheckOptions;

void check_options_default(CheckOptions *o);

typedef struct {
    int64_t counts[CHECK_NKINDS];
    int64_t total_problems;
    int64_t n_images, n_anns, n_categories; /* as read from the JSON */
} CheckReport;

/* Checks the dataset (ann: instances JSON, images_dir: its image folder) and writes every
 * problem and the summary to out (may be NULL: counts only). opt NULL = defaults.
 * Returns 0 when clean, 1 when problems were found (rep->total_problems > 0), -1 when the check
 * itself could not run (out of memory); rep is always filled. */
int dataset_check(const char *ann, const char *images_dir, const CheckOptions *opt,
                  CheckReport *rep, FILE *out);

void check_report_free(CheckReport *rep);

#endif
