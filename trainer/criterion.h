/* criterion.h - DETR's set loss (reference SetCriterion, models/detr.py) for one decoder layer,
 * with its backward, on host float buffers.
 *
 * For each image the Hungarian matcher (matcher.h) pairs min(Q, n) queries with the targets;
 * then, unweighted as in the reference's loss dict:
 *   loss_ce   = sum_q w_q * (-log softmax(logits_q)[y_q]) / sum_q w_q   over all B*Q queries,
 *               y_q = the matched target's label, or no-object (C1 - 1) for unmatched queries;
 *               w_q = 1, or eos_coef for no-object (PyTorch's weighted 'mean'). Not / num_boxes.
 *   loss_bbox = sum over matched pairs and the 4 coordinates of |pred - gt| / num_boxes
 *   loss_giou = sum over matched pairs of (1 - GIoU(pred, gt)) / num_boxes
 * and, logged only (no gradient):
 *   class_error       = 100 - top-1 accuracy (%) of the matched queries over all C1 classes. With no
 *                       matched query the reference's accuracy() returns 0, so this is then 100.
 *   cardinality_error = mean over images of |#queries whose argmax is not no-object - n|.
 * Argmax ties go to the lowest class index.
 *
 * Behaviour where the reference fails:
 *   - NaN/Inf in logits, boxes or targets, a box with negative width or height, or a label outside
 *     [0, C1 - 1): return -1 and a message naming the tensor, image and query/box (the reference
 *     crashes with an assert in generalized_box_iou, or indexes out of range).
 *   - Degenerate boxes (zero area, touching): IoU/GIoU as defined in box_ops.h, never NaN.
 *   - Every CE weight zero (eos_coef = 0 and no target in the batch): loss_ce = 0, no gradient
 *     (the reference returns NaN). */
#ifndef DETR_CRITERION_H
#define DETR_CRITERION_H
#include <stddef.h>
#include "config.h"
#include "matcher.h" /* ImageTargets */

typedef struct {
    double loss_ce, loss_bbox, loss_giou; /* unweighted, as the reference's loss dict */
    double class_error;                   /* %, see above */
    double cardinality_error;
} LayerLosses;

/* One decoder layer's predictions for the batch:
 *   logits: [B, Q, C1] (C1 = num_classes + 1, the last index is no-object)
 *   boxes:  [B, Q, 4]  post-sigmoid cxcywh
 *   t:      [B] targets
 *   num_boxes: the normaliser of the box losses (sum of target counts, clamped >= 1 by the caller);
 *              shared by all layers, so passed in. Must be finite and > 0.
 * Matches every image, computes the losses into *out, and when dlogits [B, Q, C1] / dboxes [B, Q, 4]
 * are non-NULL ACCUMULATES (+=) into them the gradient of
 *   grad_scale * (w->ce_coef * loss_ce + w->bbox_coef * loss_bbox + w->giou_coef * loss_giou).
 * Returns 0, or -1 with a message in err (errlen bytes) for invalid input; on -1 *out and the
 * gradients are left untouched. */
int criterion_layer(const float *logits, const float *boxes, int B, int Q, int C1,
                    const ImageTargets *t, double num_boxes, const LossWeights *w,
                    double grad_scale, LayerLosses *out, float *dlogits, float *dboxes, char *err,
                    size_t errlen);

/* The matching alone (what criterion_layer uses): query_to_target [B, Q] out, the index of the
 * target matched to each query of each image, or -1. Returns 0, or -1 with a message in err. */
int criterion_match(const float *logits, const float *boxes, int B, int Q, int C1,
                    const ImageTargets *t, const LossWeights *w, int *query_to_target, char *err,
                    size_t errlen);

#endif
