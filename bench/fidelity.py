#!/usr/bin/python3
"""Training fidelity: the C trainer (detr-train) beside the PyTorch reference (bench/fidelity_torch.py),
both trained from the same initial weights with the same settings, over a few seeds.

    /usr/bin/python3 bench/fidelity.py [--steps N] [--seeds 1,2] [--out DIR] [--doc docs/fidelity.md]

For each seed: (1) detr-train --save-init INIT --seed S (timed); (2) the reference from INIT for the
same steps (timed), evaluated on the val split at the same steps (every epoch and at the end) through
`detr-data eval`, the evaluator the C side uses. For the first seed, the reference's first batch is
also fed to detr-train's golden mode: from identical weights and an identical batch the two must
agree to float32 rounding, which separates implementation errors from the sampling noise below.

Data order, augmentation draws and float rounding differ between the implementations, so agreement
is statistical: the per-step losses are averaged over windows of WINDOW steps; per window the mean
over seeds of each implementation is compared with the seed spread (max - min over seeds) of each:

    agree  <=>  |mean_C - mean_T| <= max(spread_C, spread_T) + 2 * sqrt(se_C^2 + se_T^2)

se is the standard error of an implementation's seed-averaged window mean due to batch-to-batch
noise: sigma / sqrt(steps_in_window * seeds), sigma estimated from successive differences of the
per-step losses (sigma^2 = mean((x[t] - x[t-1])^2) / 2, insensitive to the loss's downward trend).
With two or three seeds the range alone can be near zero by chance; the allowance is the 95% band
of the difference of two window means that batch sampling alone produces. It does not absorb a
systematic difference: that shows up as a drift in every window, which this also reports (the mean
signed difference and the fraction of windows where C is above).

Writes DOC (markdown with inline SVG charts) and DOC with .json (curves for the HTML report), both
atomically, and keeps every run's files under OUT."""
import argparse
import datetime
import json
import math
import os
import platform
import shlex
import re
import shutil
import sqlite3
import subprocess
import sys
import time

# ------------------------------------------------------------------------------------------------
# Configuration: the `make run` default. Change it here; both implementations follow.

BUILD = "build"
DATASET = {  # detr-data synth options
    "images": 2048, "val": 128, "size": "64x64", "classes": 3, "min-objects": 1, "max-objects": 1,
    "seed": 42, "class-hues": True, "object-size": "0.25,0.6",
}
MODEL = {  # detr-train model options; the reference infers the shape from the --save-init weights
    "preset": "tiny", "num-classes": 4, "queries": 10, "dropout": 0,
}
TRAIN = {  # options both detr-train and bench/fidelity_torch.py take, under the same names
    "batch": 8, "lr": 1e-4, "lr-backbone": 1e-4, "weight-decay": 1e-4, "clip": 0.1,
    "scales": "64", "max-size": 64, "resize-choices": "64,64,64", "crop": "64,64", "val-size": 64,
    "threads": 2, "eval-every": 1,
}
STEPS = 1500          # training steps per run
SEEDS = [1, 2]        # one C run and one reference run per seed
WINDOW = 50           # steps per smoothing window
# ------------------------------------------------------------------------------------------------

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
TORCH_SCRIPT = os.path.join("bench", "fidelity_torch.py")
METRICS = ["loss", "loss_ce", "loss_bbox", "loss_giou", "class_error", "grad_norm"]
STAT_NAMES = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]


def opts(d):
    out = []
    for k, v in d.items():
        if v is True:
            out.append(f"--{k}")
        elif v is not False and v is not None:
            out += [f"--{k}", str(v)]
    return out


def run(cmd, log_path, env=None):
    """Runs cmd with stdout+stderr to log_path; returns wall seconds; exits with the log's tail on failure."""
    print("+ " + shlex.join(cmd), flush=True)
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        p = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        with open(log_path) as f:
            tail = f.read()[-3000:]
        sys.exit(f"error: exit {p.returncode} from: {shlex.join(cmd)}\n--- {log_path} (tail) ---\n{tail}")
    return wall


def read_jsonl(path):
    steps, evals = [], []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                sys.exit(f"error: {path}:{n}: not JSON ({e})")
            if "eval" in rec:
                evals.append(rec["eval"])
            elif "step" in rec:
                steps.append(rec)
    steps.sort(key=lambda r: r["step"])
    return steps, evals


def coco_eval(gt, dets):
    p = subprocess.run([os.path.join(BUILD, "detr-data"), "eval", gt, dets, "--json"], cwd=ROOT,
                       capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"error: detr-data eval {gt} {dets}: exit {p.returncode}: {p.stderr.strip()}")
    return json.loads(p.stdout)["stats"]


def machine():
    model, cpus = platform.processor() or "unknown", os.cpu_count()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            k, _, v = line.partition(":")
            if k.strip() == "Model name":
                model = v.strip()
            elif k.strip() == "CPU(s)":
                cpus = int(v.strip())
    except OSError:
        pass
    return {"cpu": model, "cpus": cpus, "host": platform.node(), "kernel": platform.release()}


def loadavg():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# ------------------------------------------------------------------------------------------------
# Running

def make_dataset(out):
    ds = os.path.join(out, "dataset")
    cmd = [os.path.join(BUILD, "detr-data"), "synth", ds] + opts(DATASET)
    stamp = os.path.join(out, "dataset.cmd")
    if os.path.isdir(ds) and os.path.exists(stamp) and open(stamp).read() == shlex.join(cmd):
        return ds, cmd
    shutil.rmtree(ds, ignore_errors=True)
    run(cmd, os.path.join(out, "dataset.log"))
    with open(stamp, "w") as f:
        f.write(shlex.join(cmd))
    return ds, cmd


def run_c(ds, sdir, seed, steps, per_epoch, db):
    cdir = os.path.join(sdir, "c")
    shutil.rmtree(cdir, ignore_errors=True)
    init = os.path.join(sdir, "init.safetensors")
    epochs = -(-steps // per_epoch)
    cmd = ([os.path.join(BUILD, "detr-train"), "--data", ds] + opts(MODEL) + opts(TRAIN)
           + ["--steps", str(steps), "--epochs", str(epochs), "--seed", str(seed), "--save-init", init,
              "--out", cdir, "--log-every", "100", "--keep-last", "1", "--profile", "--db", db])
    wall = run(cmd, os.path.join(sdir, "c.log"))
    with open(os.path.join(sdir, "c.log")) as f:
        m = re.search(r"^profile: .* \(run (\d+),", f.read(), re.M)
    run_id = int(m.group(1)) if m else None
    for name in os.listdir(cdir):  # resumable checkpoints (weights + AdamW state): not needed here
        if name.startswith("checkpoint-") and name.endswith(".safetensors"):
            os.remove(os.path.join(cdir, name))
    steps_log, evals = read_jsonl(os.path.join(cdir, "train.jsonl"))
    cmds = [cmd]
    final_eval_s = 0.0
    if not evals or evals[-1]["step"] != steps_log[-1]["step"]:
        # --steps ended inside an epoch, where detr-train does not evaluate: evaluate the final
        # weights with its --eval-only and score its detections with the same detr-data eval
        edir = os.path.join(sdir, "c-final-eval")
        ecmd = ([os.path.join(BUILD, "detr-train"), "--eval-only", "--weights", os.path.join(cdir, "model.safetensors"),
                 "--data", ds, "--out", edir] + opts({k: TRAIN[k] for k in ("batch", "val-size", "max-size", "threads", "amp")
                                                     if k in TRAIN}))
        final_eval_s = run(ecmd, os.path.join(sdir, "c-final-eval.log"))
        stats = coco_eval(os.path.join(ds, "annotations", "instances_val.json"),
                          os.path.join(edir, "detections.json"))
        evals.append({"epoch": steps_log[-1]["epoch"], "step": steps_log[-1]["step"], "stats": stats,
                      "seconds": round(final_eval_s, 3), "after_run": True})
        cmds.append(ecmd)
    return {"steps": steps_log, "evals": evals, "wall_s": wall, "final_eval_wall_s": final_eval_s, "run_id": run_id,
            "train_s": sum(r["step_s"] for r in steps_log),
            "eval_s": sum(e.get("seconds", 0.0) for e in evals), "init": init, "commands": cmds}


def run_torch(ds, sdir, seed, steps, first_batch):
    tdir = os.path.join(sdir, "torch")
    shutil.rmtree(tdir, ignore_errors=True)
    cmd = (["/usr/bin/python3", TORCH_SCRIPT, "--data", ds, "--init", os.path.join(sdir, "init.safetensors"),
            "--out", tdir, "--detr-data", os.path.join(BUILD, "detr-data"), "--steps", str(steps),
            "--seed", str(seed), "--dropout", str(MODEL.get("dropout", 0.1))]
           + (["--no-aux-loss"] if MODEL.get("no-aux-loss") else []) + opts(TRAIN)
           + (["--first-batch", first_batch] if first_batch else []))
    wall = run(cmd, os.path.join(sdir, "torch.log"))
    steps_log, evals = read_jsonl(os.path.join(tdir, "train.jsonl"))
    with open(os.path.join(tdir, "summary.json")) as f:
        summary = json.load(f)
    # cross-check of the reference's PostProcess: its final weights evaluated by detr-train
    edir = os.path.join(sdir, "torch-weights-c-eval")
    ecmd = ([os.path.join(BUILD, "detr-train"), "--eval-only", "--weights", os.path.join(tdir, "model.safetensors"),
             "--data", ds, "--out", edir] + opts({k: TRAIN[k] for k in ("batch", "val-size", "max-size", "threads", "amp")
                                                     if k in TRAIN}))
    run(ecmd, os.path.join(sdir, "torch-weights-c-eval.log"))
    cross = coco_eval(os.path.join(ds, "annotations", "instances_val.json"), os.path.join(edir, "detections.json"))
    return {"steps": steps_log, "evals": evals, "wall_s": wall, "train_s": summary["train_s"],
            "eval_s": summary["eval_s"], "summary": summary, "cross_eval_stats": cross, "commands": [cmd, ecmd]}


def import_torch_run(db, r, seed, cmd):
    """Adds the reference's run to the profile database of the C runs (schema: docs/profile-schema.md):
    a DETR_RUNS row labelled in its config, its per-step losses (final decoder layer, as its log has
    them), grad norm, lr and step time in DETR_STEPS, and its evaluations in DETR_EVAL, so that
    `detr-prof report` overlays both implementations. Returns the new run id."""
    con = sqlite3.connect(db)
    try:
        version = con.execute("PRAGMA user_version").fetchone()[0]
        start = int(time.time() * 1e9)
        cfg = json.dumps({"label": f"PyTorch reference seed {seed}", "implementation": "tests/ref/detr_ref.py",
                          "model": MODEL, "train": TRAIN})
        cur = con.execute("INSERT INTO DETR_RUNS (start_ns, end_ns, status, exit_code, level, device, command_line, "
                          "hostname, config_json, schema_version) VALUES (?, ?, 'ok', 0, 'basic', 'cpu', ?, ?, ?, ?)",
                          (start, start, " ".join(shlex.quote(c) for c in cmd), platform.node(), cfg, version))
        run_id = cur.lastrowid
        t = start
        for rec in r["steps"]:
            wall = int(rec.get("step_s", 0) * 1e9)
            losses = {k: rec[k] for k in ("loss_ce", "loss_bbox", "loss_giou", "class_error") if k in rec}
            con.execute("INSERT INTO DETR_STEPS (run_id, step, epoch, start_ns, end_ns, wall_ns, data_wait_ns, "
                        "images, loss, lr, grad_norm, images_per_s, losses_json) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                        (run_id, rec["step"], rec.get("epoch"), t, t + wall, wall,
                         int(rec.get("data_wait_s", 0) * 1e9), rec.get("images"), rec.get("loss"), rec.get("lr"),
                         rec.get("grad_norm"), rec["images"] / (wall * 1e-9) if wall > 0 and rec.get("images") else None,
                         json.dumps(losses)))
            t += wall
        for e in r["evals"]:
            st = e["stats"]
            con.execute("INSERT INTO DETR_EVAL (run_id, epoch, step, timestamp_ns, ap, ap50, ap75, ap_small, ap_medium, "
                        "ap_large, ar1, ar10, ar100, ar_small, ar_medium, ar_large) VALUES "
                        "(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", (run_id, e.get("epoch"), e.get("step"), t, *st[:12]))
        con.execute("UPDATE DETR_RUNS SET end_ns = ? WHERE run_id = ?", (t, run_id))
        con.commit()
    finally:
        con.close()
    return run_id


def label_c_run(db, run_id, seed):
    """Names a detr-train run in the report ("label" in its config; presentation only)."""
    con = sqlite3.connect(db)
    try:
        con.execute("UPDATE DETR_RUNS SET config_json = json_set(coalesce(config_json, '{}'), '$.label', ?) "
                    "WHERE run_id = ?", (f"detr-train seed {seed}", run_id))
        con.commit()
    finally:
        con.close()


def make_report(db, run_ids, out):
    """detr-prof report of every run, C and PyTorch overlaid; returns the HTML path or None."""
    html = os.path.join(out, "report.html")
    cmd = [os.path.join(BUILD, "detr-prof"), "report", db, "-o", html]
    for rid in run_ids:
        cmd += ["--run", str(rid)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        print(f"warning: {' '.join(cmd)} failed: {p.stderr.strip()}", flush=True)
        return None, cmd
    return html, cmd


def identical_batch_check(sdir, first):
    """detr-train's golden mode on the reference's first batch, from the same initial weights."""
    out = os.path.join(first, "c-golden.safetensors")
    cmd = ([os.path.join(BUILD, "detr-train"), "--weights", os.path.join(sdir, "init.safetensors"),
            "--inputs", os.path.join(first, "inputs.safetensors"), "--targets", os.path.join(first, "targets.json"),
            "--dump-grads", out] + opts(MODEL) + opts({k: TRAIN[k] for k in ("lr", "lr-backbone", "weight-decay",
                                                                             "clip", "threads", "amp")
                                                       if k in TRAIN}))
    run(cmd, os.path.join(first, "c-golden.log"))
    sys.path.insert(0, os.path.join(ROOT, "tests", "ref"))
    import numpy as np
    import st_io
    c = st_io.read_safetensors(os.path.join(ROOT, out))
    t = st_io.read_safetensors(os.path.join(ROOT, first, "grads.safetensors"))
    with open(os.path.join(ROOT, first, "step1.json")) as f:
        ref = json.load(f)
    losses = [{"name": k, "c": float(c[k]), "torch": ref[k], "abs_diff": abs(float(c[k]) - ref[k])}
              for k in sorted(ref) if k in c and k != "grad_norm"]
    gnames = sorted(k for k in c if k.startswith("grad."))
    missing = sorted(set(gnames) ^ set(t))
    common = [k for k in gnames if k in t]
    dot = sum(float((c[k].astype(np.float64) * t[k]).sum()) for k in common)
    nc = math.sqrt(sum(float((c[k].astype(np.float64) ** 2).sum()) for k in common))
    nt = math.sqrt(sum(float((t[k].astype(np.float64) ** 2).sum()) for k in common))
    worst, worst_rel = None, 0.0
    for k in common:
        scale = float(np.abs(t[k]).max())
        rel = float(np.abs(c[k] - t[k]).max()) / scale if scale > 0 else 0.0
        if rel >= worst_rel:
            worst, worst_rel = k, rel
    os.remove(os.path.join(ROOT, out))               # model-sized; the check's numbers are kept below
    os.remove(os.path.join(ROOT, first, "grads.safetensors"))
    return {"losses": losses, "max_loss_rel_diff": max(d["abs_diff"] / max(abs(d["torch"]), 1e-12) for d in losses),
            "grad_norm_c": nc, "grad_norm_torch": nt, "grad_cosine": dot / (nc * nt) if nc and nt else float("nan"),
            "grad_tensors": len(common), "grad_name_mismatch": missing,
            "worst_grad_tensor": worst, "worst_grad_rel_err": worst_rel, "command": cmd}


# ------------------------------------------------------------------------------------------------
# Analysis

def mssd_sigma2(xs):
    if len(xs) < 2:
        return 0.0
    return sum((b - a) ** 2 for a, b in zip(xs, xs[1:])) / (2 * (len(xs) - 1))


def windows(runs, metric, steps):
    """runs: {impl: [steps lists per seed]} -> list of window dicts."""
    out = []
    for lo in range(1, steps + 1, WINDOW):
        hi = min(lo + WINDOW - 1, steps)
        row = {"lo": lo, "hi": hi}
        for impl, seeds in runs.items():
            means, sig2 = [], []
            for s in seeds:
                xs = [r[metric] for r in s if lo <= r["step"] <= hi and r.get(metric) is not None]
                if not xs:
                    continue
                means.append(sum(xs) / len(xs))
                sig2.append(mssd_sigma2(xs))
            n = hi - lo + 1
            row[impl] = {"mean": sum(means) / len(means) if means else float("nan"),
                         "spread": max(means) - min(means) if means else float("nan"),
                         "seeds": means,
                         "se": math.sqrt(sum(sig2) / len(sig2) / (n * len(means))) if means else float("nan")}
        c, t = row["c"], row["torch"]
        row["diff"] = c["mean"] - t["mean"]
        row["allowance"] = 2 * math.sqrt(c["se"] ** 2 + t["se"] ** 2)
        row["bound"] = max(c["spread"], t["spread"]) + row["allowance"]
        row["agree"] = abs(row["diff"]) <= row["bound"]
        out.append(row)
    return out


# ------------------------------------------------------------------------------------------------
# SVG chart (plain polylines; no libraries)

def nice_ticks(lo, hi, n=6):
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step) * step
    ticks, v = [], first
    while v <= hi + step * 1e-9:
        ticks.append(round(v, 10))
        v += step
    if ticks[-1] < hi:
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def fmt_tick(v):
    return f"{v:g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.1e}"


def svg_chart(title, xlabel, ylabel, series, width=760, height=380, y_from_zero=False):
    """series: dicts with name, color, points [(x, y)], optional band [(x, lo, hi)], width, dash, markers."""
    ml, mr, mt, mb = 64, 180, 34, 48
    pw, ph = width - ml - mr, height - mt - mb
    xs = [p[0] for s in series for p in s["points"]] + [b[0] for s in series for b in s.get("band", [])]
    ys = ([p[1] for s in series for p in s["points"]] + [b[1] for s in series for b in s.get("band", [])]
          + [b[2] for s in series for b in s.get("band", [])])
    xt = nice_ticks(min(xs + [0]), max(xs))
    yt = nice_ticks(min(ys + [0]) if y_from_zero else min(ys), max(ys))
    x0, x1, y0, y1 = xt[0], xt[-1], yt[0], yt[-1]

    def X(x):
        return ml + (x - x0) / (x1 - x0) * pw

    def Y(y):
        return mt + ph - (y - y0) / (y1 - y0) * ph

    e = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
         f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
         f'<rect x="0" y="0" width="{width}" height="{height}" fill="white"/>',
         f'<text x="{ml + pw / 2:.1f}" y="20" text-anchor="middle" font-size="14" font-weight="bold">{title}</text>']
    for v in xt:
        e.append(f'<line x1="{X(v):.1f}" y1="{mt}" x2="{X(v):.1f}" y2="{mt + ph}" stroke="#e5e5e5"/>')
        e.append(f'<text x="{X(v):.1f}" y="{mt + ph + 16}" text-anchor="middle">{fmt_tick(v)}</text>')
    for v in yt:
        e.append(f'<line x1="{ml}" y1="{Y(v):.1f}" x2="{ml + pw}" y2="{Y(v):.1f}" stroke="#e5e5e5"/>')
        e.append(f'<text x="{ml - 6}" y="{Y(v) + 4:.1f}" text-anchor="end">{fmt_tick(v)}</text>')
    e.append(f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>')
    e.append(f'<text x="{ml + pw / 2:.1f}" y="{height - 10}" text-anchor="middle">{xlabel}</text>')
    e.append(f'<text x="16" y="{mt + ph / 2:.1f}" text-anchor="middle" '
             f'transform="rotate(-90 16 {mt + ph / 2:.1f})">{ylabel}</text>')
    for s in series:
        band = s.get("band")
        if band:
            pts = [f"{X(x):.1f},{Y(hi):.1f}" for x, lo, hi in band]
            pts += [f"{X(x):.1f},{Y(lo):.1f}" for x, lo, hi in reversed(band)]
            e.append(f'<polygon points="{" ".join(pts)}" fill="{s["color"]}" fill-opacity="0.18" stroke="none"/>')
    for s in series:
        pts = " ".join(f"{X(x):.1f},{Y(y):.1f}" for x, y in s["points"])
        dash = f' stroke-dasharray="{s["dash"]}"' if s.get("dash") else ""
        e.append(f'<polyline points="{pts}" fill="none" stroke="{s["color"]}" stroke-width="{s.get("width", 2)}"'
                 f'{dash} stroke-linejoin="round"/>')
        if s.get("markers"):
            for x, y in s["points"]:
                e.append(f'<circle cx="{X(x):.1f}" cy="{Y(y):.1f}" r="3" fill="{s["color"]}"/>')
    ly = mt + 8
    for s in series:
        dash = f' stroke-dasharray="{s["dash"]}"' if s.get("dash") else ""
        e.append(f'<line x1="{ml + pw + 12}" y1="{ly}" x2="{ml + pw + 36}" y2="{ly}" stroke="{s["color"]}" '
                 f'stroke-width="{s.get("width", 2)}"{dash}/>')
        e.append(f'<text x="{ml + pw + 42}" y="{ly + 4}">{s["name"]}</text>')
        ly += 18
    if any(s.get("band") for s in series):
        e.append(f'<text x="{ml + pw + 12}" y="{ly + 6}" font-size="11" fill="#555">shaded: seed range</text>')
    e.append("</svg>")
    return "\n".join(e)


# ------------------------------------------------------------------------------------------------
# Report

COLORS = {"c": "#d62728", "torch": "#1f77b4"}
LABEL = {"c": "C (detr-train)", "torch": "PyTorch reference"}


def write_atomic(path, text):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def report(res, doc_path):
    seeds, steps, cfg = res["seeds"], res["steps"], res["config"]
    win = res["windows"]["loss"]
    agree = sum(w["agree"] for w in win)
    lines = ["# Training fidelity: detr-train vs the PyTorch reference", "",
             f"Generated by `bench/fidelity.py` on {res['date']} "
             f"(machine: {res['machine']['cpu']}, {res['machine']['cpus']} CPUs; load average "
             f"{res['load_before']} before, {res['load_after']} after"
             + ("; shared with other work, so timings are noisy" if (res["load_before"] or [0])[0] > 1.0 else "")
             + f"). Data: `docs/{os.path.basename(res['json_path'])}`.", ""]
    amp = cfg["train"].get("amp")
    if amp:
        lines += [f"**Precision: {amp} on both sides.** detr-train `--amp {amp}` (convolutions and matrix "
                  "products with bf16 operands and float32 accumulation, emulated on the CPU: "
                  "docs/mixed-precision.md) against the reference under PyTorch's CPU autocast "
                  "(`torch.autocast(\"cpu\", dtype=torch.bfloat16)` around forward and loss: conv, linear and "
                  "bmm in bfloat16, the attention's bmm included, which detr-train keeps in float32). So the "
                  "identical-batch check below measures two bf16 implementations, not float32 rounding.", ""]
    # summary
    lines += ["## Summary", ""]
    lines.append(f"- **Loss curves: {agree} of {len(win)} windows of {WINDOW} steps agree** "
                 f"(|mean_C - mean_T| <= max(seed range C, seed range T) + 2 x batch-noise standard error; "
                 f"seeds {', '.join(map(str, seeds))}, {steps} steps each).")
    for m in METRICS[1:]:
        w = res["windows"][m]
        if w:
            lines.append(f"  - {m}: {sum(x['agree'] for x in w)} of {len(w)} windows agree; "
                         f"C above in {sum(x['diff'] > 0 for x in w)} of {len(w)}.")
    d = [w["diff"] for w in win]
    lines.append(f"- Total loss, mean signed difference C - PyTorch over the windows: {sum(d) / len(d):+.4f} "
                 f"(C above in {sum(x > 0 for x in d)} of {len(d)} windows).")
    ib = res.get("identical_batch")
    if ib:
        lines.append(f"- Identical weights and batch (step 1): largest relative loss difference "
                     f"{ib['max_loss_rel_diff']:.1e}; gradient cosine {ib['grad_cosine']:.9f}, norms "
                     f"{ib['grad_norm_c']:.4f} (C) vs {ib['grad_norm_torch']:.4f} (PyTorch).")
    for s in seeds:
        c, t = res["runs"]["c"][str(s)], res["runs"]["torch"][str(s)]
        lines.append(f"- Seed {s}: final AP {c['final']['stats'][0]:.3f} / AP50 {c['final']['stats'][1]:.3f} (C) vs "
                     f"AP {t['final']['stats'][0]:.3f} / AP50 {t['final']['stats'][1]:.3f} (PyTorch) after {steps} steps.")
    sp = res["speed"]
    lines.append(f"- Speed: C {sp['c_images_per_s']:.1f} images/s in training steps vs PyTorch "
                 f"{sp['torch_images_per_s']:.1f} (C {sp['ratio_steps']:.2f}x faster); whole runs "
                 f"{sp['c_wall_s']:.0f} s vs {sp['torch_wall_s']:.0f} s ({sp['ratio_wall']:.2f}x).")
    rep = res.get("report")
    if rep and rep.get("html"):
        lines.append(f"- Both implementations' curves (total loss, every loss term, gradient norm, lr, step time, "
                     f"AP) overlaid in the HTML report `{rep['html']}`: `detr-prof report {rep['db']} "
                     + " ".join(f"--run {r}" for r in rep["runs"]) + "` (C runs profiled with `--profile`, the "
                     "reference's logged steps and evaluations imported beside them, labelled in the report).")
    lines.append("")
    # setup
    lines += ["## Setup", "",
              "Both sides: the same synthetic dataset, the same initial weights (detr-train `--save-init` of the "
              "seed, loaded by the reference with `load_state_dict(strict=True)`), batch, learning rates (AdamW, "
              "backbone group separate), weight decay, clipping, eos_coef 0.1, loss weights ce 1 / bbox 5 / giou 2 "
              "with auxiliary losses, the reference transforms with the sizes below, 2 compute threads "
              "(`GOMP_SPINCOUNT=3000` for both: detr-train sets it for itself, trainer/runtime.c), and evaluation "
              "on the val split after every epoch and at the end, scored by the same `detr-data eval`. The "
              "reference's detections come from its PostProcess (softmax, best non-empty class per query, boxes "
              "scaled to the original image size).",
              "",
              "Necessarily different: data order, flip/crop draws (each side's own RNG seeded with the seed), and "
              "float rounding. The reference loads its data in the training process (`num_workers=0`); detr-train "
              "uses its loader threads (default 2).", "",
              "| | |", "|---|---|",
              f"| dataset | `detr-data synth {' '.join(opts(cfg['dataset']))}` |",
              f"| model | `{' '.join(opts(cfg['model']))}` ({res['shape_text']}) |",
              f"| training | `{' '.join(opts(cfg['train']))}` |",
              f"| steps / seeds / window | {steps} / {', '.join(map(str, seeds))} / {WINDOW} |",
              f"| software | torch {res['torch_version']}; {res['c_version']} |", ""]
    if ib:
        lines += ["## Identical weights, identical batch (step 1)", "",
                  "The reference's first training batch of seed "
                  f"{seeds[0]}, fed to detr-train's golden mode (`--inputs/--targets/--dump-grads`) from the same "
                  "initial weights. Any implementation difference shows here without sampling noise.", "",
                  "| term | C | PyTorch | abs diff |", "|---|---:|---:|---:|"]
        for l in ib["losses"]:
            lines.append(f"| {l['name']} | {l['c']:.6f} | {l['torch']:.6f} | {l['abs_diff']:.2e} |")
        lines += ["", f"Gradients before clipping, {ib['grad_tensors']} trainable tensors"
                  + (f" (name mismatches: {', '.join(ib['grad_name_mismatch'])})" if ib["grad_name_mismatch"] else
                     " (same names on both sides)")
                  + f": cosine similarity {ib['grad_cosine']:.9f}, norm {ib['grad_norm_c']:.5f} vs "
                  f"{ib['grad_norm_torch']:.5f}; largest element error relative to its tensor's max |grad|: "
                  f"{ib['worst_grad_rel_err']:.2e} (`{ib['worst_grad_tensor']}`).", ""]
    # charts
    lines += ["## Loss curves", "", res["svg_loss"], "",
              f"Weighted total loss (the optimised objective, with auxiliary terms), mean of {WINDOW}-step windows; "
              "the line is the mean over seeds, the shading the range over seeds.", "",
              res["svg_terms"], "", "## Windows (total loss)", "",
              "| steps | C mean ± range | PyTorch mean ± range | C - PyTorch | bound | agree |",
              "|---|---:|---:|---:|---:|:-:|"]
    for w in win:
        lines.append(f"| {w['lo']}-{w['hi']} | {w['c']['mean']:.4f} ± {w['c']['spread'] / 2:.4f} | "
                     f"{w['torch']['mean']:.4f} ± {w['torch']['spread'] / 2:.4f} | {w['diff']:+.4f} | "
                     f"{w['bound']:.4f} | {'yes' if w['agree'] else '**no**'} |")
    lines += ["", "± is half the range over seeds; bound = max(range C, range PyTorch) + "
              "2 sqrt(se_C² + se_T²) (the allowance for batch-to-batch noise; see the docstring of "
              "`bench/fidelity.py`).", ""]
    # AP
    lines += ["## Average precision (val split)", "", res["svg_ap"], "",
              "| implementation | seed | steps | AP | AP50 | AP75 | AR100 |", "|---|---:|---:|---:|---:|---:|---:|"]
    for impl in ("c", "torch"):
        for s in seeds:
            f = res["runs"][impl][str(s)]["final"]
            st = f["stats"]
            lines.append(f"| {LABEL[impl]} | {s} | {f['step']} | {st[0]:.4f} | {st[1]:.4f} | {st[2]:.4f} | {st[8]:.4f} |")
    for s in seeds:
        cr = res["runs"]["torch"][str(s)]["cross_eval_stats"]
        lines.append(f"| PyTorch weights, detr-train eval | {s} | {steps} | {cr[0]:.4f} | {cr[1]:.4f} | "
                     f"{cr[2]:.4f} | {cr[8]:.4f} |")
    lines += ["", "The last rows evaluate the reference's final weights with `detr-train --eval-only` (C "
              "inference and post-processing): a check that the two PostProcess paths score alike.", "",
              "AP after each evaluation:", "",
              "| step | " + " | ".join(f"{'C' if i == 'c' else 'PyTorch'} s{s} AP / AP50" for i in ("c", "torch")
                                      for s in seeds) + " |",
              "|---:|" + "---:|" * (2 * len(seeds))]
    eval_steps = sorted({e["step"] for i in ("c", "torch") for s in seeds for e in res["runs"][i][str(s)]["evals"]})
    for st in eval_steps:
        cells = []
        for i in ("c", "torch"):
            for s in seeds:
                e = next((e for e in res["runs"][i][str(s)]["evals"] if e["step"] == st), None)
                cells.append(f"{e['stats'][0]:.3f} / {e['stats'][1]:.3f}" if e else "-")
        lines.append(f"| {st} | " + " | ".join(cells) + " |")
    # time
    lines += ["", "## Time", "",
              "| implementation | seed | steps | whole run (s) | in training steps (s) | images/s in steps | evaluation (s) |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for impl in ("c", "torch"):
        for s in seeds:
            r = res["runs"][impl][str(s)]
            lines.append(f"| {LABEL[impl]} | {s} | {r['n_steps']} | {r['wall_s']:.1f} | {r['train_s']:.1f} | "
                         f"{r['n_steps'] * cfg['train']['batch'] / r['train_s']:.1f} | {r['eval_s']:.1f} |")
    lines += ["", f"Whole run: the process from start to exit (start-up, data indexing, training, evaluations). "
              f"C / PyTorch speed ratio in training steps: {sp['ratio_steps']:.2f}; whole runs: {sp['ratio_wall']:.2f}.",
              "", "## Commands", "", "```"]
    lines += [f"/usr/bin/python3 bench/fidelity.py --steps {steps} --seeds {','.join(map(str, seeds))} "
              + (f"--amp {amp} " if amp else "") + f"--out {res['out']} --doc {res['doc']}", "# which ran:"]
    lines += [shlex.join(c) for c in res["commands"]]
    lines += ["```", ""]
    write_atomic(doc_path, "\n".join(lines))


def curve_series(res, metric, impls=("c", "torch"), dash=None, short=False):
    out = []
    for impl in impls:
        w = res["windows"][metric]
        mid = [(x["lo"] + x["hi"]) / 2 for x in w]
        out.append({"name": f"{LABEL[impl].split(' ')[0]} {metric}" if short else LABEL[impl],
                    "color": COLORS[impl], "dash": dash,
                    "points": [(m, x[impl]["mean"]) for m, x in zip(mid, w)],
                    "band": [(m, min(x[impl]["seeds"]), max(x[impl]["seeds"])) for m, x in zip(mid, w)]})
    return out


def main():
    global BUILD
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="comma-separated seeds")
    ap.add_argument("--out", default=os.path.join(BUILD, "fidelity"),
                    help="run folder (default build/fidelity, build/fidelity-bf16 with --amp bf16)")
    ap.add_argument("--doc", default=None, help="default docs/fidelity.md (docs/fidelity-bf16.md with --amp bf16)")
    ap.add_argument("--amp", choices=["off", "bf16"], default="off",
                    help="bf16: both sides in bfloat16 (detr-train --amp bf16, the reference under CPU autocast); "
                         "default run folder build/fidelity-bf16")
    ap.add_argument("--build", default=BUILD, help="folder with detr-train and detr-data")
    ap.add_argument("--report-only", action="store_true",
                    help="rewrite DOC from OUT/results.json of an earlier run (no training)")
    args = ap.parse_args()
    BUILD = args.build
    if args.amp != "off":
        TRAIN["amp"] = args.amp
        if args.out == os.path.join("build", "fidelity"):
            args.out = os.path.join(BUILD, "fidelity-" + args.amp)
    if args.doc is None:
        args.doc = "docs/fidelity.md" if args.amp == "off" else f"docs/fidelity-{args.amp}.md"
    if args.report_only:
        results = os.path.join(args.out, "results.json")
        try:
            with open(results) as f:
                res = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            sys.exit(f"error: --report-only: cannot read {results} ({e}); run without --report-only first")
        render(res, args.doc)
        return
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        sys.exit(f"error: --seeds {args.seeds!r}: expected comma-separated integers, e.g. 1,2")
    if not seeds or len(set(seeds)) != len(seeds):
        sys.exit("error: --seeds needs at least one seed, without repeats")
    if args.steps < 2:
        sys.exit("error: --steps must be at least 2")
    for b in ("detr-train", "detr-data"):
        if not os.access(os.path.join(ROOT, BUILD, b), os.X_OK):
            sys.exit(f"error: {os.path.join(BUILD, b)} not found: run `make` first (or give --build DIR)")
    os.chdir(ROOT)
    os.makedirs(args.out, exist_ok=True)
    load_before = loadavg()
    date = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")

    ds, ds_cmd = make_dataset(args.out)
    with open(os.path.join(ds, "annotations", "instances_train.json")) as f:
        n_train = len(json.load(f)["images"])
    per_epoch = n_train // TRAIN["batch"]
    if per_epoch == 0:
        sys.exit(f"error: {n_train} training images is less than one batch of {TRAIN['batch']}")

    db = os.path.join(args.out, "fidelity.sqlite")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(db + suffix):
            os.remove(db + suffix)
    runs = {"c": {}, "torch": {}}
    commands = [ds_cmd]
    ib = None
    for k, seed in enumerate(seeds):
        sdir = os.path.join(args.out, f"seed{seed}")
        os.makedirs(sdir, exist_ok=True)
        print(f"== seed {seed}: C", flush=True)
        runs["c"][str(seed)] = run_c(ds, sdir, seed, args.steps, per_epoch, db)
        print(f"== seed {seed}: PyTorch reference", flush=True)
        first = os.path.join(sdir, "first-batch") if k == 0 else None
        runs["torch"][str(seed)] = run_torch(ds, sdir, seed, args.steps, first)
        commands += runs["c"][str(seed)]["commands"] + runs["torch"][str(seed)]["commands"]
        if first:
            ib = identical_batch_check(sdir, first)
            commands.append(ib["command"])
            print(f"identical batch: max relative loss difference {ib['max_loss_rel_diff']:.2e}, "
                  f"gradient cosine {ib['grad_cosine']:.9f}", flush=True)
    load_after = loadavg()
    report_runs = []
    for seed in seeds:
        c, t = runs["c"][str(seed)], runs["torch"][str(seed)]
        if c.get("run_id"):
            label_c_run(db, c["run_id"], seed)
            report_runs.append(c["run_id"])
        t["run_id"] = import_torch_run(db, t, seed, t["commands"][0])
        report_runs.append(t["run_id"])
    report_html, report_cmd = make_report(db, report_runs, args.out)
    commands.append(report_cmd)

    for impl in runs:
        for s, r in runs[impl].items():
            r["n_steps"] = len(r["steps"])
            if r["n_steps"] != args.steps:
                sys.exit(f"error: {impl} seed {s} logged {r['n_steps']} steps, expected {args.steps}")
            r["final"] = r["evals"][-1]
    res = {"date": date, "machine": machine(), "load_before": load_before, "load_after": load_after,
           "steps": args.steps, "seeds": seeds, "out": args.out, "doc": args.doc,
           "config": {"dataset": DATASET, "model": MODEL, "train": TRAIN},
           "runs": runs, "identical_batch": ib, "commands": commands,
           "report": {"db": db, "html": report_html, "runs": report_runs}}
    shape = runs["torch"][str(seeds[0])]["summary"]["shape"]
    res["torch_version"] = runs["torch"][str(seeds[0])]["summary"]["torch"]
    res["shape_text"] = (f"ResNet-{shape['depth']}, hidden {shape['hidden_dim']}, {shape['nheads']} heads, "
                         f"{shape['enc_layers']}+{shape['dec_layers']} layers, FFN {shape['dim_feedforward']}, "
                         f"{shape['num_queries']} queries, {shape['num_classes']} classes")
    ver = subprocess.run([os.path.join(BUILD, "detr-train"), "--version"], capture_output=True, text=True).stdout
    res["c_version"] = (ver.strip().splitlines() or ["detr-train"])[0]
    results = os.path.join(args.out, "results.json")
    write_atomic(results, json.dumps(res) + "\n")
    print(f"run results: {results} (--report-only rewrites the doc from it)", flush=True)
    render(res, args.doc)


def render(res, doc):
    """Windows, speeds, charts; writes DOC and its .json."""
    runs, seeds, steps = res["runs"], res["seeds"], res["steps"]
    batch = res["config"]["train"]["batch"]
    res["doc"] = doc
    res["window"] = WINDOW
    per_impl = {impl: [runs[impl][str(s)]["steps"] for s in seeds] for impl in runs}
    res["windows"] = {m: windows(per_impl, m, steps) for m in METRICS}
    c_train = sum(runs["c"][str(s)]["train_s"] for s in seeds)
    t_train = sum(runs["torch"][str(s)]["train_s"] for s in seeds)
    c_wall = sum(runs["c"][str(s)]["wall_s"] + runs["c"][str(s)]["final_eval_wall_s"] for s in seeds)
    t_wall = sum(runs["torch"][str(s)]["wall_s"] for s in seeds)
    imgs = steps * batch * len(seeds)
    res["speed"] = {"c_images_per_s": imgs / c_train, "torch_images_per_s": imgs / t_train,
                    "ratio_steps": t_train / c_train, "c_wall_s": c_wall, "torch_wall_s": t_wall,
                    "ratio_wall": t_wall / c_wall}

    res["svg_loss"] = svg_chart("Weighted total loss (mean of %d-step windows)" % WINDOW, "step", "loss",
                                curve_series(res, "loss"))
    res["svg_terms"] = svg_chart("Last-layer loss terms", "step", "loss term",
                                 curve_series(res, "loss_ce", short=True)
                                 + curve_series(res, "loss_bbox", dash="6 3", short=True)
                                 + curve_series(res, "loss_giou", dash="2 3", short=True))
    ap_series = []
    for impl in ("c", "torch"):
        for k, s in enumerate(seeds):
            ev = runs[impl][str(s)]["evals"]
            ap_series.append({"name": f"{LABEL[impl].split(' ')[0]} seed {s}", "color": COLORS[impl],
                              "dash": None if k == 0 else "6 3", "markers": True,
                              "points": [(e["step"], e["stats"][0]) for e in ev]})
    res["svg_ap"] = svg_chart("AP@[.50:.95] on the val split", "step", "AP", ap_series, y_from_zero=True)

    json_path = os.path.splitext(doc)[0] + ".json"
    res["json_path"] = json_path
    data = {k: res[k] for k in ("date", "machine", "load_before", "load_after", "steps", "seeds", "window",
                                "config", "windows", "identical_batch", "speed")}
    data["identical_batch"] = {k: v for k, v in (res["identical_batch"] or {}).items() if k != "command"} or None
    data["runs"] = {impl: {s: {"loss": [round(x["loss"], 5) for x in r["steps"]], "evals": r["evals"],
                               "wall_s": round(r["wall_s"], 3), "train_s": round(r["train_s"], 3),
                               "eval_s": round(r["eval_s"], 3),
                               **({"cross_eval_stats": r["cross_eval_stats"]} if "cross_eval_stats" in r else {})}
                           for s, r in runs[impl].items()} for impl in runs}
    write_atomic(json_path, json.dumps(data, indent=1) + "\n")
    report(res, doc)
    win = res["windows"]["loss"]
    print(f"windows agreeing (total loss): {sum(w['agree'] for w in win)}/{len(win)}; "
          f"C {res['speed']['ratio_steps']:.2f}x faster in steps; wrote {doc} and {json_path}")


if __name__ == "__main__":
    main()
