#!/usr/bin/python3
"""Writes DETR set-loss cases computed with PyTorch, for tests/unit/test_criterion.c.

Usage: /usr/bin/python3 tests/ref/gen_criterion_cases.py OUT_FILE   (the test reads $DETR_FIXTURES/criterion_cases.json)

The matcher and the loss below follow the reference DETR (models/matcher.py, models/detr.py SetCriterion,
util/box_ops.py) operation by operation, in float32 on the CPU, with scipy's linear_sum_assignment; the
gradients come from autograd. Each case stores the inputs, the matching, the loss dict and
d(ce_coef*loss_ce + bbox_coef*loss_bbox + giou_coef*loss_giou)/d(logits, boxes).
"""
import json
import os
import sys

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment


# ---- util/box_ops.py ----
def box_cxcywh_to_xyxy(x):
    x_c, y_c, w, h = x.unbind(-1)
    return torch.stack([x_c - 0.5 * w, y_c - 0.5 * h, x_c + 0.5 * w, y_c + 0.5 * h], dim=-1)


def box_area(boxes):
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(boxes1, boxes2):
    area1, area2 = box_area(boxes1), box_area(boxes2)
    lt = torch.max(boxes1[:, None, :2], boxes2[:, :2])
    rb = torch.min(boxes1[:, None, 2:], boxes2[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, :, 0] * wh[:, :, 1]
    union = area1[:, None] + area2 - inter
    return inter / union, union


def generalized_box_iou(boxes1, boxes2):
    assert (boxes1[:, 2:] >= boxes1[:, :2]).all()
    assert (boxes2[:, 2:] >= boxes2[:, :2]).all()
    iou, union = box_iou(boxes1, boxes2)
    lt = torch.min(boxes1[:, None, :2], boxes2[:, :2])
    rb = torch.max(boxes1[:, None, 2:], boxes2[:, 2:])
    wh = (rb - lt).clamp(min=0)
    area = wh[:, :, 0] * wh[:, :, 1]
    return iou - (area - union) / area


# ---- models/matcher.py ----
@torch.no_grad()
def hungarian_match(logits, boxes, targets, w):
    bs, num_queries = logits.shape[:2]
    out_prob = logits.flatten(0, 1).softmax(-1)
    out_bbox = boxes.flatten(0, 1)
    sizes = [len(t["labels"]) for t in targets]
    tgt_ids = torch.cat([t["labels"] for t in targets])
    tgt_bbox = torch.cat([t["boxes"] for t in targets])
    cost_class = -out_prob[:, tgt_ids]
    cost_bbox = torch.cdist(out_bbox, tgt_bbox, p=1)
    cost_giou = -generalized_box_iou(box_cxcywh_to_xyxy(out_bbox), box_cxcywh_to_xyxy(tgt_bbox))
    C = w["cost_bbox"] * cost_bbox + w["cost_class"] * cost_class + w["cost_giou"] * cost_giou
    C = C.view(bs, num_queries, -1)
    indices = [linear_sum_assignment(c[i]) for i, c in enumerate(C.split(sizes, -1))]
    return [(torch.as_tensor(i, dtype=torch.int64), torch.as_tensor(j, dtype=torch.int64)) for i, j in indices]


# ---- models/detr.py SetCriterion, util/misc.py accuracy ----
def accuracy(output, target):
    if target.numel() == 0:
        return torch.zeros([])
    pred = output.topk(1, 1, True, True)[1].t()
    return pred.eq(target.view(1, -1).expand_as(pred)).view(-1).float().sum(0) * (100.0 / target.size(0))


def set_criterion(logits, boxes, targets, indices, num_boxes, w):
    C1 = logits.shape[-1]
    empty_weight = torch.ones(C1)
    empty_weight[-1] = w["eos_coef"]
    batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
    src_idx = torch.cat([src for (src, _) in indices])
    idx = (batch_idx, src_idx)

    target_classes_o = torch.cat([t["labels"][J] for t, (_, J) in zip(targets, indices)])
    target_classes = torch.full(logits.shape[:2], C1 - 1, dtype=torch.int64)
    target_classes[idx] = target_classes_o
    loss_ce = F.cross_entropy(logits.transpose(1, 2), target_classes, empty_weight)
    class_error = 100 - accuracy(logits[idx].detach(), target_classes_o)

    tgt_lengths = torch.as_tensor([len(t["labels"]) for t in targets])
    card_pred = (logits.detach().argmax(-1) != C1 - 1).sum(1)
    card_err = F.l1_loss(card_pred.float(), tgt_lengths.float())

    src_boxes = boxes[idx]
    target_boxes = torch.cat([t["boxes"][i] for t, (_, i) in zip(targets, indices)], dim=0)
    loss_bbox = F.l1_loss(src_boxes, target_boxes, reduction="none").sum() / num_boxes
    loss_giou = (1 - torch.diag(generalized_box_iou(box_cxcywh_to_xyxy(src_boxes),
                                                   box_cxcywh_to_xyxy(target_boxes)))).sum() / num_boxes
    return loss_ce, loss_bbox, loss_giou, class_error, card_err


# ---- cases ----
DEFAULT_W = dict(cost_class=1.0, cost_bbox=5.0, cost_giou=2.0, ce_coef=1.0, bbox_coef=5.0, giou_coef=2.0,
                 eos_coef=0.1)


def random_targets(gen, n, num_classes):
    labels = torch.randint(0, num_classes, (n,), generator=gen)
    cxcy = torch.rand(n, 2, generator=gen) * 0.6 + 0.2
    wh = torch.rand(n, 2, generator=gen) * 0.35 + 0.05
    return {"labels": labels, "boxes": torch.cat([cxcy, wh], 1)}


def random_case(name, gen, B, Q, C1, sizes, w=DEFAULT_W):
    logits = torch.randn(B, Q, C1, generator=gen) * 2
    boxes = torch.sigmoid(torch.randn(B, Q, 4, generator=gen))
    targets = [random_targets(gen, n, C1 - 1) for n in sizes]
    return name, logits, boxes, targets, w


def degenerate_case():
    """Exactly coinciding and touching boxes (dyadic values, exact in float32 and double): exercises the
    max/min tie rule and clamp at 0 in the GIoU backward, and a target with zero width."""
    logits = torch.tensor([[[4.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 4.0], [1.0, 1.0, 0.0]]])
    boxes = torch.tensor([[[0.5, 0.5, 0.25, 0.25],      # identical to target 0
                           [0.25, 0.25, 0.25, 0.25],    # touches target 1 along x (x1 = 0.375)
                           [0.75, 0.75, 0.125, 0.125],
                           [0.625, 0.125, 0.25, 0.125]]])  # same x as target 2, which has w = 0
    targets = [{"labels": torch.tensor([0, 1, 0]),
                "boxes": torch.tensor([[0.5, 0.5, 0.25, 0.25], [0.5, 0.25, 0.25, 0.25],
                                       [0.625, 0.125, 0.0, 0.125]])}]
    return "degenerate boxes (identical, touching, zero width)", logits, boxes, targets, DEFAULT_W


def make_cases():
    gen = torch.Generator().manual_seed(1234)
    custom_w = dict(cost_class=2.0, cost_bbox=3.0, cost_giou=1.0, ce_coef=0.5, bbox_coef=4.0, giou_coef=1.5,
                    eos_coef=0.2)
    return [
        random_case("small: 2 images, one without targets", gen, 2, 6, 4, [3, 0]),
        random_case("fewer queries than targets", gen, 1, 3, 5, [5]),
        random_case("DETR size: 100 queries, 92 classes", gen, 2, 100, 92, [7, 20]),
        random_case("no targets in the batch", gen, 2, 5, 3, [0, 0]),
        random_case("custom weights", gen, 3, 8, 6, [2, 5, 1], custom_w),
        random_case("batch of 4, 20 queries", gen, 4, 20, 11, [4, 9, 0, 13]),
        degenerate_case(),
    ]


def run_case(name, logits, boxes, targets, w):
    logits = logits.clone().requires_grad_(True)
    boxes = boxes.clone().requires_grad_(True)
    indices = hungarian_match(logits, boxes, targets, w)
    num_boxes = max(float(sum(len(t["labels"]) for t in targets)), 1.0)
    ce, l1, giou, class_error, card = set_criterion(logits, boxes, targets, indices, num_boxes, w)
    total = w["ce_coef"] * ce + w["bbox_coef"] * l1 + w["giou_coef"] * giou
    total.backward()
    B, Q, C1 = logits.shape
    matching = []
    for (src, tgt) in indices:
        q2t = [-1] * Q
        for s, t in zip(src.tolist(), tgt.tolist()):
            q2t[s] = t
        matching.append(q2t)
    return {
        "name": name, "B": B, "Q": Q, "C1": C1, "weights": w, "num_boxes": num_boxes,
        "logits": logits.detach().flatten().tolist(), "boxes": boxes.detach().flatten().tolist(),
        "targets": [{"labels": t["labels"].tolist(), "boxes": t["boxes"].flatten().tolist()} for t in targets],
        "matching": matching,
        "loss_ce": ce.item(), "loss_bbox": float(l1), "loss_giou": float(giou),
        "class_error": float(class_error), "cardinality_error": card.item(),
        "dlogits": logits.grad.flatten().tolist(), "dboxes": boxes.grad.flatten().tolist(),
    }


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: gen_criterion_cases.py OUT_FILE")
    torch.set_num_threads(1)
    cases = [run_case(*c) for c in make_cases()]
    os.makedirs(os.path.dirname(os.path.abspath(sys.argv[1])), exist_ok=True)
    with open(sys.argv[1], "w") as f:
        json.dump({"torch": torch.__version__, "cases": cases}, f)
    print(f"wrote {len(cases)} criterion cases to {sys.argv[1]}")


if __name__ == "__main__":
    main()
