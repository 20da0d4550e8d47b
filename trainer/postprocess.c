/* postprocess.c - the reference DETR PostProcess. See postprocess.h. */
#include "postprocess.h"

#include <math.h>
#include <stddef.h>

/* Label and score of one query: argmax over the real classes of the softmax over all C1. */
static void best_class(const float *logit /* [C1] */, int C1, int *label, float *score) {
    float mx = logit[0];
    for (int c = 1; c < C1; c++)
        if (logit[c] > mx) mx = logit[c];
    int best = 0;
    for (int c = 1; c < C1 - 1; c++) /* strict >: the first of equal logits wins */
        if (logit[c] > logit[best]) best = c;
    double sum = 0;
    for (int c = 0; c < C1; c++) sum += exp((double)logit[c] - (double)mx);
    *label = best;
    *score = (float)(exp((double)logit[best] - (double)mx) / sum);
}

/* cxcywh (normalised) -> xyxy * (W, H, W, H) -> xywh, float32 in the reference's order. */
static void scale_box(const float *b /* [4] */, float W, float H, float *out /* [4] */) {
    float x0 = b[0] - 0.5f * b[2], y0 = b[1] - 0.5f * b[3];
    float x1 = b[0] + 0.5f * b[2], y1 = b[1] + 0.5f * b[3];
    x0 *= W, x1 *= W, y0 *= H, y1 *= H;
    out[0] = x0;
    out[1] = y0;
    out[2] = x1 - x0;
    out[3] = y1 - y0;
}

void detr_postprocess(const float *logits, const float *boxes, int Q, int C1, int orig_w, int orig_h,
                      int *labels, float *scores, float *boxes_xywh) {
    for (int q = 0; q < Q; q++) {
        if (C1 >= 2) {
            best_class(logits + (size_t)q * C1, C1, &labels[q], &scores[q]);
        } else { /* only the no-object class: nothing to report */
            labels[q] = 0;
            scores[q] = 0;
        }
        scale_box(boxes + (size_t)q * 4, (float)orig_w, (float)orig_h, boxes_xywh + (size_t)q * 4);
    }
}
