/* box_ops.h - DETR's box utilities (reference util/box_ops.py) and their backward, on the host.
 *
 * A box is 4 numbers, normalised to the image:
 *   cxcywh = (cx, cy, w, h)        the model's output and the targets' format
 *   xyxy   = (x0, y0, x1, y1)      the format IoU / GIoU are computed in
 * Scalar functions work in double precision; the array functions read the model's float buffers.
 *
 * Formulas are the reference's, without any epsilon:
 *   inter   = max(0, min(ax1,bx1) - max(ax0,bx0)) * max(0, min(ay1,by1) - max(ay0,by0))
 *   union   = area(a) + area(b) - inter,            IoU  = inter / union
 *   enclose = max(0, max(ax1,bx1) - min(ax0,bx0)) * max(0, max(ay1,by1) - min(ay0,by0))
 *   GIoU    = IoU - (enclose - union) / enclose
 * Where the reference divides by zero (it returns NaN), we define instead, and never return NaN:
 *   union   <= 0 (both boxes have zero area):                IoU = 0
 *   enclose <= 0 (both boxes on one vertical/horizontal line): the penalty (enclose-union)/enclose = 0
 * so two identical zero-area boxes have GIoU 0, and two distinct point boxes have GIoU -1. The
 * gradient of a term replaced by a constant is 0.
 * Inputs are expected to be valid boxes (x1 >= x0, y1 >= y0, i.e. w, h >= 0); the reference asserts
 * that, and criterion_layer() rejects other boxes with a message before calling these.
 *
 * Backward conventions (as PyTorch autograd does it, so gradients match the reference):
 *   - max(0, t) passes the gradient where t >= 0 (touching boxes still get a gradient);
 *   - elementwise max/min of two equal values gives half the gradient to each;
 *   - |t| has gradient sign(t), with sign(0) = 0.
 * Backward functions ACCUMULATE (+=) into their outputs; a NULL output is skipped. */
#ifndef DETR_BOX_OPS_H
#define DETR_BOX_OPS_H

/* ---- format conversion ---- */
void box_cxcywh_to_xyxy(const double c[4], double x[4]);
void box_xyxy_to_cxcywh(const double x[4], double c[4]);
/* dc += d(xyxy)/d(cxcywh)^T dx. */
void box_cxcywh_to_xyxy_backward(const double dx[4], double dc[4]);

/* Array versions: in [n, 4] -> out [n, 4] (out may equal in). */
void boxes_cxcywh_to_xyxy(const float *in, float *out, int n);
void boxes_xyxy_to_cxcywh(const float *in, float *out, int n);

/* ---- IoU / GIoU of two xyxy boxes ---- */
double box_iou(const double a[4], const double b[4]);
double box_giou(const double a[4], const double b[4]);
/* da += dgiou * dGIoU/da, db += dgiou * dGIoU/db (xyxy). */
void box_giou_backward(const double a[4], const double b[4], double dgiou, double da[4], double db[4]);

/* Pairwise matrices, the reference's box_iou / generalized_box_iou:
 *   a [na, 4] xyxy, b [nb, 4] xyxy -> out [na, nb] (out[i*nb + j] compares a[i] with b[j]). */
void box_iou_matrix(const float *a, int na, const float *b, int nb, double *out);
void box_giou_matrix(const float *a, int na, const float *b, int nb, double *out);

/* ---- the two box losses on cxcywh boxes (used by the matcher and the criterion) ---- */
/* GIoU of two cxcywh boxes, computed on their xyxy corners. */
double box_giou_cxcywh(const float a[4], const float b[4]);
/* da, db (cxcywh) += dgiou * dGIoU/d(a, b). */
void box_giou_cxcywh_backward(const float a[4], const float b[4], double dgiou, double da[4],
                              double db[4]);
/* L1 distance sum_k |a_k - b_k| (the reference's torch.cdist(p=1) / F.l1_loss summed). */
double box_l1(const float a[4], const float b[4]);
/* da += dl1 * sign(a - b), sign(0) = 0. */
void box_l1_backward(const float a[4], const float b[4], double dl1, double da[4]);

#endif
