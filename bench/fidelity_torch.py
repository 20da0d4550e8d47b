#!/usr/bin/python3
"""PyTorch side of the training-fidelity benchmark (bench/fidelity.py drives it).

Trains the reference DETR of tests/ref/detr_ref.py from a safetensors file of initial weights
(detr-train --save-init, reference parameter names; loaded with load_state_dict(strict=True)) on a
COCO-format dataset with the reference transforms of bench/bench_loader.py, the reference's
HungarianMatcher / SetCriterion (eos_coef 0.1, weights ce 1 / bbox 5 / giou 2, aux losses), AdamW with
a separate backbone learning rate and gradient clipping: engine.py's train_one_epoch, one process.

Writes, in --out:
  train.jsonl          one line per step with the fields detr-train writes (step, epoch, loss = the
                       weighted total, loss_ce / loss_bbox / loss_giou / class_error of the last
                       decoder layer, grad_norm before clipping, lr, step_s, data_wait_s), and one
                       {"eval": {"epoch", "step", "seconds", "stats": [12 COCOeval numbers]}} line per
                       evaluation (after every --eval-every epochs, and after the last step)
  detections-<step>.json  the COCO result file of each evaluation, scored by `detr-data eval`
  model.safetensors    the final weights (reference names)
  summary.json         totals: steps, wall time, time in training steps, model shape
With --first-batch DIR it also writes the first training batch (inputs.safetensors, targets.json in
detr-train's golden format), the losses of step 1 (step1.json) and the gradients of step 1 before
clipping (grads.safetensors, "grad.<name>"), so that detr-train's golden mode can redo that step.

Model shape: inferred from the weights as detr-train does (ResNet depth from the block count,
widths from tensor shapes; nheads from __metadata__ "nheads" or --nheads).
Run with Debian's /usr/bin/python3 (torch, scipy, PIL, torchvision)."""
import argparse
import contextlib
import json
import math
import os
import random
import subprocess
import sys
import time

import numpy as np

# The same OpenMP setting detr-train gives itself (trainer/runtime.c): libgomp's default spin-waiting
# makes torch's 2 threads up to 10x slower when other processes share the 2 cores. Read when torch
# loads libgomp, so it is set before the import.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "3000")
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "ref"))
sys.path.insert(0, HERE)
import detr_ref  # noqa: E402
import st_io  # noqa: E402
from bench_loader import CocoBoxes, collate, find_split, make_transform  # noqa: E402


def ints(s):
    return [int(x) for x in s.split(",")]


# ---------------------------------------------------------------------------------------------
# Weights

def count_layers(names, pattern):
    n = 0
    while pattern % n in names:
        n += 1
    return n


def infer_shape(tensors, metadata, path, nheads_override):
    """The DETR constructor arguments for a reference-named state dict (weights_infer_config)."""
    names = set(tensors)
    bottleneck = "backbone.0.body.layer1.0.conv3.weight" in names
    l3 = count_layers(names, "backbone.0.body.layer3.%d.conv1.weight")
    depth = {(True, 6): 50, (True, 23): 101, (False, 2): 18, (False, 6): 34}.get((bottleneck, l3))
    if depth is None:
        sys.exit(f"error: {path}: cannot tell the ResNet depth ({'bottleneck' if bottleneck else 'basic'} "
                 f"blocks, {l3} in layer3); is this a DETR file with backbone.0.body.* tensors?")
    for need in ("input_proj.weight", "query_embed.weight", "class_embed.weight",
                 "transformer.decoder.layers.0.linear1.weight"):
        if need not in names:
            sys.exit(f"error: {path}: tensor {need} is missing: cannot infer the model shape")
    hidden = int(tensors["input_proj.weight"].shape[0])
    nheads = nheads_override or int(metadata.get("nheads", 0)) or 8
    if hidden % nheads:
        sys.exit(f"error: {path}: hidden size {hidden} is not divisible by {nheads} heads; "
                 f"give --nheads N")
    return dict(depth=depth, dilation=metadata.get("dilation", "false") == "true", hidden_dim=hidden,
                nheads=nheads,
                enc_layers=count_layers(names, "transformer.encoder.layers.%d.linear1.weight"),
                dec_layers=count_layers(names, "transformer.decoder.layers.%d.linear1.weight"),
                dim_feedforward=int(tensors["transformer.decoder.layers.0.linear1.weight"].shape[0]),
                pre_norm="transformer.encoder.norm.weight" in names,
                num_queries=int(tensors["query_embed.weight"].shape[0]),
                num_classes=int(tensors["class_embed.weight"].shape[0]) - 1)


def load_exact(model, tensors, path):
    """load_state_dict(strict=True), after listing every name or shape mismatch in one message."""
    want = model.state_dict()
    missing = sorted(set(want) - set(tensors))
    extra = sorted(set(tensors) - set(want))
    shapes = [f"{k}: file {list(tensors[k].shape)} vs model {list(want[k].shape)}"
              for k in sorted(set(want) & set(tensors)) if tuple(tensors[k].shape) != tuple(want[k].shape)]
    if missing or extra or shapes:
        lines = [f"error: {path} does not match the reference model's state dict:"]
        for title, items in (("missing from the file", missing), ("not in the model", extra),
                             ("shape mismatch", shapes)):
            if items:
                lines.append(f"  {title} ({len(items)}): " + ", ".join(items[:20])
                             + (" ..." if len(items) > 20 else ""))
        sys.exit("\n".join(lines))
    model.load_state_dict({k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in tensors.items()},
                          strict=True)


# ---------------------------------------------------------------------------------------------
# Evaluation: the reference PostProcess, scored by detr-data eval

AMP = {"on": False}  # --amp bf16: forward and loss under torch.autocast("cpu", torch.bfloat16)


def amp_context():
    """torch.autocast for --amp bf16 (conv, linear, bmm in bfloat16, as detr-train --amp bf16's
    matrix products), else nothing."""
    return torch.autocast("cpu", dtype=torch.bfloat16) if AMP["on"] else contextlib.nullcontext()


@torch.no_grad()
def detections(model, loader):
    """PostProcess: softmax, best non-empty class per query, cxcywh -> xyxy scaled to the original
    image size; COCO results [x, y, w, h] with category_id = label."""
    model.eval()
    out = []
    for images, mask, targets in loader:
        with amp_context():
            res = model(images, mask)
        res = {k: v.float() if torch.is_tensor(v) else v for k, v in res.items()}
        prob = res["pred_logits"].softmax(-1)[..., :-1]
        scores, labels = prob.max(-1)
        boxes = detr_ref.box_cxcywh_to_xyxy(res["pred_boxes"])
        for b, t in enumerate(targets):
            h, w = (float(x) for x in t["orig_size"])
            xyxy = boxes[b] * torch.tensor([w, h, w, h])
            image_id = int(t["image_id"][0])
            for q in range(xyxy.shape[0]):
                x0, y0, x1, y1 = (float(v) for v in xyxy[q])
                out.append({"image_id": image_id, "category_id": int(labels[b, q]),
                            "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(scores[b, q])})
    model.train()
    return out


def coco_eval(detr_data, gt_path, dets, path):
    with open(path + ".tmp", "w") as f:
        json.dump(dets, f)
    os.replace(path + ".tmp", path)
    p = subprocess.run([detr_data, "eval", gt_path, path, "--json"], capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"error: {detr_data} eval {gt_path} {path} failed (exit {p.returncode}): {p.stderr.strip()}")
    return json.loads(p.stdout)["stats"]


# ---------------------------------------------------------------------------------------------
# The first batch, in detr-train's golden format

def save_first_batch(folder, images, mask, targets, loss_dict, total, model):
    os.makedirs(folder, exist_ok=True)
    st_io.write_safetensors(os.path.join(folder, "inputs.safetensors"),
                            {"images": images.numpy().astype(np.float32),
                             "mask": mask.numpy().astype(np.uint8)})
    with open(os.path.join(folder, "targets.json"), "w") as f:
        json.dump([{"labels": t["labels"].tolist(), "boxes": t["boxes"].tolist()} for t in targets], f)
    losses = {k: float(v) for k, v in loss_dict.items()}
    losses["loss"] = float(total)
    grads = {"grad." + n: p.grad.detach().numpy().copy() for n, p in model.named_parameters()
             if p.requires_grad and p.grad is not None}
    losses["grad_norm"] = math.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads.values()))
    st_io.write_safetensors(os.path.join(folder, "grads.safetensors"), grads)
    with open(os.path.join(folder, "step1.json"), "w") as f:
        json.dump(losses, f, indent=1)


# ---------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="folder with annotations/instances_{train,val}*.json")
    ap.add_argument("--init", required=True, help="initial weights (detr-train --save-init)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--detr-data", default="build/detr-data", help="the evaluator (detr-data eval)")
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--lr-backbone", type=float, default=1e-5)
    ap.add_argument("--weight-decay", type=float, default=1e-4)
    ap.add_argument("--clip", type=float, default=0.1)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--no-aux-loss", action="store_true")
    ap.add_argument("--nheads", type=int, default=0, help="attention heads (default: from the weights)")
    ap.add_argument("--scales", type=ints, default=list(range(480, 801, 32)))
    ap.add_argument("--max-size", type=int, default=1333)
    ap.add_argument("--resize-choices", type=ints, default=[400, 500, 600])
    ap.add_argument("--crop", type=ints, default=[384, 600])
    ap.add_argument("--val-size", type=int, default=800)
    ap.add_argument("--eval-every", type=int, default=1, help="epochs between evaluations (0 = only at the end)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--first-batch", help="folder for the first batch, its losses and gradients")
    ap.add_argument("--amp", choices=["off", "bf16"], default="off",
                    help="bf16: forward and loss under torch.autocast (CPU autocast has no fp16 in torch 1.13)")
    args = ap.parse_args()
    if len(args.crop) != 2:
        sys.exit("error: --crop takes MIN,MAX")

    t_start = time.perf_counter()
    torch.set_num_threads(args.threads)
    random.seed(args.seed)           # the transforms draw from Python's random, as the reference's do
    torch.manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)

    tensors, metadata = st_io.read_safetensors(args.init, with_metadata=True)
    shape = infer_shape(tensors, metadata, args.init, args.nheads)
    model = detr_ref.DETR(dropout=args.dropout, aux_loss=not args.no_aux_loss, **shape)
    load_exact(model, tensors, args.init)
    model.train()
    weight_dict = detr_ref.build_weight_dict(shape["dec_layers"], aux_loss=not args.no_aux_loss)
    AMP["on"] = args.amp == "bf16"
    matcher = detr_ref.FloatCostMatcher() if AMP["on"] else detr_ref.HungarianMatcher()
    criterion = detr_ref.SetCriterion(shape["num_classes"], matcher, weight_dict, eos_coef=0.1)
    if AMP["on"]:
        detr_ref.layer_norm_in_float32(model, "cpu")
    optimizer = detr_ref.make_optimizer(model, lr=args.lr, lr_backbone=args.lr_backbone,
                                        weight_decay=args.weight_decay)

    train_ann, train_dir = find_split(args.data, "train")
    val_ann, val_dir = find_split(args.data, "val")
    tf_args = (args.scales, args.max_size, args.resize_choices, args.crop[0], args.crop[1], args.val_size)
    train_ds = CocoBoxes(train_ann, train_dir, make_transform("train", *tf_args))
    val_ds = CocoBoxes(val_ann, val_dir, make_transform("val", *tf_args))
    # num_workers=0: decoding 8 small JPEGs is ~1% of a step, and workers would compete with the
    # two compute threads on a 2-core machine
    gen = torch.Generator().manual_seed(args.seed)
    train_loader = DataLoader(train_ds, batch_size=args.batch, shuffle=True, drop_last=True,
                              num_workers=0, collate_fn=collate, generator=gen)
    val_loader = DataLoader(val_ds, batch_size=args.batch, shuffle=False, num_workers=0, collate_fn=collate)
    per_epoch = len(train_loader)
    if per_epoch == 0:
        sys.exit(f"error: {train_ann}: fewer images ({len(train_ds)}) than one batch ({args.batch})")

    log = open(os.path.join(args.out, "train.jsonl"), "w")
    step, epoch, t_train, t_eval, last_eval = 0, 0, 0.0, 0.0, -1

    def evaluate():
        nonlocal t_eval, last_eval
        t0 = time.perf_counter()
        dets = detections(model, val_loader)
        stats = coco_eval(args.detr_data, val_ann, dets,
                          os.path.join(args.out, f"detections-{step:06d}.json"))
        dt = time.perf_counter() - t0
        t_eval += dt
        last_eval = step
        log.write(json.dumps({"eval": {"epoch": epoch, "step": step, "images": len(val_ds),
                                       "seconds": round(dt, 3), "stats": stats}}) + "\n")
        log.flush()
        print(f"eval after epoch {epoch} (step {step}): AP {stats[0]:.4f}  AP50 {stats[1]:.4f}", flush=True)

    while step < args.steps:
        it = iter(train_loader)
        for k in range(per_epoch):
            if step >= args.steps:
                break
            t0 = time.perf_counter()
            images, mask, targets = next(it)
            t1 = time.perf_counter()
            hook = None
            if step == 0 and args.first_batch:
                def hook(outputs, loss_dict, total):  # gradients before clipping
                    save_first_batch(args.first_batch, images, mask, targets, loss_dict, total, model)
            loss_dict, total, gnorm = detr_ref.train_step(model, criterion, optimizer, images, mask, targets,
                                                          clip_max_norm=args.clip, after_backward=hook,
                                                          autocast=amp_context if AMP["on"] else None)
            t2 = time.perf_counter()
            step += 1
            t_train += t2 - t1
            loss = float(total)
            if not math.isfinite(loss):
                sys.exit(f"error: step {step}: the loss is {loss}; stopping")
            rec = {"step": step, "epoch": epoch, "loss": round(loss, 6),
                   "loss_ce": round(float(loss_dict["loss_ce"]), 6),
                   "loss_bbox": round(float(loss_dict["loss_bbox"]), 6),
                   "loss_giou": round(float(loss_dict["loss_giou"]), 6),
                   "class_error": round(float(loss_dict["class_error"]), 3),
                   "grad_norm": round(float(gnorm), 6) if gnorm is not None else None,
                   "lr": args.lr, "images": int(images.shape[0]), "step_s": round(t2 - t1, 4),
                   "data_wait_s": round(t1 - t0, 4), "batch_hw": [int(images.shape[2]), int(images.shape[3])]}
            log.write(json.dumps(rec) + "\n")
            if step % args.log_every == 0 or step == 1:
                log.flush()
                print(f"epoch {epoch} step {step:5d}/{args.steps}  loss {loss:.4f}  "
                      f"ce {rec['loss_ce']:.3f}  l1 {rec['loss_bbox']:.3f}  giou {rec['loss_giou']:.3f}  "
                      f"{step * args.batch / t_train:.1f} img/s", flush=True)
        else:  # the epoch is complete
            if args.eval_every > 0 and (epoch + 1) % args.eval_every == 0:
                evaluate()
            epoch += 1
            continue
        break
    if last_eval != step:
        evaluate()
    log.close()
    st_io.write_safetensors(os.path.join(args.out, "model.safetensors"),
                            {k: v.detach().numpy() for k, v in model.state_dict().items()},
                            metadata={"nheads": str(shape["nheads"])})
    wall = time.perf_counter() - t_start
    summary = {"steps": step, "epochs_started": epoch + (step % per_epoch != 0), "wall_s": round(wall, 3),
               "train_s": round(t_train, 3), "eval_s": round(t_eval, 3),
               "images_per_s": round(step * args.batch / t_train, 3) if t_train else 0.0,
               "torch": torch.__version__, "threads": torch.get_num_threads(), "shape": shape}
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(f"trained {step} steps in {wall:.1f} s ({summary['images_per_s']:.2f} images/s in steps)")


if __name__ == "__main__":
    main()
