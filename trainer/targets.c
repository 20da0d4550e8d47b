/* targets.c - T.json reader (one {"labels", "boxes"} entry per image). See targets.h. */
#include "targets.h"

#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void set_err(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || errlen == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

void targets_free(ImageTargetsOwned *t, int count) {
    if (!t) return;
    for (int i = 0; i < count; i++) {
        free(t[i].labels);
        free(t[i].boxes);
    }
    free(t);
}

static int parse_labels(const char *path, int img, const json_t *jl, ImageTargetsOwned *t, char *err,
                        size_t errlen) {
    for (int k = 0; k < t->n; k++) {
        const json_t *v = json_array_get(jl, (size_t)k);
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > INT_MAX) {
            set_err(err, errlen, "%s: image %d: labels[%d] is not a non-negative integer class id", path, img, k);
            return -1;
        }
        t->labels[k] = (int)json_integer_value(v);
    }
    return 0;
}

static int parse_boxes(const char *path, int img, const json_t *jb, ImageTargetsOwned *t, char *err,
                       size_t errlen) {
    static const char *coord[4] = {"cx", "cy", "w", "h"};
    for (int k = 0; k < t->n; k++) {
        const json_t *box = json_array_get(jb, (size_t)k);
        if (!json_is_array(box) || json_array_size(box) != 4) {
            if (json_is_array(box))
                set_err(err, errlen, "%s: image %d: boxes[%d] has %zu numbers, expected 4 (cx, cy, w, h)", path, img,
                        k, json_array_size(box));
            else
                set_err(err, errlen, "%s: image %d: boxes[%d] is not a list of 4 numbers (cx, cy, w, h)", path, img,
                        k);
            return -1;
        }
        for (int c = 0; c < 4; c++) {
            const json_t *v = json_array_get(box, (size_t)c);
            double x = json_is_number(v) ? json_number_value(v) : NAN;
            if (!isfinite(x) || !isfinite((float)x)) {
                set_err(err, errlen, "%s: image %d: boxes[%d] %s is not a finite number", path, img, k, coord[c]);
                return -1;
            }
            if (c >= 2 && x < 0) {
                set_err(err, errlen, "%s: image %d: boxes[%d] %s = %g is negative (boxes are cx, cy, w, h)", path,
                        img, k, coord[c], x);
                return -1;
            }
            t->boxes[4 * k + c] = (float)x;
        }
    }
    return 0;
}

static int parse_image(const char *path, int img, const json_t *entry, ImageTargetsOwned *t, char *err,
                       size_t errlen) {
    if (!json_is_object(entry)) {
        set_err(err, errlen, "%s: image %d: entry is not an object {\"labels\": [...], \"boxes\": [...]}", path, img);
        return -1;
    }
    const json_t *jl = json_object_get(entry, "labels"), *jb = json_object_get(entry, "boxes");
    if (!json_is_array(jl)) {
        set_err(err, errlen, "%s: image %d: \"labels\" is missing or not a list of integers", path, img);
        return -1;
    }
    if (!json_is_array(jb)) {
        set_err(err, errlen, "%s: image %d: \"boxes\" is missing or not a list of [cx, cy, w, h]", path, img);
        return -1;
    }
    if (json_array_size(jl) != json_array_size(jb)) {
        set_err(err, errlen, "%s: image %d: %zu labels but %zu boxes: every object needs one label and one box", path,
                img, json_array_size(jl), json_array_size(jb));
        return -1;
    }
    if (json_array_size(jl) > INT_MAX / 4) {
        set_err(err, errlen, "%s: image %d: too many objects (%zu)", path, img, json_array_size(jl));
        return -1;
    }
    t->n = (int)json_array_size(jl);
    if (t->n > 0) {
        t->labels = malloc(sizeof(int) * (size_t)t->n);       /* [n] */
        t->boxes = malloc(sizeof(float) * 4 * (size_t)t->n);  /* [n, 4] */
        if (!t->labels || !t->boxes) {
            set_err(err, errlen, "%s: image %d: out of memory", path, img);
            return -1;
        }
    }
    if (parse_labels(path, img, jl, t, err, errlen) != 0) return -1;
    return parse_boxes(path, img, jb, t, err, errlen);
}

int targets_load_json_n(const char *path, int expected_images, ImageTargetsOwned **out, int *count_out, char *err,
                        size_t errlen) {
    *out = NULL;
    if (count_out) *count_out = 0;
    json_error_t jerr;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        set_err(err, errlen, "%s: cannot read as JSON (line %d, column %d: %s)", path, jerr.line, jerr.column,
                jerr.text);
        return -1;
    }
    if (!json_is_array(root)) {
        set_err(err, errlen, "%s: expected a list with one {\"labels\", \"boxes\"} entry per image", path);
        json_decref(root);
        return -1;
    }
    size_t count = json_array_size(root);
    if (expected_images >= 0 && count != (size_t)expected_images) {
        set_err(err, errlen, "%s: has targets for %zu images, expected %d (one per image of the batch)", path, count,
                expected_images);
        json_decref(root);
        return -1;
    }
    if (count > INT_MAX) {
        set_err(err, errlen, "%s: too many images (%zu)", path, count);
        json_decref(root);
        return -1;
    }
    ImageTargetsOwned *t = calloc(count ? count : 1, sizeof(ImageTargetsOwned));
    if (!t) {
        set_err(err, errlen, "%s: out of memory", path);
        json_decref(root);
        return -1;
    }
    for (size_t i = 0; i < count; i++)
        if (parse_image(path, (int)i, json_array_get(root, i), &t[i], err, errlen) != 0) {
            targets_free(t, (int)count);
            json_decref(root);
            return -1;
        }
    json_decref(root);
    *out = t;
    if (count_out) *count_out = (int)count;
    return 0;
}

int targets_load_json(const char *path, int expected_images, ImageTargetsOwned **out, char *err, size_t errlen) {
    return targets_load_json_n(path, expected_images, out, NULL, err, errlen);
}
