#!/usr/bin/python3
"""Writes PostProcess cases computed with PyTorch, for tests/unit/test_postprocess.c.

Usage: /usr/bin/python3 tests/ref/gen_postprocess_cases.py OUT_FILE
(the test reads $DETR_FIXTURES/postprocess_cases.json)

The computation is the reference DETR's, in float32 on the CPU: models/detr.py PostProcess
(softmax over all logits, max over the real classes, cxcywh -> xyxy scaled by the original
(w, h, w, h), with the int64 orig_size tensor as the reference's engine.evaluate passes it) and
datasets/coco_eval.py convert_to_xywh. Every float is written as the exact double value of the
float32, so the test can compare bit for bit.
"""
import json
import sys

import torch
import torch.nn.functional as F


def box_cxcywh_to_xyxy(x):
    x_c, y_c, w, h = x.unbind(-1)
    return torch.stack([(x_c - 0.5 * w), (y_c - 0.5 * h), (x_c + 0.5 * w), (y_c + 0.5 * h)], dim=-1)


def postprocess(out_logits, out_bbox, target_sizes):
    """models/detr.py PostProcess.forward."""
    prob = F.softmax(out_logits, -1)
    scores, labels = prob[..., :-1].max(-1)
    boxes = box_cxcywh_to_xyxy(out_bbox)
    img_h, img_w = target_sizes.unbind(1)
    scale_fct = torch.stack([img_w, img_h, img_w, img_h], dim=1)
    boxes = boxes * scale_fct[:, None, :]
    return scores, labels, boxes


def convert_to_xywh(boxes):
    """datasets/coco_eval.py."""
    xmin, ymin, xmax, ymax = boxes.unbind(1)
    return torch.stack((xmin, ymin, xmax - xmin, ymax - ymin), dim=1)


def make_case(name, logits, boxes, sizes_hw):
    scores, labels, xyxy = postprocess(logits, boxes, torch.tensor(sizes_hw, dtype=torch.int64))
    images = []
    for b in range(logits.shape[0]):
        prob = F.softmax(logits[b], -1)[:, :-1]
        # queries whose best real class is tied in float32 probability (the C code breaks ties on
        # the logits, which can differ there); the test skips their label comparison
        top2 = prob.topk(2, dim=-1).values if prob.shape[1] > 1 else None
        ties = [] if top2 is None else [int(q) for q in range(prob.shape[0]) if top2[q, 0] == top2[q, 1]]
        # the same probabilities in float64 from the same float32 logits, rounded once: PyTorch's
        # float32 softmax is off by up to ~1e-5 relative where logits are large (x - max is
        # rounded to float32 before exp), the C code computes in double
        p64 = F.softmax(logits[b].double(), -1).gather(-1, labels[b].unsqueeze(-1)).squeeze(-1).float()
        images.append({
            "orig_h": sizes_hw[b][0], "orig_w": sizes_hw[b][1],
            "logits": [float(v) for v in logits[b].flatten()],
            "boxes": [float(v) for v in boxes[b].flatten()],
            "labels": [int(v) for v in labels[b]],
            "scores": [float(v) for v in scores[b]],
            "scores_f64": [float(v) for v in p64],
            "boxes_xywh": [float(v) for v in convert_to_xywh(xyxy[b]).flatten()],
            "prob_ties": ties,
        })
    return {"name": name, "Q": logits.shape[1], "C1": logits.shape[2], "images": images}


def main():
    out = sys.argv[1]
    g = torch.Generator().manual_seed(20240611)
    cases = []
    # COCO-sized head: 100 queries, 91 classes + no-object, typical logit scales
    logits = torch.randn(2, 100, 92, generator=g) * 3
    boxes = torch.rand(2, 100, 4, generator=g) * torch.tensor([1.0, 1.0, 0.6, 0.6])
    cases.append(make_case("coco_like", logits, boxes, [[480, 640], [800, 1333]]))
    # confident model: the no-object class dominates many queries; large logits
    logits = torch.randn(1, 50, 6, generator=g) * 12
    logits[0, :25, -1] += 40
    cases.append(make_case("confident", logits, torch.rand(1, 50, 4, generator=g), [[9, 17]]))
    # the no-object logit so far above the rest that every real-class probability underflows to
    # 0 in float32 (PyTorch then reports class 0: a tie in probability; see prob_ties)
    logits = torch.randn(1, 8, 4, generator=g)
    logits[0, :, -1] += 120
    cases.append(make_case("underflow", logits, torch.rand(1, 8, 4, generator=g), [[100, 200]]))
    # one real class; boxes partly outside the image (not clipped by the reference)
    logits = torch.randn(1, 10, 2, generator=g)
    boxes = torch.rand(1, 10, 4, generator=g) * 1.5 - 0.25
    cases.append(make_case("one_class", logits, boxes, [[64, 64]]))
    with open(out, "w") as f:
        json.dump({"cases": cases}, f)


if __name__ == "__main__":
    main()
