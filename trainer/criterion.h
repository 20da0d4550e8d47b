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

/* The divisors of one optimizer step's WHOLE batch. With gradient accumulation the step's batch
 * is split into micro-batches; the loss of the whole batch is then the SUM of the micro-batches'
 * losses when each is divided by the whole batch's divisors (criterion_layer_partial), and so is
 * its gradient. Build with loss_normalisers_init, then loss_normalisers_add for every
 * micro-batch's targets, before the first loss. Raw counts: */
typedef struct {
    long images;          /* images in the whole batch */
    long queries;         /* images * Q */
    long matched;         /* sum over images of min(Q, n): the queries the matcher pairs */
    long target_boxes;    /* sum over images of n */
    /* and the divisors derived from them (kept up to date by loss_normalisers_add): */
    double num_boxes;     /* box losses: max(target_boxes, 1) (the reference's clamp) */
    double ce_weight_sum; /* loss_ce: matched + eos_coef * (queries - matched) */
} LossNormalisers;

void loss_normalisers_init(LossNormalisers *n);
void loss_normalisers_add(LossNormalisers *n, const ImageTargets *t, int B, int Q, float eos_coef);

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

/* The same for one micro-batch of a larger batch: every loss term, and its gradient, is this
 * micro-batch's share, divided by the whole batch's normalisers (which must include this
 * micro-batch's targets), so that the micro-batches' LayerLosses and gradients add up to the
 * whole batch's. class_error is 100 * (matched - correct) / norm->matched (each micro-batch's
 * share; when no query of the whole batch is matched: 100 * B / norm->images) and
 * cardinality_error is the sum over this micro-batch's images / norm->images.
 * criterion_layer is this with the normalisers of its own batch (num_boxes as given). */
int criterion_layer_partial(const float *logits, const float *boxes, int B, int Q, int C1,
                            const ImageTargets *t, const LossNormalisers *norm, const LossWeights *w,
                            double grad_scale, LayerLosses *out, float *dlogits, float *dboxes,
                            char *err, size_t errlen);

/* The same with the matching given (query_to_target [B, Q], as criterion_match writes it), so that
 * a caller can time or reuse the matching; it is checked (each entry -1 or a target of its
 * image, no target twice, min(Q, n) pairs) and -1 returned with a message when invalid. */
int criterion_layer_matched(const float *logits, const float *boxes, int B, int Q, int C1,
                            const ImageTargets *t, const LossNormalisers *norm, const LossWeights *w,
                            const int *query_to_target, double grad_scale, LayerLosses *out,
                            float *dlogits, float *dboxes, char *err, size_t errlen);

/* The matching alone (what criterion_layer uses): query_to_target [B, Q] out, the index of the
 * target matched to each query of each image, or -1. Returns 0, or -1 with a message in err. */
int criterion_match(const float *logits, const float *boxes, int B, int Q, int C1,
                    const ImageTargets *t, const LossWeights *w, int *query_to_target, char *err,
                    size_t errlen);

#endif
