#!/usr/bin/python3
"""check_reference.py - self-checks of the PyTorch reference in tests/ref (for our confidence in the
fixtures; not part of the C test suite).

    OMP_NUM_THREADS=2 /usr/bin/python3 tests/ref/check_reference.py

Prints "ok NAME" / "FAIL NAME: why" per check and a closing "RESULT passed=N failed=N skipped=0" line
(the same format as the C tests). Checks:
  (a) HungarianMatcher vs brute force (random cost matrices, and the matcher's own cost built pair by pair)
  (b) GIoU / IoU / box conversions on hand-computed values
  (c) torch.autograd.gradcheck of the full SetCriterion (with aux outputs) in float64
  plus: weighted CE normalisation, sine position encoding vs the spec formula, mask downsample index rule,
  AdamW / clip formulas vs torch, state-dict names and parameter counts vs the R50 key list, DC5 stride,
  safetensors round trip.
"""
import itertools
import math
import os
import sys
import tempfile

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import detr_ref as R  # noqa: E402
from st_io import read_safetensors, write_safetensors  # noqa: E402

PASS = [0, 0]
KEYS_FILE = "/work/shared/docs/reference/detr-r50-keys.txt"


def check(name, ok, why=""):
    PASS[0 if ok else 1] += 1
    print(f"ok   {name}" if ok else f"FAIL {name}: {why}", flush=True)


def brute_force_assignment(c):
    """Minimum total cost over all injective maps targets -> predictions; c [Q, n], n <= Q."""
    q, n = c.shape
    best, best_perm = math.inf, None
    for perm in itertools.permutations(range(q), n):
        s = sum(c[perm[j], j] for j in range(n))
        if s < best:
            best, best_perm = s, perm
    return best, best_perm


# ----------------------------------------------------------------------------------------------
# (a) matcher

def check_matcher_random_matrices():
    rng = np.random.default_rng(0)
    worst = 0.0
    for trial in range(200):
        q = int(rng.integers(1, 7))
        n = int(rng.integers(0, q + 1))
        c = rng.normal(size=(q, n))
        if trial % 5 == 0:
            c = np.round(c, 1)   # ties
        r, k = R.linear_sum_assignment(c)
        got = c[r, k].sum() if n else 0.0
        want, _ = brute_force_assignment(c) if n else (0.0, ())
        worst = max(worst, abs(got - want))
        if len(r) != n or len(set(r)) != n or sorted(k) != list(range(n)):
            check("matcher: assignment is a full matching of targets", False, f"Q={q} n={n} r={r} k={k}")
            return
    check("matcher: LSA optimal == brute force on 200 random [Q<=6, n<=Q] matrices", worst < 1e-12,
          f"worst cost gap {worst}")


def pairwise_cost_by_hand(logits, boxes, labels, tboxes, wc=1.0, wb=5.0, wg=2.0):
    """Matcher cost for one image computed pair by pair with plain Python floats."""
    q, n = logits.shape[0], len(labels)
    prob = torch.softmax(logits.double(), -1)
    c = np.zeros((q, n))
    for i in range(q):
        for j in range(n):
            l1 = sum(abs(float(boxes[i, d]) - float(tboxes[j, d])) for d in range(4))
            c[i, j] = wb * l1 - wc * float(prob[i, labels[j]]) - wg * giou_by_hand(boxes[i].tolist(),
                                                                                     tboxes[j].tolist())
    return c


def giou_by_hand(a, b):
    """GIoU of two cxcywh boxes (Python floats)."""
    ax0, ay0, ax1, ay1 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx0, by0, bx1, by1 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    iw = max(min(ax1, bx1) - max(ax0, bx0), 0.0)
    ih = max(min(ay1, by1) - max(ay0, by0), 0.0)
    inter = iw * ih
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    cw = max(ax1, bx1) - min(ax0, bx0)
    ch = max(ay1, by1) - min(ay0, by0)
    area_c = cw * ch
    return inter / union - (area_c - union) / area_c


def check_matcher_module():
    g = torch.Generator().manual_seed(1)
    b, q, ncls = 3, 6, 4
    matcher = R.HungarianMatcher()
    worst_cost, ok_opt = 0.0, True
    for trial in range(20):
        logits = torch.randn(b, q, ncls + 1, generator=g, dtype=torch.float64)
        boxes = torch.sigmoid(torch.randn(b, q, 4, generator=g, dtype=torch.float64)) * 0.5 + 0.1
        sizes = [int(x) for x in torch.randint(0, 5, (b,), generator=g)]
        sizes[trial % b] = 0 if trial % 4 == 0 else sizes[trial % b]
        targets = [{"labels": torch.randint(0, ncls, (n,), generator=g),
                    "boxes": torch.rand(n, 4, generator=g, dtype=torch.float64) * 0.4 + 0.1} for n in sizes]
        out = {"pred_logits": logits, "pred_boxes": boxes}
        costs = matcher.cost_matrices(out, targets)
        indices = matcher(out, targets)
        for i in range(b):
            want = pairwise_cost_by_hand(logits[i], boxes[i], targets[i]["labels"].tolist(), targets[i]["boxes"])
            worst_cost = max(worst_cost, float(np.abs(costs[i].numpy() - want).max()) if sizes[i] else 0.0)
            src, tgt = indices[i]
            got = want[src.numpy(), tgt.numpy()].sum() if sizes[i] else 0.0
            best, _ = brute_force_assignment(want) if sizes[i] else (0.0, ())
            if len(src) != sizes[i] or abs(got - best) > 1e-9:
                ok_opt = False
    check("matcher: cost matrix == 5*L1 - p_class - 2*GIoU computed pair by pair", worst_cost < 1e-12,
          f"max diff {worst_cost}")
    check("matcher: HungarianMatcher picks the brute-force optimum (incl. images with 0 targets)", ok_opt,
          "a matching was not optimal or not complete")


# ----------------------------------------------------------------------------------------------
# (b) box ops

def check_giou_known_values():
    xyxy = lambda *v: torch.tensor([v], dtype=torch.float64)  # noqa: E731
    cases = [
        ("identical", xyxy(0, 0, 1, 1), xyxy(0, 0, 1, 1), 1.0, 1.0),
        ("disjoint side by side", xyxy(0, 0, 1, 1), xyxy(2, 0, 3, 1), 0.0, -1.0 / 3.0),
        ("partial overlap", xyxy(0, 0, 2, 2), xyxy(1, 1, 3, 3), 1.0 / 7.0, 1.0 / 7.0 - 2.0 / 9.0),
        ("contained", xyxy(0, 0, 4, 4), xyxy(1, 1, 2, 2), 1.0 / 16.0, 1.0 / 16.0),
        ("touching edges", xyxy(0, 0, 1, 1), xyxy(1, 0, 2, 1), 0.0, 0.0),
        ("diagonal far apart", xyxy(0, 0, 1, 1), xyxy(3, 3, 4, 4), 0.0, 0.0 - (16.0 - 2.0) / 16.0),
    ]
    for name, a, b, iou_want, giou_want in cases:
        iou, _ = R.box_iou(a, b)
        giou = R.generalized_box_iou(a, b)
        check(f"giou: {name} (IoU {iou_want:.4f}, GIoU {giou_want:.4f})",
              abs(float(iou) - iou_want) < 1e-12 and abs(float(giou) - giou_want) < 1e-12,
              f"got IoU {float(iou)}, GIoU {float(giou)}")
    c = torch.tensor([[0.5, 0.4, 0.2, 0.6]], dtype=torch.float64)
    x = R.box_cxcywh_to_xyxy(c)
    check("box: cxcywh -> xyxy -> cxcywh", torch.allclose(x, torch.tensor([[0.4, 0.1, 0.6, 0.7]],
                                                                           dtype=torch.float64))
          and torch.allclose(R.box_xyxy_to_cxcywh(x), c), f"got {x.tolist()}")
    try:
        R.generalized_box_iou(xyxy(1, 0, 0, 1), xyxy(0, 0, 1, 1))
        check("giou: asserts on x1 < x0 like the reference", False, "no assertion raised")
    except AssertionError:
        check("giou: asserts on x1 < x0 like the reference", True)


# ----------------------------------------------------------------------------------------------
# (c) criterion gradients

def make_criterion(ncls, dec_layers):
    return R.SetCriterion(ncls, R.HungarianMatcher(), R.build_weight_dict(dec_layers), 0.1).double()


def check_criterion_gradcheck():
    g = torch.Generator().manual_seed(3)
    b, q, ncls, layers = 2, 5, 3, 2
    targets = [{"labels": torch.tensor([0, 2]),
                "boxes": torch.tensor([[0.3, 0.4, 0.2, 0.3], [0.6, 0.6, 0.3, 0.2]], dtype=torch.float64)},
               {"labels": torch.tensor([1, 1, 2]),
                "boxes": torch.tensor([[0.5, 0.3, 0.4, 0.3], [0.4, 0.6, 0.2, 0.5], [0.7, 0.7, 0.1, 0.1]],
                                      dtype=torch.float64)}]
    crit = make_criterion(ncls, layers)
    logits = torch.randn(layers, b, q, ncls + 1, generator=g, dtype=torch.float64, requires_grad=True)
    raw = torch.randn(layers, b, q, 4, generator=g, dtype=torch.float64, requires_grad=True)

    def total(lg, rw):
        bx = rw.sigmoid() * 0.6 + 0.1
        out = {"pred_logits": lg[-1], "pred_boxes": bx[-1],
               "aux_outputs": [{"pred_logits": lg[i], "pred_boxes": bx[i]} for i in range(layers - 1)]}
        return R.weighted_total(crit(out, targets), crit.weight_dict)

    ok = torch.autograd.gradcheck(total, (logits, raw), eps=1e-6, atol=1e-7, rtol=1e-6, raise_exception=False)
    check("criterion: gradcheck of the weighted total (CE + L1 + GIoU, final + aux) in float64", ok,
          "analytic and numeric gradients differ")
    # same with one image without targets and an all-empty batch (CE only)
    targets_e = [targets[0], {"labels": torch.zeros(0, dtype=torch.int64),
                              "boxes": torch.zeros(0, 4, dtype=torch.float64)}]
    targets_0 = [targets_e[1], targets_e[1]]
    for name, tg in (("one image without targets", targets_e), ("no targets at all", targets_0)):
        def total_t(lg, rw, tg=tg):
            bx = rw.sigmoid() * 0.6 + 0.1
            out = {"pred_logits": lg[-1], "pred_boxes": bx[-1],
                   "aux_outputs": [{"pred_logits": lg[i], "pred_boxes": bx[i]} for i in range(layers - 1)]}
            return R.weighted_total(crit(out, tg), crit.weight_dict)
        ok = torch.autograd.gradcheck(total_t, (logits, raw), eps=1e-6, atol=1e-7, rtol=1e-6,
                                      raise_exception=False)
        check(f"criterion: gradcheck with {name}", ok, "analytic and numeric gradients differ")
    # loss dict names and logged values for the empty batch
    with torch.no_grad():
        bx = raw.sigmoid() * 0.6 + 0.1
        out = {"pred_logits": logits[-1], "pred_boxes": bx[-1],
               "aux_outputs": [{"pred_logits": logits[0], "pred_boxes": bx[0]}]}
        ld = crit(out, targets_0)
    want = {"loss_ce", "loss_bbox", "loss_giou", "class_error", "cardinality_error",
            "loss_ce_0", "loss_bbox_0", "loss_giou_0", "cardinality_error_0"}
    check("criterion: loss-dict names", set(ld) == want, f"got {sorted(ld)}")
    check("criterion: empty batch -> box losses 0, class_error 100 (util/misc.py accuracy returns 0)",
          float(ld["loss_bbox"]) == 0 and float(ld["loss_giou"]) == 0 and float(ld["class_error"]) == 100,
          f"got {({k: float(v) for k, v in ld.items()})}")


def check_weighted_ce():
    g = torch.Generator().manual_seed(4)
    b, q, ncls = 2, 5, 3
    logits = torch.randn(b, q, ncls + 1, generator=g, dtype=torch.float64)
    boxes = torch.rand(b, q, 4, generator=g, dtype=torch.float64) * 0.3 + 0.2
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.4, 0.4, 0.2, 0.2]], dtype=torch.float64)},
               {"labels": torch.tensor([0, 2]),
                "boxes": torch.tensor([[0.5, 0.5, 0.3, 0.3], [0.3, 0.6, 0.2, 0.1]], dtype=torch.float64)}]
    crit = make_criterion(ncls, 1)
    ld = crit({"pred_logits": logits, "pred_boxes": boxes}, targets)
    ind = crit.last_indices[0]
    tc = torch.full((b, q), ncls)
    for i, (s, t) in enumerate(ind):
        tc[i, s] = targets[i]["labels"][t]
    logp = torch.log_softmax(logits, -1)
    num = den = 0.0
    eos = float(np.float32(0.1))  # empty_weight is a float32 buffer in the reference (0.1f, also in .double())
    for i in range(b):
        for j in range(q):
            w = eos if int(tc[i, j]) == ncls else 1.0
            num += -w * float(logp[i, j, tc[i, j]])
            den += w
    m = 3
    check("criterion: loss_ce == sum w*(-log p) / sum w, denominator M + 0.1*(B*Q - M)",
          abs(float(ld["loss_ce"]) - num / den) < 1e-12 and abs(den - (m + eos * (b * q - m))) < 1e-12,
          f"got {float(ld['loss_ce'])}, want {num / den}")
    # L1 / GIoU normalised by num_boxes
    l1 = gi = 0.0
    for i, (s, t) in enumerate(ind):
        for a, c in zip(s.tolist(), t.tolist()):
            l1 += float((boxes[i, a] - targets[i]["boxes"][c]).abs().sum())
            gi += 1 - giou_by_hand(boxes[i, a].tolist(), targets[i]["boxes"][c].tolist())
    check("criterion: loss_bbox, loss_giou == sums over matched pairs / num_boxes",
          abs(float(ld["loss_bbox"]) - l1 / 3) < 1e-12 and abs(float(ld["loss_giou"]) - gi / 3) < 1e-12,
          f"got {float(ld['loss_bbox'])}, {float(ld['loss_giou'])}; want {l1 / 3}, {gi / 3}")
    card = sum(abs(int((logits[i].argmax(-1) != ncls).sum()) - len(targets[i]["labels"])) for i in range(b)) / b
    check("criterion: cardinality_error == mean |#(argmax != no-object) - #targets|",
          abs(float(ld["cardinality_error"]) - card) < 1e-12, f"got {float(ld['cardinality_error'])}, want {card}")


# ----------------------------------------------------------------------------------------------
# model pieces

def check_position_encoding():
    mask = torch.zeros(1, 3, 4, dtype=torch.bool)
    mask[0, 2, :] = True      # bottom padding row
    mask[0, :, 3] = True      # right padding column
    npf = 8
    pos = R.PositionEmbeddingSine(npf)(mask, torch.float64)[0]   # [2*npf, h, w]
    worst = 0.0
    for i in range(3):
        for j in range(4):
            valid = ~mask[0]
            ye = float(valid[: i + 1, j].sum())
            xe = float(valid[i, : j + 1].sum())
            ye = ye / (float(valid[:, j].sum()) + 1e-6) * 2 * math.pi
            xe = xe / (float(valid[i, :].sum()) + 1e-6) * 2 * math.pi
            for k in range(npf):
                dim_t = 10000 ** (2 * (k // 2) / npf)
                fy = math.sin(ye / dim_t) if k % 2 == 0 else math.cos(ye / dim_t)
                fx = math.sin(xe / dim_t) if k % 2 == 0 else math.cos(xe / dim_t)
                worst = max(worst, abs(float(pos[k, i, j]) - fy), abs(float(pos[npf + k, i, j]) - fx))
    check("pos: sine encoding == spec 1.4 formula at every cell (incl. padding cells)", worst < 1e-12,
          f"max diff {worst}")
    # spec: right-padding columns get y = 0 (pos_y channel 1 = cos(0) = 1), bottom rows x = 0
    check("pos: padding-column / padding-row degenerate values as in spec 1.4",
          abs(float(pos[1, 0, 3]) - 1.0) < 1e-12 and abs(float(pos[npf + 1, 2, 0]) - 1.0) < 1e-12,
          f"got {float(pos[1, 0, 3])}, {float(pos[npf + 1, 2, 0])}")


def check_mask_downsample_rule():
    rng = np.random.default_rng(5)
    ok = True
    for _ in range(50):
        hh, ww = int(rng.integers(5, 200)), int(rng.integers(5, 200))
        h, w = int(rng.integers(1, hh + 1)), int(rng.integers(1, ww + 1))
        m = torch.from_numpy(rng.random((1, hh, ww)) < 0.5)
        got = F.interpolate(m[None].float(), size=(h, w)).to(torch.bool)[0]
        sy = np.float32(hh) / np.float32(h)
        sx = np.float32(ww) / np.float32(w)
        iy = [min(int(math.floor(np.float32(i) * sy)), hh - 1) for i in range(h)]
        ix = [min(int(math.floor(np.float32(j) * sx)), ww - 1) for j in range(w)]
        want = m[0][iy][:, ix]
        ok = ok and bool((got[0] == want).all())
    check("mask: nearest downsample == src index min(floor(i * (float)H/h), H-1)", ok, "index rule differs")


def check_adamw_and_clip():
    torch.manual_seed(6)
    ps = [torch.randn(5, 3, dtype=torch.float64, requires_grad=True), torch.randn(7, dtype=torch.float64,
                                                                               requires_grad=True)]
    mine = [p.detach().clone() for p in ps]
    state = [(torch.zeros_like(p), torch.zeros_like(p)) for p in mine]
    worst = {True: 0.0, False: 0.0}
    for foreach in (True, False):
        tps = [p.detach().clone().requires_grad_(True) for p in ps]
        mine = [p.detach().clone() for p in ps]
        state = [(torch.zeros_like(p), torch.zeros_like(p)) for p in mine]
        opt = torch.optim.AdamW([{"params": [tps[0]]}, {"params": [tps[1]], "lr": 1e-3}], lr=1e-2,
                                weight_decay=1e-2, foreach=foreach)
        for step in range(1, 6):
            grads = [torch.randn_like(p) * 10 for p in mine]
            for tp, gr in zip(tps, grads):
                tp.grad = gr.clone()
            torch.nn.utils.clip_grad_norm_(tps, 0.1)
            gc = [gr.clone() for gr in grads]
            R.clip_grad_norm_reference(gc, 0.1)
            opt.step()
            for k, (p, gr, (m, v)) in enumerate(zip(mine, gc, state)):
                R.adamw_reference_step(p, gr, m, v, step, lr=1e-2 if k == 0 else 1e-3, weight_decay=1e-2)
            worst[foreach] = max(worst[foreach], max(float((a - b.detach()).abs().max()) for a, b in zip(mine, tps)))
    check("optim: adamw_reference_step + clip_grad_norm_reference == torch AdamW (foreach and single)",
          max(worst.values()) < 1e-14, f"max diff {worst}")


def check_state_dict_names():
    m = R.DETR(50)
    sd = m.state_dict()
    mine = {f"{k} {list(v.shape)}" for k, v in sd.items()}
    if os.path.exists(KEYS_FILE):
        ref = {line.strip() for line in open(KEYS_FILE) if line.strip()}
        check("model: R50 state-dict names and shapes == detr-r50-keys.txt (458 tensors)",
              mine == ref and len(sd) == 458, f"differences: {sorted(mine ^ ref)[:6]}")
    n_train = sum(p.numel() for p in m.parameters() if p.requires_grad)
    check("model: R50 trainable params == 41,302,368 (spec 1.8)", n_train == 41302368, f"got {n_train}")
    n_sd = sum(v.numel() for v in sd.values())
    check("model: R50 state-dict floats == 41,631,008 (spec 1.8)", n_sd == 41631008, f"got {n_sd}")
    frozen = sorted({n.split(".")[3] for n, p in m.named_parameters() if not p.requires_grad})
    check("model: frozen params are exactly stem conv1 and layer1", frozen == ["conv1", "layer1"], f"got {frozen}")


def check_dilation():
    body = R.ResNetBody(50, dilation=True)
    with torch.no_grad():
        f = body(torch.zeros(1, 3, 100, 130))
    l4 = body.layer4
    ok = (list(f.shape[-2:]) == [math.ceil(100 / 16), math.ceil(130 / 16)]
          and l4[0].conv2.stride == (1, 1) and l4[0].conv2.dilation == (1, 1)
          and l4[0].downsample[0].stride == (1, 1)
          and all(b.conv2.dilation == (2, 2) and b.conv2.padding == (2, 2) for b in l4[1:]))
    check("model: DC5 = layer4 stride 1; block 0 dilation 1, blocks 1.. dilation 2 (torchvision rule)", ok,
          f"feature {list(f.shape)}")


def check_train_eval_forward_equal():
    torch.manual_seed(7)
    m = R.DETR(18, hidden_dim=32, nheads=2, enc_layers=1, dec_layers=2, dim_feedforward=64, dropout=0.0,
               num_queries=5, num_classes=3).double()
    x = torch.randn(2, 3, 70, 90, dtype=torch.float64)
    mask = torch.zeros(2, 70, 90, dtype=torch.bool)
    mask[1, 40:, :] = True
    mask[1, :, 60:] = True
    x[1][:, mask[1]] = 0
    m.eval()
    with torch.no_grad():
        a = m(x, mask)
    m.train()
    b = m(x, mask)
    d = max(float((a[k] - b[k]).abs().max()) for k in ("pred_logits", "pred_boxes"))
    check("model: train-mode forward with dropout 0 == eval forward (fixtures use both)", d < 1e-12,
          f"max diff {d}")
    # decoder: each intermediate is decoder.norm(layer output); the un-normalised output feeds the next
    with torch.no_grad():
        it = m(x, mask, return_intermediates=True)["intermediates"]
        t = m.transformer
        pos = it["pos"].flatten(2).permute(2, 0, 1)
        qp = m.query_embed.weight.unsqueeze(1).repeat(1, 2, 1)
        out = torch.zeros_like(qp)
        want = []
        for layer in t.decoder.layers:
            out = layer(out, it["memory"], it["mask"].flatten(1), pos, qp)
            want.append(t.decoder.norm(out))
        want = torch.stack(want).transpose(1, 2)
    d = float((want - it["hs"]).abs().max())
    check("model: decoder intermediates = shared decoder.norm(layer output), un-normalised fed forward",
          d < 1e-12, f"max diff {d}")


def check_st_io():
    t = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array(3.5, dtype=np.float32),
         "m": np.array([[1, 0]], dtype=np.uint8), "i": np.array([1, -2], dtype=np.int64)}
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "x.safetensors")
        write_safetensors(p, t, {"k": "v"})
        back, meta = read_safetensors(p, with_metadata=True)
        raw = open(p, "rb").read()
    n = int.from_bytes(raw[:8], "little")
    ok = (meta == {"k": "v"} and set(back) == set(t) and all(np.array_equal(back[k], t[k]) for k in t)
          and all(back[k].dtype == t[k].dtype and back[k].shape == t[k].shape for k in t) and (8 + n) % 8 == 0)
    check("st_io: round trip (F32, scalar, U8, I64, metadata, 8-byte aligned header)", ok, "mismatch")


def main():
    torch.set_num_threads(1)
    check_matcher_random_matrices()
    check_matcher_module()
    check_giou_known_values()
    check_criterion_gradcheck()
    check_weighted_ce()
    check_position_encoding()
    check_mask_downsample_rule()
    check_adamw_and_clip()
    check_state_dict_names()
    check_dilation()
    check_train_eval_forward_equal()
    check_st_io()
    print(f"RESULT passed={PASS[0]} failed={PASS[1]} skipped=0")
    return 1 if PASS[1] else 0


if __name__ == "__main__":
    sys.exit(main())
