#!/usr/bin/python3
"""PyTorch side of the training-step benchmark: the reference DETR of tests/ref/detr_ref.py
(same model, matcher, loss, AdamW with two groups, clipping 0.1, dropout 0.1) trained on
fixed-size synthetic batches, on the CPU or a GPU. Prints one JSON object per batch size, as
bench_train does.

  --device cuda   the model, criterion and batches on GPU 0; cudnn.benchmark on; float32 math
                  is IEEE float32 (no TF32, as the C backend's default) unless --tf32
  --amp bf16|fp16 torch.autocast(device_type, dtype) around forward and loss; fp16 also uses a
                  GradScaler (defaults: init scale 65536, as detr-train --amp fp16)

Timing: each step runs from before the batch's copy to the device (the batch itself is drawn
before the clock starts) to after torch.cuda.synchronize() following the optimizer step. Peak
memory (GPU): torch.cuda.max_memory_allocated / max_memory_reserved over the timed steps (the
peaks are reset after the warm-up steps).

Runs with Debian's /usr/bin/python3 (torch 1.13, CPU) and with PyTorch 2.x on a GPU machine.
Without scipy (the reference's matcher calls scipy.optimize.linear_sum_assignment), an exact
assignment solver written here stands in (reported as "matcher": "builtin")."""
import argparse
import functools
import json
import math
import os
import sys
import time
import types

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "ref"))


def linear_sum_assignment(cost):
    """Minimum-cost assignment of a rectangular cost matrix (a 2-D numpy array, list of lists
    or tensor), with scipy's result convention: (row indices ascending, their columns). The
    Hungarian method with potentials over the smaller side (O(n^2 m)); exact. Ties may be broken
    differently from scipy's."""
    rows = [[float(x) for x in r] for r in (cost.tolist() if hasattr(cost, "tolist") else cost)]
    if not rows or not rows[0]:
        return [], []
    transposed = len(rows) > len(rows[0])
    a = [list(col) for col in zip(*rows)] if transposed else rows  # n x m, n <= m
    n, m = len(a), len(a[0])
    inf = math.inf
    u, v = [0.0] * (n + 1), [0.0] * (m + 1)
    p, way = [0] * (m + 1), [0] * (m + 1)  # p[j]: row (1-based) matched to column j
    for i in range(1, n + 1):
        p[0], j0 = i, 0
        minv, used = [inf] * (m + 1), [False] * (m + 1)
        while True:
            used[j0] = True
            i0, delta, j1 = p[j0], inf, 0
            for j in range(1, m + 1):
                if not used[j]:
                    cur = a[i0 - 1][j - 1] - u[i0] - v[j]
                    if cur < minv[j]:
                        minv[j], way[j] = cur, j0
                    if minv[j] < delta:
                        delta, j1 = minv[j], j
            if j1 == 0:
                raise ValueError("cost matrix is infeasible (NaN or infinite entries)")
            for j in range(m + 1):
                if used[j]:
                    u[p[j]] += delta
                    v[j] -= delta
                else:
                    minv[j] -= delta
            j0 = j1
            if p[j0] == 0:
                break
        while j0:
            j1 = way[j0]
            p[j0] = p[j1]
            j0 = j1
    pairs = [(p[j] - 1, j - 1) for j in range(1, m + 1) if p[j]]  # (row of a, column of a)
    if transposed:
        pairs = [(c, r) for r, c in pairs]
    pairs.sort()
    return [r for r, _ in pairs], [c for _, c in pairs]


def import_reference():
    """tests/ref/detr_ref.py, with the solver above standing in for scipy's when scipy is not
    installed (e.g. a GPU machine with only torch and torchvision). Returns (module, matcher)."""
    try:
        from scipy.optimize import linear_sum_assignment as scipy_solver
        matcher = "scipy" if callable(scipy_solver) else "?"
    except ImportError:
        scipy_mod, optimize = types.ModuleType("scipy"), types.ModuleType("scipy.optimize")
        optimize.linear_sum_assignment = linear_sum_assignment
        scipy_mod.optimize = optimize
        sys.modules["scipy"], sys.modules["scipy.optimize"] = scipy_mod, optimize
        matcher = "builtin"
    import detr_ref
    return detr_ref, matcher


def place_reference_on(detr_ref, device, force=False):
    """The reference creates a few tensors without a device (the sine encoding's arange, the
    class targets' full, the cardinality targets' as_tensor, the matcher's indices): on a GPU
    they must be made there. Its module-level name `torch` becomes a copy of the torch module
    whose factory functions default to `device`; every other op is torch's own, so nothing else
    changes (no global default device, no per-op dispatch cost). force: also on the CPU (tests)."""
    if device.type == "cpu" and not force:
        return
    proxy = types.ModuleType("torch")
    proxy.__dict__.update(torch.__dict__)
    proxy.__getattr__ = lambda name: getattr(torch, name)  # torch's lazily loaded attributes

    def on_device(fn):
        @functools.wraps(fn)
        def make(*args, **kwargs):
            kwargs.setdefault("device", device)
            return fn(*args, **kwargs)
        return make

    for name in ("arange", "full", "zeros", "ones", "empty", "as_tensor", "tensor"):
        setattr(proxy, name, on_device(getattr(torch, name)))
    detr_ref.torch = proxy


def float32_math(tf32):
    """Sets how float32 matrix products and convolutions run on a GPU: IEEE float32 (the C
    backend's default) or TF32 tensor cores (its DETR_TF32=1). PyTorch 2.9+ has per-backend
    fp32_precision settings and refuses a mix with the legacy allow_tf32 flags, so only one API
    is used. Returns a description for the report."""
    value = "tf32" if tf32 else "ieee"
    cuda_mm, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn

    def has(holder):  # torch 1.x's matmul object raises AssertionError for unknown names
        try:
            getattr(holder, "fp32_precision")
            return True
        except Exception:
            return False

    if has(cuda_mm):
        done, failed = [], []
        for name, holder in (("matmul", cuda_mm), ("cudnn", cudnn), ("cudnn.conv", getattr(cudnn, "conv", None)),
                             ("cudnn.rnn", getattr(cudnn, "rnn", None))):
            if holder is None or not has(holder):
                continue
            try:
                holder.fp32_precision = value
                done.append(name)
            except (RuntimeError, ValueError, AttributeError) as e:
                failed.append(f"{name}: {e}")
        return f"fp32_precision={value} ({', '.join(done)})" + (f"; not set: {'; '.join(failed)}" if failed else "")
    cuda_mm.allow_tf32 = bool(tf32)
    cudnn.allow_tf32 = bool(tf32)
    return f"allow_tf32={bool(tf32)}"


PRESETS = {  # same shapes as trainer/config.c
    "tiny": dict(depth=18, hidden_dim=64, nheads=4, enc_layers=2, dec_layers=2, dim_feedforward=128,
                 num_queries=10, num_classes=8, dropout=0.0),  # tiny: no dropout (trainer/config.c)
    "r50": dict(depth=50, hidden_dim=256, nheads=8, enc_layers=6, dec_layers=6, dim_feedforward=2048,
                num_queries=100, num_classes=91),
}


def synthetic_batch(gen, batch, height, width, num_classes):
    """Host tensors: images [B, 3, H, W], mask [B, H, W] (no padding), 1-3 boxes per image."""
    images = torch.randn(batch, 3, height, width, generator=gen)
    mask = torch.zeros(batch, height, width, dtype=torch.bool)
    targets = []
    for _ in range(batch):
        n = int(torch.randint(1, 4, (1,), generator=gen))
        wh = 0.2 + 0.4 * torch.rand(n, 2, generator=gen)
        c = wh / 2 + (1 - wh) * torch.rand(n, 2, generator=gen)
        targets.append({"labels": torch.randint(0, num_classes, (n,), generator=gen),
                        "boxes": torch.cat([c, wh], 1)})
    return images, mask, targets


def parse_size(text):
    parts = text.lower().split("x")
    if len(parts) == 1:
        parts = parts * 2
    h, w = (int(p) for p in parts)
    if not (32 <= h <= 8192 and 32 <= w <= 8192):
        raise ValueError
    return h, w


class Stepper:
    """One training step of the reference: detr_ref.train_step in float32; under autocast the
    same steps with forward and loss inside torch.autocast (and a GradScaler for fp16)."""

    def __init__(self, detr_ref, model, criterion, optimizer, device, amp):
        self.ref, self.model, self.criterion, self.optimizer = detr_ref, model, criterion, optimizer
        self.amp = amp
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
        self.device_type = device.type
        self.scaler = None
        if self.dtype is not None:
            detr_ref.layer_norm_in_float32(model, device.type)
        if amp == "fp16":
            if hasattr(torch, "amp") and hasattr(torch.amp, "GradScaler"):
                self.scaler = torch.amp.GradScaler(device.type, init_scale=65536.0)
            else:
                self.scaler = torch.cuda.amp.GradScaler(init_scale=65536.0)

    def step(self, images, mask, targets):
        """Returns 1 when GradScaler skipped the update (fp16 overflow), else 0."""
        autocast = (lambda: torch.autocast(device_type=self.device_type, dtype=self.dtype)) if self.dtype else None
        if self.scaler is None:  # float32, or bf16 (no loss scaling)
            self.ref.train_step(self.model, self.criterion, self.optimizer, images, mask, targets,
                                clip_max_norm=0.1, autocast=autocast)
            return 0
        with autocast():
            outputs = self.model(images, mask)
            loss_dict = self.criterion(outputs, targets)
            total = self.ref.weighted_total(loss_dict, self.criterion.weight_dict)
        self.optimizer.zero_grad()
        self.scaler.scale(total).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 0.1)
        before = self.scaler.get_scale()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return int(self.scaler.get_scale() < before)


def bench_batch(args, stepper, device, batch, height, width, num_classes, info):
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    gen = torch.Generator().manual_seed(2)
    times, skipped = [], 0
    for s in range(args.warmup + args.steps):
        if cuda and s == args.warmup:
            torch.cuda.reset_peak_memory_stats()
        images, mask, targets = synthetic_batch(gen, batch, height, width, num_classes)
        sync()
        t0 = time.perf_counter()
        images, mask = images.to(device), mask.to(device)
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        skip = stepper.step(images, mask, targets)
        sync()
        dt = time.perf_counter() - t0
        if s >= args.warmup:
            times.append(dt)
            skipped += skip
    total = sum(times)
    out = {"impl": "torch", "torch": torch.__version__, "preset": args.preset, "device": device.type,
           "amp": args.amp, "batch": batch,
           "size": height if height == width else f"{height}x{width}", "height": height, "width": width,
           "warmup": args.warmup, "steps": args.steps, "threads": torch.get_num_threads(),
           "images_per_s": round(args.steps * batch / total, 4),
           "step_ms": round(1e3 * total / args.steps, 2),
           "step_ms_min": round(1e3 * min(times), 2), "step_ms_max": round(1e3 * max(times), 2),
           "skipped_steps": skipped, **info}
    if cuda:
        out["peak_allocated_bytes"] = torch.cuda.max_memory_allocated()
        out["peak_reserved_bytes"] = torch.cuda.max_memory_reserved()
    print(json.dumps(out), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--batches", help="several batch sizes in turn, e.g. 2,4,8 (one JSON line each)")
    ap.add_argument("--size", default="128", help="N or HxW, e.g. 800x1066 (default 128)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--amp", default="off", choices=["off", "bf16", "fp16"])
    ap.add_argument("--tf32", action="store_true", help="GPU: allow TF32 in float32 products (C: DETR_TF32=1)")
    args = ap.parse_args()
    try:
        height, width = parse_size(args.size)
        batches = [int(b) for b in args.batches.split(",")] if args.batches else [args.batch]
        if min(batches) < 1 or args.steps < 1 or args.warmup < 0:
            raise ValueError
    except ValueError:
        ap.error("--size N|HxW (sides 32..8192), --batch(es) >= 1, --steps >= 1, --warmup >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda: torch.cuda.is_available() is False (no GPU, or a CPU-only torch)",
              file=sys.stderr)
        sys.exit(2)
    if args.device == "cpu" and args.amp == "fp16":
        print("error: --amp fp16 needs --device cuda (CPU autocast in torch 1.13 has bfloat16 only)",
              file=sys.stderr)
        sys.exit(2)
    torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    device = torch.device(args.device)
    detr_ref, matcher_impl = import_reference()
    place_reference_on(detr_ref, device)
    info = {"matcher": matcher_impl}
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        info.update(float32_math=float32_math(args.tf32), cudnn_benchmark=True,
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                    gpu=torch.cuda.get_device_name(0))
    cfg = PRESETS[args.preset]
    model = detr_ref.DETR(**{"dropout": 0.1, **cfg}).to(device)
    model.train()
    matcher = detr_ref.FloatCostMatcher()
    weight_dict = detr_ref.build_weight_dict(cfg["dec_layers"])
    criterion = detr_ref.SetCriterion(cfg["num_classes"], matcher, weight_dict, eos_coef=0.1).to(device)
    optimizer = detr_ref.make_optimizer(model)
    stepper = Stepper(detr_ref, model, criterion, optimizer, device, args.amp)
    for b in batches:
        bench_batch(args, stepper, device, b, height, width, cfg["num_classes"], info)


if __name__ == "__main__":
    main()
