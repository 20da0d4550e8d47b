/* matcher.h - DETR's Hungarian matcher (reference models/matcher.py) with an exact linear
 * assignment solver.
 *
 * Per image, the cost of giving target j to query q is
 *   C[q, j] = cost_bbox * L1(box_q, box_j)          (cxcywh, sum over the 4 coordinates)
 *           - cost_class * p_q(label_j)              (softmax over all C1 logits, no-object included)
 *           - cost_giou * GIoU(box_q, box_j)          (on xyxy; see box_ops.h for degenerate boxes)
 * and the matching is the assignment of min(Q, n) pairs with the least total cost, as
 * scipy.optimize.linear_sum_assignment returns it (ties may be broken differently). */
#ifndef DETR_MATCHER_H
#define DETR_MATCHER_H
#include <stddef.h>
#include "config.h"

/* One image's ground truth. */
typedef struct {
    int n;               /* number of boxes, 0 allowed */
    const int *labels;   /* [n] class ids in [0, num_classes) = [0, C1 - 1) */
    const float *boxes;  /* [n, 4] cxcywh, normalised to the image */
} ImageTargets;

/* Exact rectangular linear assignment (shortest augmenting paths with potentials, in the style of
 * Jonker-Volgenant; O(min^2 * max) time for a [rows, cols] matrix, double precision).
 *   cost: [rows, cols] row-major, every entry finite; rows or cols may be 0.
 *   row_to_col: [rows] out; the column given to each row, or -1 (exactly min(rows, cols) rows get
 *   one, and no column is given twice).
 * Returns the total cost of the assignment (0 when rows or cols is 0), or NAN when an entry is not
 * finite (row_to_col is then all -1). */
double lsa_solve(const double *cost, int rows, int cols, int *row_to_col);

/* Fills the matching cost of one image:
 *   probs: [Q, C1] softmax probabilities of the queries; boxes: [Q, 4] predicted cxcywh;
 *   cost: [Q, t->n] out. */
void matcher_cost(const double *probs, const float *boxes, int Q, int C1, const ImageTargets *t,
                  const LossWeights *w, double *cost);

/* Matches one image: query_to_target [Q] out, the target index given to each query or -1.
 * probs and boxes as for matcher_cost. Returns the number of pairs (min(Q, n)), or -1 when the
 * cost is not finite (NaN/Inf input) or scratch memory could not be had. */
int matcher_match_image(const double *probs, const float *boxes, int Q, int C1,
                        const ImageTargets *t, const LossWeights *w, int *query_to_target);

#endif
