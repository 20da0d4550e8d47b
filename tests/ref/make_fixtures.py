#!/usr/bin/python3
"""make_fixtures.py - writes the golden fixtures the C tests compare against.

    OMP_NUM_THREADS=2 /usr/bin/python3 tests/ref/make_fixtures.py --out DIR [--configs tiny,r50mini]
                                                                  [--no-f32-proxy] [--debug]

For each config, DIR/<config>/ gets (all tensors float32 unless noted):
    config.json                  settings, flat: model dims, batch_size, image_sizes, lr, lr_backbone,
                                 weight_decay, betas, eps, clip, eos_coef, set_cost_*, *_loss_coef, ...; the
                                 seed actually used (seed, seed_draws), the robustness margins
                                 (matching_min_margin, relu_min_margin, relu_margin_over_f32_error_min, ...;
                                 see "Robustness" below) and the float32-proxy error statistics "f32_proxy"
    weights.safetensors          every state-dict tensor (params and FrozenBN buffers), reference names;
                                 __metadata__: nheads, dilation, pre_norm, depth, ... (strings)
    inputs.safetensors           images [B,3,H,W] (zero on padding), mask U8 [B,H,W] (1 = padding)
    targets.json                 per image {"labels": [...], "boxes": [[cx,cy,w,h], ...]} (normalised)
    expected_infer.safetensors   pred_logits [B,Q,C+1], pred_boxes [B,Q,4], aux_pred_logits [L-1,B,Q,C+1],
                                 aux_pred_boxes [L-1,B,Q,4]
    expected_grads.safetensors   every loss-dict entry as a scalar (loss_ce, loss_bbox, loss_giou, loss_ce_0,
                                 ..., class_error, cardinality_error, cardinality_error_0, ...), `loss` (the
                                 weighted total), `grad_norm` (global L2 norm before clipping) and
                                 grad.<name> for every trainable parameter (before clipping)
    expected_matching.json       the Hungarian matchings of that forward: {"final": [{"pred": [...],
                                 "tgt": [...]} per image], "aux_0": [...], ...}
    expected_step1.safetensors,  param.<name> for every trainable parameter after 1 / 5 optimizer steps
    expected_step5.safetensors   (zero_grad, forward, loss, backward, clip, AdamW on the same batch);
                                 also loss_per_step [n] and grad_norm_per_step [n]
With --debug only (debugging extras, not read by the C tests):
    expected_infer.safetensors   also act.stem, act.layer1..4 [B,C,h,w], act.mask U8 [B,h,w], act.pos
                                 [B,D,h,w], act.src_proj [B,D,h,w], act.memory [S,B,D], act.hs [L,B,Q,D]
    expected_matcher.safetensors cost.<layer>.<b> [Q, n_b] matcher cost matrices (layer = final, aux_0, ...);
                                 images without targets have no entry (no zero-size tensors)
DIR/adamw/ (adamw.safetensors, config.json) is an optimizer-only fixture (clip + AdamW on given gradients
for a few tensors in two groups, with a large lr and weight decay so the decay term is visible, and the
StepLR schedule); see generate_adamw. DIR/manifest.json lists the configs and files.

Size: the default output is about 1.1 GB, almost all of it four model-sized files per config (weights,
gradients, parameters after 1 and after 5 steps): ResNet-50 alone has 23.5 M parameters (94 MB per file).
The debugging extras add about 3 MB per config.

Numerics: the weights are drawn in float32 and stored as float32; the reference then runs in float64 from
those exact values (model.double()), and the expected tensors are the float64 results rounded to float32.
Unless --no-f32-proxy is given, the same forward/backward/steps are repeated in float32 PyTorch, and the
deviations from the float64 results are written into config.json ("f32_proxy"): they show what a correct
float32 implementation can be expected to reach, so the C tests can choose tolerances from evidence
(f32_proxy.step<k>.golden_test_measures gives test_golden.c's own parameter measures).
Dropout is 0 everywhere (train and eval forwards are then identical).

Robustness: a float32 implementation must not be able to take a different discrete branch than the
float64 reference where the expected tensors depend on it. Two kinds are guarded, and a draw that fails
either is rejected and re-drawn with seed + 1000, + 2000, ... (printed, and recorded in config.json):
  - Hungarian matching: in every step and decoder layer, the best assignment beats the second best by
    at least MATCHING_MARGIN (5e-4) in cost.
  - ReLU kinks: at the starting weights (the forward behind expected_grads and expected_step1), every
    ReLU pre-activation (stem, every bottleneck/basic-block ReLU incl. relu(out + identity), the
    transformer FFNs, the bbox MLP) is at least RELU_MARGIN (1e-5) of its tensor's max |value| away
    from 0, and at least RELU_F32_FACTOR (10) times float32 PyTorch's error at that site. The fixture
    init puts each ReLU's zero into a gap of its data so that this holds (section "ReLU kinks").
    The forwards of steps 2..5 cannot be guarded this way (training moves the pre-activations across 0
    by far more than the gaps); their counts of pre-activations below the margin are recorded.
"""
import argparse
import copy
import json
import math
import os
import sys
import time
import types

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import detr_ref as R  # noqa: E402
from st_io import write_safetensors  # noqa: E402

OPTIM = {"lr": 1e-4, "lr_backbone": 1e-5, "weight_decay": 1e-4, "betas": [0.9, 0.999], "eps": 1e-8,
         "clip_max_norm": 0.1}
LOSS = {"eos_coef": 0.1, "set_cost_class": 1.0, "set_cost_bbox": 5.0, "set_cost_giou": 2.0,
        "ce_loss_coef": 1.0, "bbox_loss_coef": 5.0, "giou_loss_coef": 2.0, "aux_loss": True}
STEPS = (1, 5)

# Fixture-only init knobs (not the reference init): they keep activations O(1) through a random ResNet
# and spread the queries' predictions apart, so that the Hungarian matching has a clear margin and cannot
# flip between a float32 and a float64 implementation.
QUERY_EMBED_STD = 3.0
BBOX_LAST_LAYER_GAIN = 5.0

CONFIGS = {
    # resnet18; second image smaller so padding shows in the 4x5 feature map (bottom row, right column)
    "tiny": dict(depth=18, dilation=False, hidden_dim=64, nheads=4, enc_layers=2, dec_layers=2,
                 dim_feedforward=128, num_queries=20, num_classes=7, pre_norm=False,
                 image_sizes=[[100, 130], [70, 90]], num_boxes=[3, 2], label_pool=None, seed=13),
    # resnet50 (full widths); portrait + landscape images so padding sits on different sides;
    # category-id-like labels (0 never used); the second image has no targets
    "r50mini": dict(depth=50, dilation=False, hidden_dim=128, nheads=8, enc_layers=2, dec_layers=2,
                    dim_feedforward=256, num_queries=12, num_classes=5, pre_norm=False,
                    image_sizes=[[96, 72], [60, 120]], num_boxes=[4, 0], label_pool=[1, 2, 4], seed=22),
    # DC5: layer4 with dilation (output stride 16); block 0 of layer4 keeps dilation 1 (torchvision rule)
    "r50dc5": dict(depth=50, dilation=True, hidden_dim=64, nheads=4, enc_layers=1, dec_layers=2,
                   dim_feedforward=128, num_queries=8, num_classes=3, pre_norm=False,
                   image_sizes=[[64, 48], [40, 80]], num_boxes=[2, 1], label_pool=None, seed=49),
    # pre-norm transformer (encoder gets a final norm), B=3, 3 decoder layers (2 aux outputs)
    "prenorm": dict(depth=18, dilation=False, hidden_dim=32, nheads=2, enc_layers=1, dec_layers=3,
                    dim_feedforward=64, num_queries=10, num_classes=4, pre_norm=True,
                    image_sizes=[[80, 100], [64, 72], [50, 96]], num_boxes=[1, 4, 2], label_pool=None,
                    seed=33),
}


# ----------------------------------------------------------------------------------------------
# Model construction and fixture init

def build_model(cfg):
    return R.DETR(depth=cfg["depth"], dilation=cfg["dilation"], hidden_dim=cfg["hidden_dim"],
                  nheads=cfg["nheads"], enc_layers=cfg["enc_layers"], dec_layers=cfg["dec_layers"],
                  dim_feedforward=cfg["dim_feedforward"], dropout=0.0, pre_norm=cfg["pre_norm"],
                  num_queries=cfg["num_queries"], num_classes=cfg["num_classes"],
                  aux_loss=LOSS["aux_loss"])


def _is_last_conv_of_branch(model, name):
    parent = model.get_submodule(name.rsplit(".", 1)[0])
    leaf = name.rsplit(".", 1)[1]
    return ((isinstance(parent, R.Bottleneck) and leaf == "conv3")
            or (isinstance(parent, R.BasicBlock) and leaf == "conv2"))


@torch.no_grad()
def init_for_fixture(model, gen):
    """Backbone: kaiming-normal convs (smaller gain on the last conv of each residual branch and on the
    downsample conv, so activations stay O(1)), FrozenBN buffers random so they matter.
    Transformer: the reference xavier init, plus random biases and LayerNorm affines so that every
    bias/affine path is exercised. Heads: PyTorch defaults, query spread and bbox gain (see above)."""
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Conv2d) and name.startswith("backbone"):
            fan_in = mod.weight[0].numel()
            if _is_last_conv_of_branch(model, name):
                gain = 0.5 if isinstance(model.get_submodule(name.rsplit(".", 1)[0]), R.BasicBlock) else 0.3
            elif "downsample" in name:
                gain = 0.6
            else:
                gain = 1.0
            mod.weight.normal_(0.0, gain * math.sqrt(2.0 / fan_in), generator=gen)
        elif isinstance(mod, R.FrozenBatchNorm2d):
            n = mod.weight.numel()
            mod.weight.copy_(torch.rand(n, generator=gen) + 0.5)
            mod.bias.copy_(torch.randn(n, generator=gen) * 0.1)
            mod.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
            mod.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
        elif isinstance(mod, torch.nn.MultiheadAttention):
            mod.in_proj_bias.copy_(torch.randn(mod.in_proj_bias.shape, generator=gen) * 0.1)
            mod.out_proj.bias.copy_(torch.randn(mod.out_proj.bias.shape, generator=gen) * 0.1)
        elif isinstance(mod, torch.nn.LayerNorm):
            mod.weight.copy_(torch.rand(mod.weight.shape, generator=gen) * 0.4 + 0.8)
            mod.bias.copy_(torch.randn(mod.bias.shape, generator=gen) * 0.1)
    model.query_embed.weight.copy_(torch.randn(model.query_embed.weight.shape, generator=gen) * QUERY_EMBED_STD)
    model.bbox_embed.layers[2].weight.mul_(BBOX_LAST_LAYER_GAIN)


# ----------------------------------------------------------------------------------------------
# ReLU kinks
#
# A ReLU whose float64 pre-activation lies within float32 error of 0 can switch on in one
# implementation and off in the other; its derivative (0 or 1) then differs, and a whole weight-
# gradient row changes by that element's share (r50mini once failed on layer4.0's conv3 because one
# pre-activation was 6.0e-8 with the tensor's max at 16.9; its gradient row moved by 2e-3 of the
# tensor's max). So at the starting weights, the forward behind expected_grads and expected_step1, every
# ReLU pre-activation must be at least RELU_MARGIN x (that tensor's max |value|) away from 0, and at least
# RELU_F32_FACTOR x float32 PyTorch's error at that site (relu_start_check).
#
# Why 1e-5: float32 PyTorch lands within 4e-7..2e-6 of a backbone tensor's max (the sums there are long
# but well conditioned); a float32 implementation with another summation order (im2col + GEMM blocking)
# has errors of the same size, so 1e-5 leaves a factor of 5-25. The transformer FFN sites are worse
# conditioned (decoder layer 0 normalises a nearly constant vector: up to 2e-5), hence the second, per-site
# rule; the centred gaps there are ~1e-2 wide, so it holds with a factor of > 100.
#
# A random network cannot meet this by re-drawing alone: r50mini has ~4.5 million pre-activations per
# forward and ~700 of them lie below 1e-5 of their tensor's max. So the fixture init moves each ReLU's
# zero into a gap of its own data (center_relu_kinks): per channel, the pre-activations of the first
# forward are sorted and the channel's bias (FrozenBN bias, linear1.bias, bbox MLP bias) is shifted so
# that 0 sits in the middle of the widest gap between the 20% and 80% quantiles (every channel stays
# partly on, partly off). The smallest margins then are 6e-5..2e-4 (frozen stem/layer1, 3000-6000
# positions per channel), 100-300x the float32 error.
#
# The forwards of steps 2..5 are not guarded, because no draw can pass: one Adam step moves every weight
# by ~lr, which moves the pre-activations by 1e-3..1e-1 of their max in the backbone and by up to 2x in
# the transformer, far more than the gaps (1e-4..1e-2), so tens to hundreds of pre-activations land
# within 1e-5 of 0 in every later step (measured: r50mini 28/91/129/155 in steps 2-5; 8 seeds of tiny
# all failed). The float32 run also drifts from the float64 one there (Adam turns gradient rounding
# noise into steps of up to lr), to 2e-5..2e-4 of a tensor's max. Those counts are recorded in
# config.json (relu_below_margin_per_step) and the float32 sign flips in f32_proxy.

RELU_MARGIN = 1e-5
RELU_F32_FACTOR = 10.0
MATCHING_MARGIN = 5e-4
MAX_DRAWS = 8
SEED_STRIDE = 1000          # draw k uses seed + k * SEED_STRIDE


def relu_sites(model):
    """Every ReLU of the forward, in call order: (name, state-dict key of the bias that shifts its
    pre-activation per channel, channel dim of the pre-activation)."""
    sites = [("backbone.0.body stem relu(bn1)", "backbone.0.body.bn1.bias", 1)]
    body = model.backbone[0].body
    for li in range(1, 5):
        for bi, blk in enumerate(getattr(body, f"layer{li}")):
            pre = f"backbone.0.body.layer{li}.{bi}"
            bns = ["bn1", "bn2", "bn3"] if isinstance(blk, R.Bottleneck) else ["bn1", "bn2"]
            for j, bn in enumerate(bns):
                what = "relu(out + identity)" if j == len(bns) - 1 else f"relu({bn})"
                sites.append((f"{pre} {what}", f"{pre}.{bn}.bias", 1))
    for part in ("encoder", "decoder"):
        for i in range(len(getattr(model.transformer, part).layers)):
            pre = f"transformer.{part}.layers.{i}"
            sites.append((f"{pre} relu(linear1)", f"{pre}.linear1.bias", -1))
    for i in range(model.bbox_embed.num_layers - 1):
        sites.append((f"bbox_embed relu(layers.{i})", f"bbox_embed.layers.{i}.bias", -1))
    return sites


class ReluProbe:
    """Context manager that routes every torch.nn.functional.relu call (nn.ReLU calls it too) through
    on_site(forward_index, site_index, x) -> x, where site_index follows relu_sites order. Only model
    forwards may run inside it; it checks that every forward made exactly len(sites) calls."""

    def __init__(self, n_sites, on_site):
        self.n_sites = n_sites
        self.on_site = on_site
        self.calls = 0

    def __enter__(self):
        self._orig = torch.nn.functional.relu

        def probed(x, inplace=False):
            fwd, site = divmod(self.calls, self.n_sites)
            self.calls += 1
            return self._orig(self.on_site(fwd, site, x), inplace=inplace)

        torch.nn.functional.relu = probed
        return self

    def __exit__(self, *exc):
        torch.nn.functional.relu = self._orig
        if exc[0] is None and self.calls % self.n_sites != 0:
            raise RuntimeError(f"ReluProbe: {self.calls} relu calls is not a whole number of forwards of "
                               f"{self.n_sites} ReLU sites; relu_sites() no longer matches the model")
        return False

    @property
    def forwards(self):
        return self.calls // self.n_sites


def channels_first(x, dim):
    """[.., C, ..] -> [C, N] (all other dims flattened)."""
    return x.detach().movedim(dim, 0).reshape(x.shape[dim], -1)


def widest_gap_midpoints(x, dim):
    """Per channel: the midpoint of the widest gap between consecutive sorted values, searched between
    the 20% and 80% quantiles. x: pre-activations with channels on `dim` -> [C]."""
    v, _ = channels_first(x, dim).double().sort(dim=1)    # [C, N]
    n = v.shape[1]
    lo = int(0.2 * (n - 1))
    hi = max(lo + 1, math.ceil(0.8 * (n - 1)))
    gaps = v[:, lo + 1:hi + 1] - v[:, lo:hi]               # [C, hi - lo]
    i = gaps.argmax(dim=1) + lo
    rows = torch.arange(v.shape[0])
    return 0.5 * (v[rows, i] + v[rows, i + 1])


@torch.no_grad()
def center_relu_kinks(model, images, mask):
    """Shifts each ReLU site's bias (in the float32 model, in place) so that 0 falls in the middle of
    the widest central gap of that channel's pre-activations (see the section comment). One float64
    forward: each site is adjusted before the next one is computed, and the rest of the forward sees the
    shifted values, exactly as if the new bias had been there from the start."""
    sites = relu_sites(model)
    state = model.state_dict()
    model64 = copy.deepcopy(model).double()
    model64.eval()

    def shift(fwd, k, x):
        _, key, dim = sites[k]
        b32 = state[key]                                    # float32 tensor of the master model
        new = (b32.double() - widest_gap_midpoints(x, dim)).float()
        delta = new.double() - b32.double()                 # exact: both are float32 values
        b32.copy_(new)
        shape = [1] * x.dim()
        shape[dim] = -1
        return x + delta.reshape(shape).to(x.dtype)

    with ReluProbe(len(sites), shift):
        model64(images.double(), mask)


@torch.no_grad()
def relu_start_check(model, images, mask):
    """The ReLU margins at the starting weights: per site, margin = min|x| / max|x| of the float64
    pre-activation x, and the float32 PyTorch error there, max|x32 - x| / max|x|. Returns the smallest
    margin, the smallest margin / error ratio, the largest error, with their sites."""
    sites = relu_sites(model)
    vals = {}

    def keep(tag):
        def on_site(fwd, k, x):
            vals[tag, k] = x.detach().double()
            return x
        return on_site

    for tag, m, img in (("f64", copy.deepcopy(model).double(), images.double()), ("f32", model, images)):
        m.eval()
        with ReluProbe(len(sites), keep(tag)):
            m(img, mask)
    r = types.SimpleNamespace(min_margin=math.inf, where="", min_ratio=math.inf, ratio_where="", f32_err_max=0.0)
    for k, (site, _, _) in enumerate(sites):
        x = vals["f64", k]
        mx = float(x.abs().max())
        margin = float(x.abs().min()) / mx if mx > 0 else 0.0
        err = float((vals["f32", k] - x).abs().max()) / mx if mx > 0 else 0.0
        ratio = margin / err if err > 0 else math.inf
        if margin < r.min_margin:
            r.min_margin, r.where = margin, site
        if ratio < r.min_ratio:
            r.min_ratio, r.ratio_where = ratio, site
        r.f32_err_max = max(r.f32_err_max, err)
    return r


class ReluMargins:
    """on_site for ReluProbe during the reference steps: per forward (index 0 = step 1's forward), the
    smallest margin min|x| / max|x| over the sites and the number of pre-activations below
    RELU_MARGIN x max|x|; keep=True also keeps the float64 pre-activations for the float32 comparison."""

    def __init__(self, sites, keep):
        self.sites = sites
        self.keep = keep
        self.values = []        # [forward * n_sites + site] float64 tensors (keep=True)
        self.min_margin = []    # per forward
        self.where = []         # per forward: the site of min_margin
        self.n_below = []       # per forward

    def __call__(self, fwd, k, x):
        if fwd == len(self.min_margin):
            self.min_margin.append(math.inf)
            self.where.append("")
            self.n_below.append(0)
        a = x.detach().abs()
        mx = float(a.max())
        m = float(a.min()) / mx if mx > 0 else 0.0
        if m < self.min_margin[fwd]:
            self.min_margin[fwd] = m
            self.where[fwd] = f"{self.sites[k][0]}, step {fwd + 1} forward"
        self.n_below[fwd] += int((a < RELU_MARGIN * mx).sum())
        if self.keep:
            self.values.append(x.detach().clone())
        return x


class ReluFloat32Error:
    """on_site for ReluProbe during the float32 proxy steps: per forward, how far the float32
    pre-activations land from the float64 ones (max over sites of max |x32 - x64| / max |x64|) and how
    many of them are on the other side of 0."""

    def __init__(self, sites, ref_values):
        self.sites = sites
        self.ref = ref_values
        self.err_max = []       # per forward
        self.where = []
        self.sign_flips = []
        self.i = 0

    def __call__(self, fwd, k, x):
        if fwd == len(self.err_max):
            self.err_max.append(0.0)
            self.where.append("")
            self.sign_flips.append(0)
        r = self.ref[self.i]
        self.i += 1
        e = float((x.detach().double() - r).abs().max() / r.abs().max())
        if e > self.err_max[fwd]:
            self.err_max[fwd] = e
            self.where[fwd] = self.sites[k][0]
        self.sign_flips[fwd] += int(((x.detach() > 0) != (r > 0)).sum())
        return x


def make_inputs(cfg, gen):
    """images [B,3,H,W] N(0,1) at top-left, zero padding; mask [B,H,W] True = padding."""
    sizes = cfg["image_sizes"]
    hmax = max(h for h, _ in sizes)
    wmax = max(w for _, w in sizes)
    b = len(sizes)
    images = torch.zeros(b, 3, hmax, wmax)
    mask = torch.ones(b, hmax, wmax, dtype=torch.bool)
    for i, (h, w) in enumerate(sizes):
        images[i, :, :h, :w] = torch.randn(3, h, w, generator=gen)
        mask[i, :h, :w] = False
    return images, mask


def make_targets(cfg, gen):
    """1-4 random boxes per image (or 0), inside the image, labels below num_classes."""
    out = []
    for n in cfg["num_boxes"]:
        cx = torch.rand(n, generator=gen) * 0.6 + 0.2
        cy = torch.rand(n, generator=gen) * 0.6 + 0.2
        w = torch.rand(n, generator=gen) * 0.35 + 0.05
        h = torch.rand(n, generator=gen) * 0.35 + 0.05
        w = torch.minimum(w, 2 * torch.minimum(cx, 1 - cx))
        h = torch.minimum(h, 2 * torch.minimum(cy, 1 - cy))
        boxes = torch.stack([cx, cy, w, h], dim=1)
        pool = cfg["label_pool"] or list(range(cfg["num_classes"]))
        idx = torch.randint(0, len(pool), (n,), generator=gen)
        labels = [pool[int(i)] for i in idx]
        # round-trip through float32 (what the JSON holds is what the C code reads)
        out.append({"labels": labels, "boxes": [[float(np.float32(v)) for v in bx] for bx in boxes.tolist()]})
    return out


def targets_to_torch(targets, dtype):
    return [{"labels": torch.as_tensor(t["labels"], dtype=torch.int64),
             "boxes": torch.as_tensor(t["boxes"], dtype=dtype).reshape(-1, 4)} for t in targets]


def build_criterion(cfg):
    matcher = R.HungarianMatcher(LOSS["set_cost_class"], LOSS["set_cost_bbox"], LOSS["set_cost_giou"])
    wd = R.build_weight_dict(cfg["dec_layers"], LOSS["ce_loss_coef"], LOSS["bbox_loss_coef"],
                             LOSS["giou_loss_coef"], LOSS["aux_loss"])
    return R.SetCriterion(cfg["num_classes"], matcher, wd, LOSS["eos_coef"])


# ----------------------------------------------------------------------------------------------
# Runs

def f32(t):
    return t.detach().to(torch.float32).contiguous().numpy()


def layer_names(dec_layers):
    return ["final"] + [f"aux_{i}" for i in range(dec_layers - 1)]


def run_infer(model, images, mask):
    model.eval()
    with torch.no_grad():
        out = model(images, mask, return_intermediates=True)
    it = out["intermediates"]
    aux = out["aux_outputs"]
    res = {"pred_logits": out["pred_logits"], "pred_boxes": out["pred_boxes"],
           "aux_pred_logits": torch.stack([a["pred_logits"] for a in aux]) if aux else
           out["pred_logits"].new_zeros((0,) + tuple(out["pred_logits"].shape)),
           "aux_pred_boxes": torch.stack([a["pred_boxes"] for a in aux]) if aux else
           out["pred_boxes"].new_zeros((0,) + tuple(out["pred_boxes"].shape))}
    for k, v in it["stages"].items():
        res[f"act.{k}"] = v
    res["act.pos"] = it["pos"]
    res["act.src_proj"] = it["src_proj"]
    res["act.memory"] = it["memory"]
    res["act.hs"] = it["hs"]
    arrays = {k: f32(v) for k, v in res.items()}
    arrays["act.mask"] = it["mask"].to(torch.uint8).numpy()
    return arrays, res


def matching_margin(cost):
    """Cost gap between the best and the second-best assignment of one [Q, n] matrix (inf if unique by
    construction). Every other assignment drops at least one optimal pair, so forbidding each optimal
    pair in turn and re-solving finds the second best."""
    c = np.array(cost, dtype=np.float64)
    if c.shape[1] == 0:
        return math.inf
    r, k = linear_sum_assignment(c)
    best = c[r, k].sum()
    second = math.inf
    for i, j in zip(r, k):
        cc = c.copy()
        cc[i, j] = 1e30
        r2, k2 = linear_sum_assignment(cc)
        second = min(second, cc[r2, k2].sum())
    return second - best


def collect_grads(model, criterion, out, loss_dict, total, targets):
    """After a train-mode forward/backward of the weighted total: (tensors dict with losses, `loss`,
    `grad_norm` and grad.<name>, matching dict, cost tensors dict)."""
    res = {k: v.detach().reshape(()) for k, v in loss_dict.items()}
    res["loss"] = total.detach()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    res["grad_norm"] = torch.sqrt(sum((g.double() ** 2).sum() for g in grads.values()))
    for n, g in grads.items():
        res[f"grad.{n}"] = g
    names = layer_names(len(criterion.last_indices))
    matching = {name: [{"pred": [int(v) for v in src], "tgt": [int(v) for v in tgt]} for src, tgt in ind]
                for name, ind in zip(names, criterion.last_indices)}
    costs = {}
    outs = [out] + list(out.get("aux_outputs", []))
    for name, o in zip(names, outs):
        for b, c in enumerate(criterion.matcher.cost_matrices(o, targets)):
            if c.shape[1] > 0:
                costs[f"cost.{name}.{b}"] = c
    return res, matching, costs


def min_matching_margin(criterion, out, targets):
    outs = [out] + list(out.get("aux_outputs", []))
    return min(matching_margin(c) for o in outs for c in criterion.matcher.cost_matrices(o, targets))


def run_steps(model, criterion, images, mask, targets, n_steps, relu_observer=None):
    """n_steps engine.py steps (train mode) on one batch. The first step's forward/backward doubles as
    the gradient fixture. relu_observer (a ReluProbe on_site) sees every ReLU pre-activation of the
    steps' forwards. Returns (grads tuple of collect_grads, {step: {name: param}}, losses,
    grad norms, matchings per step, smallest matching margin over all steps and layers)."""
    model.train()
    opt = R.make_optimizer(model, OPTIM["lr"], OPTIM["lr_backbone"], OPTIM["weight_decay"],
                           tuple(OPTIM["betas"]), OPTIM["eps"])
    first = []
    margins = []

    def record(out, loss_dict, total):
        if not first:
            first.append(collect_grads(model, criterion, out, loss_dict, total, targets))
        margins.append(min_matching_margin(criterion, out, targets))

    snaps, losses, gnorms, matchings = {}, [], [], []
    probe = ReluProbe(len(relu_sites(model)), relu_observer or (lambda fwd, k, x: x))
    with probe:
        for step in range(1, n_steps + 1):
            _, total, gnorm = R.train_step(model, criterion, opt, images, mask, targets,
                                           OPTIM["clip_max_norm"], after_backward=record)
            losses.append(float(total))
            gnorms.append(float(gnorm))
            matchings.append([[(s.tolist(), t.tolist()) for s, t in ind] for ind in criterion.last_indices])
            if step in STEPS:
                snaps[step] = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert probe.forwards == n_steps
    return first[0], snaps, losses, gnorms, matchings, min(margins)


# ----------------------------------------------------------------------------------------------
# float32 proxy statistics

def rel_err(a, b):
    """max|a-b| / (max|b| + 1e-6), the same measure as tests/unit/check.h rel_err."""
    a = a.double()
    b = b.double()
    return float((a - b).abs().max() / (b.abs().max() + 1e-6)) if b.numel() else 0.0


def key_bias_slices(model, d):
    """name -> slice of in_proj_bias rows that are the key bias (true gradient exactly 0)."""
    return {n: slice(d, 2 * d) for n, _ in model.named_parameters() if n.endswith("in_proj_bias")}


def zero_gradient_tensors(ref_grads):
    """Names (without "grad.") whose reference gradient max is below 1e-9 of the model's largest: exactly
    zero in exact arithmetic (tests/unit/test_golden.c's zero-gradient rule)."""
    g = {k[len("grad."):]: float(v.abs().max()) for k, v in ref_grads.items() if k.startswith("grad.")}
    gmax = max(g.values())
    return {n for n, m in g.items() if m < 1e-9 * gmax}


def golden_step_measures(ref, got, params0, zero):
    """test_golden.c's two parameter checks, with its zero-gradient rule: the worst param error
    (max|a-b| / (max|b| + 1e-6), or / the largest parameter for zero-gradient tensors), the worst update
    error of the other tensors, and the largest |update difference| / lr_group of the zero-gradient ones."""
    largest = max(float(v.abs().max()) for v in ref.values())
    perr, uerr, zmax = {}, {}, 0.0
    for n in ref:
        lr = OPTIM["lr_backbone"] if n.startswith("backbone.") else OPTIM["lr"]
        d = got[n].double() - ref[n].double()
        u_ref = ref[n].double() - params0[n].double()
        if n in zero:
            perr[n] = float(d.abs().max()) / (largest + 1e-6)
            zmax = max(zmax, float(d.abs().max()) / lr)
        else:
            perr[n] = float(d.abs().max()) / (float(ref[n].abs().max()) + 1e-6)
            uerr[n] = float(d.norm()) / max(float(u_ref.norm()), lr * math.sqrt(d.numel()))
    wp = max(perr, key=perr.get)
    wu = max(uerr, key=uerr.get)
    return {"param_err_max": perr[wp], "param_err_worst_tensor": wp, "update_err_max": uerr[wu],
            "update_err_worst_tensor": wu, "zero_grad_update_diff_max_in_lr": zmax}


def step_error_stats(ref, got, params0, zero):
    """Errors of parameters after optimizer steps, per param group (main at lr, backbone at
    lr_backbone): max |got - ref| (also in units of the group's lr), the relative L2 error of the
    update (got - p0 vs ref - p0), and the fraction of elements off by more than 0.1 lr."""
    out = {}
    for group, lr in (("main", OPTIM["lr"]), ("backbone", OPTIM["lr_backbone"])):
        names = [n for n in ref if ("backbone" in n) == (group == "backbone")]
        max_abs, worst, num, den, n_bad, n_tot = 0.0, "", 0.0, 0.0, 0, 0
        for n in names:
            p0 = params0[n].double()
            diff = (got[n].double() - ref[n].double()).abs()
            if float(diff.max()) > max_abs:
                max_abs, worst = float(diff.max()), n
            num += float((diff ** 2).sum())
            den += float(((ref[n].double() - p0) ** 2).sum())
            n_bad += int((diff > 0.1 * lr).sum())
            n_tot += diff.numel()
        out[group] = {"param_max_abs_err": max_abs, "max_abs_err_in_lr": max_abs / lr,
                      "param_max_abs_err_tensor": worst,
                      "update_rel_l2_err": math.sqrt(num / den) if den > 0 else 0.0,
                      "frac_elems_err_over_0.1lr": n_bad / max(n_tot, 1)}
    per = {n: rel_err(got[n], ref[n]) for n in ref}
    worst = max(per, key=per.get)
    out["per_tensor_rel_err_max"] = per[worst]       # tests/unit/test_golden.c's measure for params
    out["per_tensor_rel_err_worst_tensor"] = worst
    # recommended step measure, per tensor: ||upd_got - upd_ref||_2 / max(||upd_ref||_2, lr_group*sqrt(numel))
    # with upd = param after - param before. The floor covers tensors whose true gradient is 0 (their
    # reference update is weight decay only, ~1e-8 |p|, which float32 cannot even represent).
    upd = {}
    for n in ref:
        lr = OPTIM["lr_backbone"] if "backbone" in n else OPTIM["lr"]
        d_ref = ref[n].double() - params0[n].double()
        d_got = got[n].double() - params0[n].double()
        upd[n] = float((d_got - d_ref).norm()) / max(float(d_ref.norm()), lr * math.sqrt(d_ref.numel()))
    worst = max(upd, key=upd.get)
    out["update_err_per_tensor_max"] = upd[worst]
    out["update_err_per_tensor_worst_tensor"] = worst
    out["golden_test_measures"] = golden_step_measures(ref, got, params0, zero)
    return out


def f32_proxy_stats(cfg, model32, crit, images, mask, targets, ref_infer, ref_grads, ref_snaps,
                    ref_matchings, params0, relu_ref_values):
    stats = {}
    relu = ReluFloat32Error(relu_sites(model32), relu_ref_values)
    infer32, _ = run_infer(model32, images.float(), mask)
    stats["infer_rel_err"] = {k: rel_err(torch.from_numpy(infer32[k]), ref_infer[k])
                              for k in ("pred_logits", "pred_boxes", "aux_pred_logits", "aux_pred_boxes")}
    (g32, _, _), snaps32, _, _, matchings32, _ = run_steps(
        model32, crit, images.float(), mask, targets_to_torch(targets, torch.float32), max(STEPS), relu)
    # every ReLU pre-activation of every step's forward against the float64 one
    stats["relu_err_per_step"] = relu.err_max
    stats["relu_err_worst_site_per_step"] = relu.where
    stats["relu_sign_flips_per_step"] = relu.sign_flips
    loss_keys = [k for k in ref_grads if not k.startswith("grad.")]
    stats["loss_abs_err"] = {k: abs(float(g32[k]) - float(ref_grads[k])) for k in loss_keys}
    worst, worst_name = 0.0, ""
    per = {}
    for k in ref_grads:
        if k.startswith("grad."):
            e = rel_err(g32[k], ref_grads[k])
            per[k] = e
            if e > worst:
                worst, worst_name = e, k
    stats["grad_rel_err_max"] = worst
    stats["grad_rel_err_worst_tensor"] = worst_name
    stats["grad_rel_err_top5"] = dict(sorted(per.items(), key=lambda kv: -kv[1])[:5])
    # test_golden.c's measure: a tensor whose reference max is below 1e-9 of the largest gradient is
    # compared relative to that largest gradient instead
    gmax = max(float(ref_grads[k].abs().max()) for k in per)
    zr = {}
    for k in per:
        bmax = float(ref_grads[k].abs().max())
        zr[k] = per[k] if bmax >= 1e-9 * gmax else float((g32[k].double() - ref_grads[k]).abs().max()) / gmax
    worst_zr = max(zr, key=zr.get)
    stats["grad_err_zero_rule_max"] = zr[worst_zr]
    stats["grad_err_zero_rule_worst_tensor"] = worst_zr
    stats["grad_rel_err_median"] = float(np.median(list(per.values())))
    # tensors whose true gradient is exactly zero: the key slice of every in_proj_bias, and decoder
    # layer 0 self-attention in_proj_weight (its input is 0 in post-norm / constant over keys in pre-norm:
    # q/k rows get zero through softmax shift invariance, v rows get zero input in post-norm)
    d = cfg["hidden_dim"]
    kb = {}
    for n, sl in key_bias_slices(model32, d).items():
        kb[n] = {"f64_max_abs": float(ref_grads[f"grad.{n}"][sl].abs().max()),
                 "f32_max_abs": float(g32[f"grad.{n}"][sl].abs().max()),
                 "q_and_v_slices_f64_max_abs": float(torch.cat([ref_grads[f"grad.{n}"][:d],
                                                               ref_grads[f"grad.{n}"][2 * d:]]).abs().max())}
    stats["key_bias_grad"] = kb
    n0 = "transformer.decoder.layers.0.self_attn.in_proj_weight"
    stats["dec0_self_attn_in_proj_weight_grad"] = {
        "qk_rows_f64_max_abs": float(ref_grads[f"grad.{n0}"][:2 * d].abs().max()),
        "qk_rows_f32_max_abs": float(g32[f"grad.{n0}"][:2 * d].abs().max()),
        "v_rows_f64_max_abs": float(ref_grads[f"grad.{n0}"][2 * d:].abs().max()),
        "v_rows_f32_max_abs": float(g32[f"grad.{n0}"][2 * d:].abs().max())}
    # steps
    stats["matchings_equal_all_steps"] = matchings32 == ref_matchings
    for step in STEPS:
        stats[f"step{step}"] = step_error_stats(ref_snaps[step], snaps32[step], params0,
                                                zero_gradient_tensors(ref_grads))
    return stats


# ----------------------------------------------------------------------------------------------
# Per-config driver

def feature_size(model, h, w):
    with torch.no_grad():
        feat = model.backbone[0].body(torch.zeros(1, 3, h, w, dtype=next(model.parameters()).dtype))
    return list(feat.shape[-2:])


def draw_fixture(cfg, seed):
    """The float32 model (fixture init, ReLU zeros moved into gaps), inputs and targets of one seed."""
    torch.manual_seed(seed)              # the reference's own inits (xavier, nn.Linear) use the global RNG
    gen = torch.Generator().manual_seed(seed)
    model = build_model(cfg)
    init_for_fixture(model, gen)
    images, mask = make_inputs(cfg, gen)
    targets = make_targets(cfg, gen)
    center_relu_kinks(model, images, mask)
    return model, images, mask, targets


def reference_run(cfg, model, images, mask, targets, keep_relu_values):
    """The float64 reference from the float32 model's exact values: inference, then max(STEPS)
    training steps with every ReLU pre-activation observed."""
    model64 = copy.deepcopy(model).double()
    crit = build_criterion(cfg).double()
    img64 = images.double()
    tg64 = targets_to_torch(targets, torch.float64)
    r = types.SimpleNamespace()
    r.infer_arrays, r.infer_ref = run_infer(model64, img64, mask)
    r.params0 = {n: p.detach().clone() for n, p in model64.named_parameters() if p.requires_grad}
    r.relu = ReluMargins(relu_sites(model64), keep_relu_values)
    (r.grads, r.matching, r.costs), r.snaps, r.losses, r.gnorms, r.matchings, r.margin = run_steps(
        model64, crit, img64, mask, tg64, max(STEPS), r.relu)
    return r


def check_padding_visible(name, model, images, mask):
    fsize = feature_size(model, images.shape[2], images.shape[3])
    m_ds = torch.nn.functional.interpolate(mask[None].float(), size=fsize).bool()[0]
    if not (m_ds.any() and (~m_ds).flatten(1).any(1).all()):
        raise SystemExit(f"{name}: the image sizes leave no padding (or no valid cell) in the {fsize} "
                         f"feature map; pick other image_sizes")
    return fsize


def draw_until_robust(name, cfg, keep_relu_values):
    """Draws seeds cfg["seed"], cfg["seed"] + SEED_STRIDE, ... until the reference has a matching margin
    >= MATCHING_MARGIN in every step and every ReLU of the starting weights' forward clears RELU_MARGIN
    and RELU_F32_FACTOR x its float32 error. Returns (draw index, seed, model, images, mask, targets,
    reference run)."""
    rejected = []
    for draw in range(MAX_DRAWS):
        seed = cfg["seed"] + SEED_STRIDE * draw
        model, images, mask, targets = draw_fixture(cfg, seed)
        relu = relu_start_check(model, images, mask)
        ref = reference_run(cfg, model, images, mask, targets, keep_relu_values)
        ref.relu_start = relu
        problems = []
        if ref.margin < MATCHING_MARGIN:
            problems.append(f"matching margin {ref.margin:.2e} < {MATCHING_MARGIN:.0e}: float32 code could "
                            f"pick another matching")
        if relu.min_margin < RELU_MARGIN:
            problems.append(f"ReLU margin {relu.min_margin:.2e} < {RELU_MARGIN:.0e} at {relu.where}")
        if relu.min_ratio < RELU_F32_FACTOR:
            problems.append(f"ReLU margin only {relu.min_ratio:.1f} x the float32 error at {relu.ratio_where}")
        if not problems:
            return draw, seed, model, images, mask, targets, ref
        rejected.append(f"seed {seed}: {'; '.join(problems)}")
        print(f"{name}: seed {seed} rejected ({'; '.join(problems)}); drawing again", flush=True)
    raise SystemExit(f"{name}: no acceptable draw in {MAX_DRAWS} seeds:\n  " + "\n  ".join(rejected) +
                     "\nChange the config (image sizes, widths) or the init knobs.")


def generate(name, cfg, outdir, f32_proxy, debug):
    t0 = time.time()
    draw, seed, model, images, mask, targets, ref = draw_until_robust(name, cfg, keep_relu_values=f32_proxy)
    fsize = check_padding_visible(name, model, images, mask)
    os.makedirs(outdir, exist_ok=True)

    state = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    meta = {"nheads": str(cfg["nheads"]), "dilation": "true" if cfg["dilation"] else "false",
            "pre_norm": "true" if cfg["pre_norm"] else "false", "depth": str(cfg["depth"]),
            "hidden_dim": str(cfg["hidden_dim"]), "num_queries": str(cfg["num_queries"]),
            "num_classes": str(cfg["num_classes"]), "enc_layers": str(cfg["enc_layers"]),
            "dec_layers": str(cfg["dec_layers"]), "dim_feedforward": str(cfg["dim_feedforward"]),
            "source": "tests/ref/make_fixtures.py (random fixture weights, not a trained model)"}
    write_safetensors(os.path.join(outdir, "weights.safetensors"), {k: v.numpy() for k, v in state.items()}, meta)
    write_safetensors(os.path.join(outdir, "inputs.safetensors"),
                      {"images": images.numpy(), "mask": mask.to(torch.uint8).numpy()})
    with open(os.path.join(outdir, "targets.json"), "w") as f:
        json.dump(targets, f, indent=1)

    infer = {k: v for k, v in ref.infer_arrays.items() if debug or not k.startswith("act.")}
    write_safetensors(os.path.join(outdir, "expected_infer.safetensors"), infer)
    write_safetensors(os.path.join(outdir, "expected_grads.safetensors"),
                      {k: f32(v) for k, v in ref.grads.items()})
    with open(os.path.join(outdir, "expected_matching.json"), "w") as f:
        json.dump(ref.matching, f)
    if debug:
        write_safetensors(os.path.join(outdir, "expected_matcher.safetensors"),
                          {k: f32(v) for k, v in ref.costs.items()})
    for step in STEPS:
        arrays = {f"param.{n}": f32(p) for n, p in ref.snaps[step].items()}
        arrays["loss_per_step"] = np.asarray(ref.losses[:step], dtype=np.float32)
        arrays["grad_norm_per_step"] = np.asarray(ref.gnorms[:step], dtype=np.float32)
        write_safetensors(os.path.join(outdir, f"expected_step{step}.safetensors"), arrays)
    matchings_stable = all(m == ref.matchings[0] for m in ref.matchings)

    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_train_bb = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and "backbone" in n)
    conf = {
        "name": name, "backbone": f"resnet{cfg['depth']}", "depth": cfg["depth"], "dilation": cfg["dilation"],
        "num_channels": model.backbone[0].num_channels, "hidden_dim": cfg["hidden_dim"],
        "nheads": cfg["nheads"], "enc_layers": cfg["enc_layers"], "dec_layers": cfg["dec_layers"],
        "dim_feedforward": cfg["dim_feedforward"], "num_queries": cfg["num_queries"],
        "num_classes": cfg["num_classes"], "num_logits": cfg["num_classes"] + 1, "pre_norm": cfg["pre_norm"],
        "dropout": 0.0, "position_embedding": "sine", "batch_size": len(cfg["image_sizes"]),
        "image_sizes": cfg["image_sizes"], "padded_size": [images.shape[2], images.shape[3]],
        "feature_size": fsize, "num_target_boxes": cfg["num_boxes"],
        "trainable_params": n_train, "trainable_params_backbone": n_train_bb,
        "optimizer": "AdamW; param groups: non-backbone params at lr, backbone (layer2-4) at lr_backbone",
        "lr": OPTIM["lr"], "lr_backbone": OPTIM["lr_backbone"], "weight_decay": OPTIM["weight_decay"],
        "betas": OPTIM["betas"], "eps": OPTIM["eps"], "clip": OPTIM["clip_max_norm"],
        **LOSS, "steps_saved": list(STEPS), "seed": seed, "seed_draws": draw + 1,
        "reference_dtype": "float64 from float32 weights; expected tensors stored as float32",
        "matching_min_margin": ref.margin, "matching_margin_required": MATCHING_MARGIN,
        "matching_same_in_all_steps": matchings_stable,
        "relu_min_margin": ref.relu_start.min_margin, "relu_min_margin_site": ref.relu_start.where,
        "relu_margin_required": RELU_MARGIN,
        "relu_margin_over_f32_error_min": ref.relu_start.min_ratio,
        "relu_margin_over_f32_error_site": ref.relu_start.ratio_where,
        "relu_margin_over_f32_error_required": RELU_F32_FACTOR,
        "relu_f32_error_max": ref.relu_start.f32_err_max,
        "relu_min_margin_per_step": ref.relu.min_margin, "relu_below_margin_per_step": ref.relu.n_below,
        "relu_margin_note": "margin of a ReLU site = min|x| / max|x| of its float64 pre-activation tensor x; "
                            "relu_min_margin is the smallest over all sites at the starting weights (step 1's "
                            "forward: expected_grads, expected_step1), where it is guaranteed; the per-step "
                            "lists (forward of step 1..5) are informational: the later steps are not guarded "
                            "(see make_fixtures.py, 'ReLU kinks')",
        "loss_per_step": ref.losses, "grad_norm_per_step": ref.gnorms,
        "fixture_init": {"query_embed_std": QUERY_EMBED_STD, "bbox_last_layer_gain": BBOX_LAST_LAYER_GAIN,
                         "relu_zero_in_widest_gap": True},
        "debug_files": debug,
        "torch_version": torch.__version__,
    }
    t1 = time.time()
    if f32_proxy:
        model32 = copy.deepcopy(model)
        conf["f32_proxy"] = f32_proxy_stats(cfg, model32, build_criterion(cfg), images, mask, targets,
                                            ref.infer_ref, ref.grads, ref.snaps, ref.matchings, ref.params0,
                                            ref.relu.values)
    with open(os.path.join(outdir, "config.json"), "w") as f:
        json.dump(conf, f, indent=1)
    size = sum(os.path.getsize(os.path.join(outdir, fn)) for fn in os.listdir(outdir))
    line = (f"{name:8s} resnet{cfg['depth']:<3d} D={cfg['hidden_dim']} B={len(cfg['image_sizes'])} "
            f"feat={fsize} seed={seed} loss={float(ref.grads['loss']):.5f} "
            f"|g|={float(ref.grads['grad_norm']):.4f} matching margin={ref.margin:.2e} "
            f"ReLU margin={ref.relu_start.min_margin:.2e} ({ref.relu_start.where}; >= "
            f"{ref.relu_start.min_ratio:.0f}x float32 error), later steps below {RELU_MARGIN:.0e}: "
            f"{ref.relu.n_below[1:]} {size / 2**20:.0f} MiB ref {t1 - t0:.1f}s")
    if f32_proxy:
        p = conf["f32_proxy"]
        line += (f" | f32 proxy {time.time() - t1:.1f}s: ReLU err per step "
                 f"{' '.join(f'{e:.0e}' for e in p['relu_err_per_step'])} ({p['relu_err_worst_site_per_step'][0]}), "
                 f"sign flips {p['relu_sign_flips_per_step']}, grad err {p['grad_err_zero_rule_max']:.1e}, "
                 f"step5 update err {p['step5']['update_err_per_tensor_max']:.1e}, "
                 f"matchings equal {p['matchings_equal_all_steps']}")
    print(line, flush=True)
    return conf


ADAMW = {"lr": 1e-2, "lr_backbone": 1e-3, "weight_decay": 0.1, "betas": [0.9, 0.999], "eps": 1e-8,
         "clip_max_norm": 0.1, "steps": 5,
         # (name, group, shape): sizes that are not multiples of 16, so the ParamSet's per-tensor padding
         # sits between them; the group decides the learning rate (main: lr, backbone: lr_backbone)
         "tensors": [("main.weight", "main", [7, 13]), ("main.bias", "main", [50]),
                     ("main.embed", "main", [3, 4, 5]), ("backbone.conv", "backbone", [4, 3, 3, 3]),
                     ("backbone.scale", "backbone", [33])],
         # StepLR (torch.optim.lr_scheduler.StepLR, gamma 0.1): DETR's lr_drop schedule
         "steplr": {"lr": 1e-4, "step_size": 3, "gamma": 0.1, "epochs": 11}}


def steplr_values(cfg):
    """lr of each epoch from torch's StepLR (the values engine.py would use)."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=cfg["lr"])
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg["step_size"], gamma=cfg["gamma"])
    out = []
    for _ in range(cfg["epochs"]):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def adamw_gradients(gen, shape, steps):
    """[steps, *shape] gradients: N(0, 0.05); the first tenth of the elements 1e-6 smaller (below eps
    after clipping); the last element 0 in every step (weight decay alone moves it); steps 3 and 5
    1e-3 smaller, so the global norm there is under clip_max_norm and clipping does not engage."""
    n = math.prod(shape)
    g = torch.randn(steps, n, generator=gen) * 0.05
    g[:, : max(1, n // 10)] *= 1e-6
    g[:, -1] = 0.0
    g[2] *= 1e-3
    g[4] *= 1e-3
    return g.reshape(steps, *shape)


def generate_adamw(outdir):
    """Optimizer-only fixture: a few tensors in two param groups, given raw gradients per step; each step
    clips the global L2 norm over all tensors to clip_max_norm (torch.nn.utils.clip_grad_norm_), then
    applies torch.optim.AdamW, in float64 from the float32 starting values and gradients. The large lr and
    weight decay make the decay term visible (in the model fixtures lr * wd is 1e-8, below float32
    resolution); steps 1, 2 and 4 are clipped, steps 3 and 5 are not; some gradients are below eps."""
    gen = torch.Generator().manual_seed(55)
    cfg = ADAMW
    names = [t[0] for t in cfg["tensors"]]
    p0 = {name: torch.randn(*shape, generator=gen) for name, _, shape in cfg["tensors"]}
    grads = {name: adamw_gradients(gen, shape, cfg["steps"]) for name, _, shape in cfg["tensors"]}
    params = {n: p0[n].double().clone().requires_grad_(True) for n in names}
    groups = [{"params": [params[n] for n, g, _ in cfg["tensors"] if g == "main"]},
              {"params": [params[n] for n, g, _ in cfg["tensors"] if g == "backbone"], "lr": cfg["lr_backbone"]}]
    opt = torch.optim.AdamW(groups, lr=cfg["lr"], weight_decay=cfg["weight_decay"], betas=tuple(cfg["betas"]),
                            eps=cfg["eps"], foreach=False)
    expected, norms = {}, []
    for step in range(cfg["steps"]):
        for n in names:
            params[n].grad = grads[n][step].double().clone()
        norms.append(float(torch.nn.utils.clip_grad_norm_([params[n] for n in names], cfg["clip_max_norm"])))
        opt.step()
        for n in names:
            expected[f"param.{n}.step{step + 1}"] = f32(params[n])
    os.makedirs(outdir, exist_ok=True)
    tensors = {f"param0.{n}": p0[n].numpy() for n in names}
    tensors.update({f"grads.{n}": grads[n].numpy() for n in names})
    tensors["grad_norm_per_step"] = np.asarray(norms, dtype=np.float32)
    tensors.update(expected)
    write_safetensors(os.path.join(outdir, "adamw.safetensors"), tensors)
    clipped = [n > cfg["clip_max_norm"] for n in norms]
    conf = dict(cfg, tensors=[{"name": n, "group": g, "shape": s} for n, g, s in cfg["tensors"]],
                grad_norm_per_step=norms, clipped_per_step=clipped,
                steplr=dict(cfg["steplr"], lr_per_epoch=steplr_values(cfg["steplr"])),
                note="param0.<name> starting values; grads.<name> [steps, *shape] the raw gradients of each "
                     "step; each step clips the global L2 norm over all tensors (coef = clip_max_norm / "
                     "(norm + 1e-6), applied when < 1), then AdamW (group main at lr, backbone at "
                     "lr_backbone); param.<name>.step<k> the expected values after step k (float64 "
                     "reference rounded to float32); grad_norm_per_step the norms before clipping")
    with open(os.path.join(outdir, "config.json"), "w") as f:
        json.dump(conf, f, indent=1)
    print(f"adamw    optimizer-only fixture: {len(names)} tensors, {cfg['steps']} steps, grad norms "
          f"{', '.join(f'{n:.3g}' for n in norms)} (clipped {clipped})", flush=True)


FILES = ["config.json", "weights.safetensors", "inputs.safetensors", "targets.json",
         "expected_infer.safetensors", "expected_grads.safetensors", "expected_matching.json"] + \
        [f"expected_step{s}.safetensors" for s in STEPS]
DEBUG_FILES = ["expected_matcher.safetensors"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output directory (created)")
    ap.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of " + ",".join(CONFIGS))
    ap.add_argument("--no-f32-proxy", action="store_true",
                    help="skip the float32 PyTorch run whose deviations are recorded in config.json")
    ap.add_argument("--debug", action="store_true",
                    help="also write the debugging extras: act.* activations in expected_infer and the "
                         "matcher cost matrices (expected_matcher.safetensors)")
    args = ap.parse_args()
    names = [c for c in args.configs.split(",") if c]
    for n in names:
        if n not in CONFIGS:
            ap.error(f"unknown config '{n}' (known: {', '.join(CONFIGS)})")
    # One intra-op thread: these tensors are small, and on a busy 2-core machine two OpenMP threads made
    # the run ~10x slower (66 s vs 7 s) from spin-waiting; single-threaded results are also reproducible.
    torch.set_num_threads(1)
    t0 = time.time()
    os.makedirs(args.out, exist_ok=True)
    for n in names:
        generate(n, CONFIGS[n], os.path.join(args.out, n), not args.no_f32_proxy, args.debug)
    generate_adamw(os.path.join(args.out, "adamw"))
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump({"configs": names, "files": FILES + (DEBUG_FILES if args.debug else []),
                   "adamw": {"dir": "adamw", "files": ["config.json", "adamw.safetensors"]},
                   "generator": "tests/ref/make_fixtures.py", "torch_version": torch.__version__}, f, indent=1)
    print(f"wrote {len(names)} configs to {args.out} in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
