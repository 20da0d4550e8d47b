/* postprocess.h - the reference DETR PostProcess (models/detr.py) for COCO evaluation.
 *
 * For every query q (no threshold, no NMS: Q detections per image):
 *   prob  = softmax(logits[q, 0..C1-1])                 over all classes, no-object included
 *   label = argmax over the real classes 0..C1-2         (the last class, no-object, is dropped)
 *   score = prob[label]
 *   box   = cxcywh -> xyxy (x0 = cx - 0.5 w, ...), times (W, H, W, H) of the ORIGINAL image,
 *           then xyxy -> COCO xywh (x0, y0, x1 - x0, y1 - y0), as the reference CocoEvaluator.
 * The box arithmetic is float32 in the reference's operation order (bitwise equal to PyTorch on
 * the CPU). The softmax is computed in double and rounded once, so scores are within 1 ulp of
 * PyTorch's float32 softmax. Ties in the argmax go to the lowest class index, as torch.max.
 * The label is the model's class index; the reference uses it directly as the COCO category_id
 * (DETR's classes are the dataset's category ids, num_classes = max id + 1). */
#ifndef DETR_POSTPROCESS_H
#define DETR_POSTPROCESS_H

void detr_postprocess(const float *logits /* [Q, C1] */, const float *boxes /* [Q, 4] cxcywh in [0, 1] */,
                      int Q, int C1, int orig_w, int orig_h,
                      int *labels /* [Q] */, float *scores /* [Q] */,
                      float *boxes_xywh /* [Q, 4] pixels, COCO [x, y, w, h] */);

#endif
