/* targets.h - ground-truth targets for a batch, read from the golden-I/O JSON file (T.json).
 *
 * T.json is a list with one entry per image, in batch order:
 *     [{"labels": [17, 3], "boxes": [[cx, cy, w, h], [cx, cy, w, h]]}, ...]
 * Boxes are (cx, cy, w, h) normalised by the unpadded image size, as the reference's targets are. */
#ifndef DETR_TARGETS_H
#define DETR_TARGETS_H
#include <stddef.h>

typedef struct {
    int n;          /* number of objects */
    int *labels;    /* [n] class ids, >= 0; NULL when n == 0 */
    float *boxes;   /* [n, 4] (cx, cy, w, h); NULL when n == 0 */
} ImageTargetsOwned;

/* Reads path into *out (an array with one entry per image; free with targets_free(*out, count)).
 * expected_images: the batch size the file must have, or -1 to accept any length (*count, when not
 * NULL, receives the number of images). Checks: the top level is a list; every entry is an object
 * with "labels" (non-negative integers) and "boxes" (lists of 4 finite numbers, w >= 0, h >= 0) of
 * equal length; other keys are ignored. Returns 0, or -1 with *out = NULL and a message in err
 * naming the file, the image index and the field. */
int targets_load_json_n(const char *path, int expected_images, ImageTargetsOwned **out, int *count, char *err,
                        size_t errlen);
/* The same for a known batch size (or -1, when the caller does not need the count). */
int targets_load_json(const char *path, int expected_images, ImageTargetsOwned **out, char *err, size_t errlen);
void targets_free(ImageTargetsOwned *t, int count);

#endif
