#!/usr/bin/python3
"""Loader benchmark (part of make bench): images/s of the reference train transform on a
photo-like synthetic dataset (640x480 JPEGs, quality 90, made by `detr-data synth`), the C loader
(`detr-data bench`, 1 and 2 workers) side by side with a PyTorch DataLoader running the same
transform in Python with PIL + torchvision (bench/bench_loader.py, best of 0, 1 and 2 workers).
Runs alternate C / PyTorch within each round (and the order flips every round); the ratio is
the median over rounds of C images/s / PyTorch's best images/s of the same round (these machines
are noisy). Then one 5-epoch C run records the RSS after every epoch (it must stay flat:
bounded by the prefetch slots). Writes docs/loader-benchmarks.md atomically and the raw numbers
to <build>/loader-bench.json.

Both sides are measured the same way: shuffled epochs with drop_last, batches of --batch images
padded and normalised (float32), a consumer that drops each batch at once; images/s counts the
images after the first batch over the time after the first batch (start-up excluded, epoch
boundaries included)."""
import argparse
import datetime
import glob
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = "/usr/bin/python3"
DATASET_NAME = "photo-640x480-q90-v1"

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run_bench import machine  # noqa: E402


def run_json(cmd):
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def make_dataset(build, images, root):
    """The benchmark dataset, generated once (detr-data synth is deterministic)."""
    path = os.path.join(root, f"{DATASET_NAME}-{images}")
    if not os.path.exists(os.path.join(path, "annotations", "instances_train.json")):
        print(f"generating {images} photo-like images (640x480, quality 90) in {path}", flush=True)
        subprocess.run([os.path.join(build, "detr-data"), "synth", path, "--images", str(images), "--val", "8",
                        "--size", "640x480", "--quality", "90", "--seed", "1"], cwd=ROOT, check=True)
    files = glob.glob(os.path.join(path, "train", "*.jpg"))
    mean_bytes = sum(os.path.getsize(f) for f in files) / max(1, len(files))
    return path, len(files), mean_bytes


def c_bench(build, data, workers, batch, epochs):
    return run_json([os.path.join(build, "detr-data"), "bench", data, "--workers", str(workers), "--batch",
                     str(batch), "--epochs", str(epochs), "--transform", "train", "--json"])


def torch_bench(data, workers, batch, epochs):
    return run_json([PY, os.path.join("bench", "bench_loader.py"), data, "--workers", str(workers), "--batch",
                     str(batch), "--epochs", str(epochs), "--transform", "train"])


def one_round(args, data, r):
    """C 1 worker, C 2 workers and PyTorch 0/1/2 workers, interleaved; the order flips each round."""
    jobs = [("c", 1), ("torch", 0), ("c", 2), ("torch", 1), ("torch", 2)]
    if r % 2:
        jobs.reverse()
    res = {}
    for kind, w in jobs:
        if kind == "c":
            res[("c", w)] = c_bench(args.build, data, w, args.batch, args.epochs)
        else:
            res[("torch", w)] = torch_bench(data, w, args.batch, args.epochs)
    best_w = max((0, 1, 2), key=lambda w: res[("torch", w)]["images_per_s"])
    best = res[("torch", best_w)]["images_per_s"]
    row = dict(c1=res[("c", 1)]["images_per_s"], c2=res[("c", 2)]["images_per_s"],
               t0=res[("torch", 0)]["images_per_s"], t1=res[("torch", 1)]["images_per_s"],
               t2=res[("torch", 2)]["images_per_s"], best_torch=best, best_torch_workers=best_w)
    row["ratio1"], row["ratio2"] = row["c1"] / best, row["c2"] / best
    row["c_runs"] = {w: res[("c", w)] for w in (1, 2)}
    row["torch_runs"] = {w: res[("torch", w)] for w in (0, 1, 2)}
    print(f"  round {r + 1}/{args.rounds}: C {row['c1']:.1f} (1 worker) / {row['c2']:.1f} (2 workers) img/s; "
          f"PyTorch {row['t0']:.1f} / {row['t1']:.1f} / {row['t2']:.1f} (0/1/2 workers); "
          f"ratio {row['ratio1']:.2f}x / {row['ratio2']:.2f}x", flush=True)
    return row


def med(rows, key):
    return statistics.median(r[key] for r in rows)


def mb(x):
    return f"{x / 1e6:.0f} MB"


def write_report(args, ds, rows, mem, torch_version):
    data, n_images, mean_bytes = ds
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    r1, r2 = med(rows, "ratio1"), med(rows, "ratio2")
    best = max(r1, r2)
    last_c = rows[-1]["c_runs"]
    rss = mem["rss_after_epoch_bytes"]
    flat = len(rss) >= 3 and rss[-1] <= rss[1] * 1.1 + 2e6
    slot_bound = mem["prefetch"] * mem["batch"] * 1333 * 1333 * (3 * 4 + 1)
    t_peak = max(r["torch_runs"][w]["peak_rss_bytes"] for r in rows for w in (0, 1, 2))
    t_worker_peak = max(r["torch_runs"][w]["peak_rss_worker_bytes"] for r in rows for w in (1, 2))
    lines = [
        "# Loader benchmarks",
        "",
        f"Measured {now} on {machine()} by `bench/run_loader_bench.py` (part of `make bench`).",
        "",
        f"Dataset: {n_images} synthetic photo-like images, 640x480, JPEG quality 90, mean "
        f"{mean_bytes / 1000:.1f} KB per file (`detr-data synth --size 640x480 --quality 90`).",
        "Transform: the reference train transform (flip; resize to 480..800 step 32, max 1333, or resize",
        "400/500/600 -> random crop 384..600 -> resize), batches of "
        f"{args.batch} padded and normalised float32 images, shuffled epochs, drop_last; {args.epochs} "
        "epoch(s) per run.",
        "",
        "- **C**: `detr-data bench DATA --workers N --transform train --json` (libuv pool, TurboJPEG,",
        "  own resampler).",
        "- **PyTorch**: `bench/bench_loader.py` - torch.utils.data.DataLoader with the reference",
        f"  transform in Python (PIL + torchvision, Debian's PyTorch {torch_version}), workers 0, 1 and 2;",
        "  the best of the three is the baseline.",
        "",
        "Both count images after the first batch over the time after the first batch. Runs alternate",
        "C / PyTorch within a round and the order flips every round; the ratio is the median of the",
        "per-round ratios (these machines are noisy).",
        "",
        "| | images/s (median) |",
        "|---|---|",
        f"| C, 1 worker | {med(rows, 'c1'):.1f} |",
        f"| C, 2 workers | {med(rows, 'c2'):.1f} |",
        f"| PyTorch, 0 workers | {med(rows, 't0'):.1f} |",
        f"| PyTorch, 1 worker | {med(rows, 't1'):.1f} |",
        f"| PyTorch, 2 workers | {med(rows, 't2'):.1f} |",
        "",
        f"**Ratio to PyTorch's best (median): {r1:.2f}x with 1 worker, {r2:.2f}x with 2 workers.** "
        f"Target: >= 4x; {'met' if best >= 4 else 'not met'} ({best:.2f}x).",
        "",
        "| round | C 1w | C 2w | PyTorch 0w | PyTorch 1w | PyTorch 2w | ratio 1w | ratio 2w |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(rows):
        lines.append(f"| {i + 1} | {r['c1']:.1f} | {r['c2']:.1f} | {r['t0']:.1f} | {r['t1']:.1f} | {r['t2']:.1f} | "
                     f"{r['ratio1']:.2f}x | {r['ratio2']:.2f}x |")
    lines += [
        "",
        "## Where the C loader spends its time",
        "",
        "Mean per image (summed over the workers, so with N busy workers the loader delivers about",
        "N / (read + decode + augment + collate per image) images/s); collate per batch is the sum of",
        "the per-image collate items; the consumer's wait per batch; last round:",
        "",
        "| workers | read ms | decode ms | augment ms | collate ms/batch | wait ms/batch | padded | peak RSS |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for w in (1, 2):
        c = last_c[w]
        s = c["stage_mean_ms"]
        lines.append(f"| {w} | {s['read']:.2f} | {s['decode']:.2f} | {s['augment']:.2f} | "
                     f"{s['collate_per_batch']:.2f} | {s['wait_per_batch']:.2f} | "
                     f"{100 * c['padded_fraction']:.0f}% | {mb(c['peak_rss_bytes'])} |")
    lines += [
        "",
        "## Memory",
        "",
        f"C, 2 workers, prefetch {mem['prefetch']}, batch {mem['batch']}, 5 epochs: RSS after each epoch "
        + ", ".join(mb(x) for x in rss) + f"; peak {mb(mem['peak_rss_bytes'])}. "
        + ("Flat: the last epoch is within 10% of the second." if flat else
           "**Not flat**: the last epoch is more than 10% above the second."),
        "The bound: the prefetch slots, each allocated on first use for the transform's worst case",
        f"(batch x 1333 x 1333 x (3 float32 + 1 mask byte) = {mb(slot_bound / mem['prefetch'])} per slot with max_size 1333,",
        f"{mb(slot_bound)} for {mem['prefetch']} slots), plus one transformed image per sample in flight",
        "and one decoder per worker; the slots' pages are touched as padded batches of new sizes",
        "appear, so the RSS can rise in the first epoch but never past the bound.",
        "",
        f"PyTorch peak RSS: main process {mb(t_peak)}, largest worker {mb(t_worker_peak)} (each worker",
        "is a process with its own copy of the interpreter and the dataset).",
        "",
    ]
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(lines))
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")
    print("\n".join(lines[lines.index("| | images/s (median) |"):lines.index("| | images/s (median) |") + 9]))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.environ.get("BUILD", "build"))
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "loader-benchmarks.md"))
    ap.add_argument("--images", type=int, default=200, help="images in the benchmark dataset")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=2, help="epochs per throughput run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--data-root", help="where the dataset is generated (default <build>/bench-data)")
    ap.add_argument("--quick", action="store_true", help="one round, one epoch, 64 images (smoke test)")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.epochs, args.images = 1, 1, 64
    build = args.build if os.path.isabs(args.build) else os.path.join(ROOT, args.build)
    args.build = build
    if not os.access(os.path.join(build, "detr-data"), os.X_OK):
        sys.exit(f"error: {build}/detr-data is not built (make all)")
    root = args.data_root or os.path.join(build, "bench-data")
    os.makedirs(root, exist_ok=True)
    ds = make_dataset(build, args.images, root)
    print(f"== loader benchmark: {ds[1]} images, mean JPEG {ds[2] / 1000:.1f} KB, batch {args.batch}, "
          f"{args.epochs} epoch(s) per run, {args.rounds} round(s)", flush=True)
    rows = [one_round(args, ds[0], r) for r in range(args.rounds)]
    print("== memory: C, 2 workers, 5 epochs", flush=True)
    mem = c_bench(build, ds[0], 2, args.batch, 5)
    print("  RSS after each epoch: " + ", ".join(mb(x) for x in mem["rss_after_epoch_bytes"])
          + f"; peak {mb(mem['peak_rss_bytes'])}", flush=True)
    torch_version = rows[0]["torch_runs"][0].get("torch", "?")
    with open(os.path.join(build, "loader-bench.json"), "w") as f:
        json.dump({"dataset": {"path": ds[0], "images": ds[1], "mean_jpeg_bytes": ds[2]},
                   "rounds": [{k: v for k, v in r.items()} for r in rows], "memory": mem}, f, indent=1)
    write_report(args, ds, rows, mem, torch_version)


if __name__ == "__main__":
    main()
