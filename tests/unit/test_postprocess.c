/* test_postprocess.c - the reference PostProcess (trainer/postprocess.h).
 *  - a hand computation: softmax over all classes, the no-object class excluded from the argmax
 *    even when it is the largest, the score is the softmax probability, ties go to the lowest
 *    class, boxes cxcywh -> pixel COCO xywh with the original (w, h); a one-class head;
 *  - PyTorch (tests/ref/gen_postprocess_cases.py -> $DETR_FIXTURES/postprocess_cases.json):
 *    labels equal (except queries whose float32 probabilities tie: PyTorch takes the first of
 *    equal probabilities, the C code the largest logit), boxes bitwise equal, scores within 1
 *    float32 ulp of the float64 softmax of the same logits and within 1e-4 relative of PyTorch's
 *    float32 softmax (which rounds x - max to float32 before exp: ~1e-5 relative at |x| ~ 50). */
#include <float.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>
#include "check.h"
#include "postprocess.h"

static void test_hand(void) {
    /* query 0: probabilities 1/8, 2/8, 5/8 -> no-object (5/8) dropped: label 1, score 0.25 */
    /* query 1: two equal best real classes -> the first (label 0) */
    const float logits[2 * 3] = {0.0f, logf(2.0f), logf(5.0f), 1.5f, 1.5f, -3.0f}; /* [Q=2, C1=3] */
    const float boxes[2 * 4] = {0.5f, 0.5f, 0.25f, 0.5f, 0.125f, 0.75f, 0.25f, 0.5f}; /* [2, 4] cxcywh */
    int labels[2];
    float scores[2], xywh[8]; /* [2], [2, 4] */
    detr_postprocess(logits, boxes, 2, 3, 100, 50, labels, scores, xywh);
    CHECK("hand: the no-object class is excluded from the argmax; score = softmax probability",
          labels[0] == 1 && fabsf(scores[0] - 0.25f) < 1e-7f, "label %d score %.9g", labels[0], scores[0]);
    double e = exp(1.5 + 3.0), p1 = e / (2 * e + 1);
    CHECK("hand: equal best logits -> the lowest class; score over all C1 classes",
          labels[1] == 0 && fabs(scores[1] - p1) < 1e-7, "label %d score %.9g (want %.9g)", labels[1], scores[1], p1);
    /* box 0: x 37.5..62.5 of 100, y 12.5..37.5 of 50; box 1: x 0..25, y 25..50 */
    const float want[8] = {37.5f, 12.5f, 25.0f, 25.0f, 0.0f, 25.0f, 25.0f, 25.0f};
    CHECK("hand: boxes scaled to the original size, COCO [x, y, w, h]", !memcmp(xywh, want, sizeof(want)),
          "[%g %g %g %g] [%g %g %g %g]", xywh[0], xywh[1], xywh[2], xywh[3], xywh[4], xywh[5], xywh[6], xywh[7]);
    const float one[2] = {0.0f, logf(3.0f)}; /* one real class: probability 1/4 */
    detr_postprocess(one, boxes, 1, 2, 10, 10, labels, scores, xywh);
    CHECK("hand: a one-class head reports class 0 with its probability",
          labels[0] == 0 && fabsf(scores[0] - 0.25f) < 1e-7f, "label %d score %.9g", labels[0], scores[0]);
}

/* Float values of a JSON list into out[n]; 0 when the list has another length. */
static int get_floats(const json_t *list, float *out, size_t n) {
    if (json_array_size(list) != n) return 0;
    for (size_t i = 0; i < n; i++) out[i] = (float)json_number_value(json_array_get(list, i));
    return 1;
}

static int is_tie(const json_t *ties, int q) {
    for (size_t i = 0; i < json_array_size(ties); i++)
        if (json_integer_value(json_array_get(ties, i)) == q) return 1;
    return 0;
}

typedef struct {
    int label_mismatch, box_mismatch, ties_skipped, queries;
    double max_score_ulp, max_rel_f32;
} PyTotals;

static void check_image(const json_t *im, int Q, int C1, PyTotals *t) {
    float *logits = malloc(sizeof(float) * (size_t)Q * C1), *boxes = malloc(sizeof(float) * (size_t)Q * 4);
    float *ref_scores = malloc(sizeof(float) * (size_t)Q), *ref_f64 = malloc(sizeof(float) * (size_t)Q), *ref_boxes = malloc(sizeof(float) * (size_t)Q * 4);
    float *scores = malloc(sizeof(float) * (size_t)Q), *xywh = malloc(sizeof(float) * (size_t)Q * 4);
    int *labels = malloc(sizeof(int) * (size_t)Q);
    int ok = get_floats(json_object_get(im, "logits"), logits, (size_t)Q * C1) &&
             get_floats(json_object_get(im, "boxes"), boxes, (size_t)Q * 4) &&
             get_floats(json_object_get(im, "scores"), ref_scores, (size_t)Q) &&
             get_floats(json_object_get(im, "scores_f64"), ref_f64, (size_t)Q) &&
             get_floats(json_object_get(im, "boxes_xywh"), ref_boxes, (size_t)Q * 4) &&
             json_array_size(json_object_get(im, "labels")) == (size_t)Q;
    if (!ok) {
        t->label_mismatch = t->box_mismatch = 1 << 20; /* malformed fixture */
    } else {
        int W = (int)json_integer_value(json_object_get(im, "orig_w"));
        int H = (int)json_integer_value(json_object_get(im, "orig_h"));
        detr_postprocess(logits, boxes, Q, C1, W, H, labels, scores, xywh);
        const json_t *ref_labels = json_object_get(im, "labels"), *ties = json_object_get(im, "prob_ties");
        for (int q = 0; q < Q; q++) {
            t->queries++;
            if (is_tie(ties, q)) t->ties_skipped++;
            else if (labels[q] != json_integer_value(json_array_get(ref_labels, (size_t)q))) t->label_mismatch++;
            /* ulp of the reference value (FLT_EPSILON * |x| is 1 or 2 ulp) */
            double ulp = fabs((double)scores[q] - ref_f64[q]) / fmax(FLT_EPSILON * fabs(ref_f64[q]), FLT_MIN);
            double rel = fabs((double)scores[q] - ref_scores[q]) / fmax(fabs(ref_scores[q]), FLT_MIN);
            if (ulp > t->max_score_ulp) t->max_score_ulp = ulp;
            if (rel > t->max_rel_f32) t->max_rel_f32 = rel;
            if (memcmp(xywh + 4 * q, ref_boxes + 4 * q, 4 * sizeof(float))) t->box_mismatch++;
        }
    }
    free(logits), free(boxes), free(ref_scores), free(ref_f64), free(ref_boxes), free(scores), free(xywh), free(labels);
}

static void test_pytorch(void) {
    const char *fx = getenv("DETR_FIXTURES");
    char path[1024];
    snprintf(path, sizeof(path), "%s/postprocess_cases.json", fx ? fx : "build/fixtures");
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    if (!root) {
        test_skip("pytorch: PostProcess against PyTorch",
                  "no postprocess_cases.json in $DETR_FIXTURES (write it with /usr/bin/python3 "
                  "tests/ref/gen_postprocess_cases.py $DETR_FIXTURES/postprocess_cases.json)");
        return;
    }
    const json_t *cases = json_object_get(root, "cases");
    CHECK("pytorch: the fixture has cases", json_array_size(cases) >= 3, "%s", path);
    for (size_t c = 0; c < json_array_size(cases); c++) {
        const json_t *cs = json_array_get(cases, c);
        int Q = (int)json_integer_value(json_object_get(cs, "Q")), C1 = (int)json_integer_value(json_object_get(cs, "C1"));
        PyTotals t = {0, 0, 0, 0, 0, 0};
        const json_t *images = json_object_get(cs, "images");
        for (size_t i = 0; i < json_array_size(images); i++) check_image(json_array_get(images, i), Q, C1, &t);
        char name[200];
        snprintf(name, sizeof(name), "pytorch %s (Q %d, C1 %d): labels, scores, boxes as PyTorch's",
                 json_string_value(json_object_get(cs, "name")), Q, C1);
        CHECK(name, t.queries > 0 && t.label_mismatch == 0 && t.box_mismatch == 0 && t.max_score_ulp <= 1 &&
              t.max_rel_f32 <= 1e-4, "%d queries: %d labels and %d boxes differ, scores up to %.2f ulp (float64 "
              "softmax), %.2g relative (float32)", t.queries, t.label_mismatch, t.box_mismatch, t.max_score_ulp,
              t.max_rel_f32);
        printf("     %d queries, %d probability ties not compared; scores: %.2f ulp from the float64 "
               "softmax, %.2g relative from PyTorch's float32\n", t.queries, t.ties_skipped, t.max_score_ulp,
               t.max_rel_f32);
    }
    json_decref(root);
}

int main(void) {
    test_hand();
    test_pytorch();
    return test_finish();
}
