/* golden.h - the golden input/output files used to check numerics against PyTorch:
 *   inputs:  images F32 [B,3,H,W] (normalised, padded), mask U8 [B,H,W] (1 = padding)
 *   outputs: pred_logits [B,Q,C+1], pred_boxes [B,Q,4], aux_pred_logits [L-1,B,Q,C+1],
 *            aux_pred_boxes [L-1,B,Q,4]; loss terms as scalars under the reference's names. */
#ifndef DETR_GOLDEN_H
#define DETR_GOLDEN_H
#include <stddef.h>
#include <stdint.h>
#include "detr.h"
#include "safetensors.h"

typedef struct {
    int B, H, W;
    float *images;   /* [B, 3, H, W] */
    uint8_t *mask;   /* [B, H, W] */
} GoldenInputs;

/* Reads and validates an inputs file. Returns 0 or -1 with err naming the tensor and fix. */
int golden_load_inputs(const char *path, GoldenInputs *in, char *err, size_t errlen);
void golden_free_inputs(GoldenInputs *in);
/* Adds the last forward's predictions (borrowed from m: save before the next forward). */
void golden_add_predictions(StWriter *w, const Detr *m);
/* Adds every loss term (loss_ce, loss_bbox, loss_giou, loss_ce_0, ...), the weighted total
 * "loss", and class_error / cardinality_error of the last layer. */
void golden_add_losses(StWriter *w, const DetrLosses *l);

#endif
