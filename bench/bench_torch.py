#!/usr/bin/python3
"""PyTorch side of the training-step benchmark: the reference DETR of tests/ref/detr_ref.py
(same model, matcher, loss, AdamW with two groups, clipping 0.1, dropout 0.1) trained on
fixed-size synthetic batches. Prints one JSON object like bench_train does.
Run with Debian's /usr/bin/python3 (python3-torch)."""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "ref"))
import detr_ref  # noqa: E402

PRESETS = {  # same shapes as trainer/config.c
    "tiny": dict(depth=18, hidden_dim=64, nheads=4, enc_layers=2, dec_layers=2, dim_feedforward=128,
                 num_queries=10, num_classes=8, dropout=0.0),  # tiny: no dropout (trainer/config.c)
    "r50": dict(depth=50, hidden_dim=256, nheads=8, enc_layers=6, dec_layers=6, dim_feedforward=2048,
                num_queries=100, num_classes=91),
}


def synthetic_batch(gen, batch, size, num_classes):
    images = torch.randn(batch, 3, size, size, generator=gen)
    mask = torch.zeros(batch, size, size, dtype=torch.bool)
    targets = []
    for _ in range(batch):
        n = int(torch.randint(1, 4, (1,), generator=gen))
        wh = 0.2 + 0.4 * torch.rand(n, 2, generator=gen)
        c = wh / 2 + (1 - wh) * torch.rand(n, 2, generator=gen)
        targets.append({"labels": torch.randint(0, num_classes, (n,), generator=gen),
                        "boxes": torch.cat([c, wh], 1)})
    return images, mask, targets


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    cfg = PRESETS[args.preset]
    model = detr_ref.DETR(**{"dropout": 0.1, **cfg})
    model.train()
    matcher = detr_ref.HungarianMatcher()
    weight_dict = detr_ref.build_weight_dict(cfg["dec_layers"])
    criterion = detr_ref.SetCriterion(cfg["num_classes"], matcher, weight_dict, eos_coef=0.1)
    optimizer = detr_ref.make_optimizer(model)
    gen = torch.Generator().manual_seed(2)
    total = 0.0
    for s in range(args.warmup + args.steps):
        images, mask, targets = synthetic_batch(gen, args.batch, args.size, cfg["num_classes"])
        t0 = time.perf_counter()
        detr_ref.train_step(model, criterion, optimizer, images, mask, targets, clip_max_norm=0.1)
        if s >= args.warmup:
            total += time.perf_counter() - t0
    print(json.dumps({"impl": "torch", "torch": torch.__version__, "preset": args.preset,
                      "batch": args.batch, "size": args.size, "steps": args.steps,
                      "threads": torch.get_num_threads(),
                      "images_per_s": round(args.steps * args.batch / total, 4),
                      "step_ms": round(1e3 * total / args.steps, 2)}))


if __name__ == "__main__":
    main()
