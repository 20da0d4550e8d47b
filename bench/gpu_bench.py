#!/usr/bin/env python3
"""GPU benchmark (issue 7 §4): training images/s and peak GPU memory of the C trainer
(build/bench/bench_train --device cuda) beside PyTorch eager running the reference model
(bench/bench_torch.py --device cuda) with the same settings, on the same card, in the same call.

Default case: the r50 preset at 800x1066, batch 2, 4 and 8, float32 and bf16 (--amp bf16 on the
C side: backend.h set_precision, as detr-train; torch.autocast(bfloat16) on the PyTorch side).
One process per (implementation, precision) runs every batch size (warm-up steps, then timed
steps, each step synchronised; peaks reset after the warm-up). Processes alternate C, PyTorch;
round 2 runs in the reverse order, and rounds continue while the time budget allows. The ratio
is the median over rounds of the per-round ratio C / PyTorch.

Targets (issue 7): C images/s >= 1.3 x PyTorch's at equal batch and precision; C peak allocated
memory <= PyTorch's (the caching allocators' "allocated" peaks, torch.cuda.max_memory_allocated).

Every process has a timeout; results already printed by a process that failed or timed out are
kept. The report (Markdown) is rewritten atomically after every process, to --out
(default docs/gpu-benchmark.md) and, when $OUT is set, to $OUT/gpu-benchmark.md (with the raw
results in $OUT/gpu-bench.json and the processes' output in $OUT/gpu-bench-logs/).

--device cpu --preset tiny --size 64 ... runs the same code paths on the CPU (a test, not a
benchmark: the C side emulates bf16 there)."""
import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEED_TARGET = 1.3


DEPS = os.environ.get("GPU_DEPS_DIR", ".gpu-deps")  # the bundle of scripts/gpu_bundle.sh


def default_build():
    for b in ("build", os.path.join(DEPS, "build")):
        if os.access(os.path.join(ROOT, b, "bench", "bench_train"), os.X_OK):
            return b
    return "build"


def c_env():
    """Environment for the C programs: the bundle's libraries (scripts/gpu_bundle.sh env) when
    .gpu-deps/ exists. PyTorch keeps the environment as given."""
    env = dict(os.environ)
    if not os.path.isdir(os.path.join(ROOT, DEPS)):
        return env, ""
    r = subprocess.run(["bash", os.path.join(ROOT, "scripts", "gpu_bundle.sh"), "env", "--ld-path"],
                       cwd=ROOT, capture_output=True, text=True,
                       env=dict(os.environ, GPU_DEPS_DIR=DEPS, PY=os.environ.get("PY", sys.executable)))
    if r.returncode != 0:
        sys.exit(f"gpu_bench: scripts/gpu_bundle.sh env failed:\n{r.stderr}")
    path = r.stdout.strip()
    if path:
        env["LD_LIBRARY_PATH"] = path
    return env, r.stderr.strip()


def shown_path(path):
    """Relative to the repository when inside it, else absolute."""
    rel = os.path.relpath(path, ROOT)
    return path if rel.startswith("..") else rel


def card():
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                            "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
        if r.returncode == 0 and r.stdout.strip():
            name, mem, driver = (x.strip() for x in r.stdout.strip().splitlines()[0].split(","))
            return f"{name} ({mem}, driver {driver})"
    except (OSError, subprocess.TimeoutExpired, ValueError):
        pass
    return None


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


class Runner:
    def __init__(self, args):
        self.args = args
        self.start = time.monotonic()
        self.results = []      # one dict per JSON line, plus "round"
        self.processes = []    # one dict per process: impl, amp, round, rc, seconds, log, note
        self.cenv, self.env_note = c_env()
        self.durations = {}    # (impl, amp) -> seconds of its last run

    def left(self):
        return self.args.budget - (time.monotonic() - self.start)

    def command(self, impl, amp):
        a = self.args
        common = ["--preset", a.preset, "--device", a.device, "--amp", amp, "--batches", a.batches,
                  "--size", a.size, "--warmup", str(a.warmup), "--steps", str(a.steps),
                  "--threads", str(a.threads)]
        if impl == "c":
            return [os.path.join(a.build, "bench", "bench_train")] + common, self.cenv
        return [a.python, "bench/bench_torch.py"] + common, dict(os.environ)

    def run(self, impl, amp, rnd):
        """One process; returns False when the budget did not allow it."""
        left = self.left() - 5
        expected = self.durations.get((impl, amp))
        if left < 20 or (expected is not None and left < 1.15 * expected + 5):
            return False
        timeout = min(left, self.args.process_timeout)
        cmd, env = self.command(impl, amp)
        log = os.path.join(self.args.logs, f"{impl}-{amp}-round{rnd}.log")
        t0 = time.monotonic()
        note, rc = "", None
        with open(log, "w") as f:
            f.write("$ " + " ".join(shlex.quote(c) for c in cmd) + f"   (timeout {timeout:.0f}s)\n")
            f.flush()
            try:
                p = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=f,
                                   text=True, timeout=timeout)
                out, rc = p.stdout, p.returncode
            except subprocess.TimeoutExpired as e:
                out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
                note = "timed out"
            except OSError as e:
                out, note = "", f"could not start: {e}"
            f.write("---- stdout\n" + out)
        seconds = time.monotonic() - t0
        self.durations[(impl, amp)] = seconds
        got = 0
        for line in out.splitlines():
            line = line.strip()
            if line.startswith("{") and line.endswith("}"):
                try:
                    r = json.loads(line)
                except ValueError:
                    continue
                if "images_per_s" in r:
                    r["round"] = rnd
                    self.results.append(r)
                    got += 1
        if rc not in (None, 0):
            note = {3: "exit 3: out of GPU memory (or the memory budget)"}.get(rc, f"exit {rc}")
        self.processes.append(dict(impl=impl, amp=amp, round=rnd, rc=rc, seconds=round(seconds, 1),
                                   results=got, log=shown_path(log), note=note))
        print(f"  round {rnd} {impl:5s} {amp:4s}: {got} batch size(s) in {seconds:.0f}s"
              + (f" ({note}; see {log})" if note else ""), flush=True)
        return True


def table(runner):
    """Rows per (precision, batch): medians and per-round ratios."""
    a = runner.args
    rows = []
    for amp in a.precisions.split(","):
        for b in (int(x) for x in a.batches.split(",")):
            def pick(impl):
                return {r["round"]: r for r in runner.results
                        if r["impl"] == impl and r["amp"] == amp and r["batch"] == b}
            c, t = pick("c"), pick("torch")
            ratios = [c[k]["images_per_s"] / t[k]["images_per_s"] for k in sorted(c) if k in t]
            mem = [c[k]["peak_allocated_bytes"] / t[k]["peak_allocated_bytes"] for k in sorted(c)
                   if k in t and "peak_allocated_bytes" in c[k] and t[k].get("peak_allocated_bytes")]
            med = lambda xs: statistics.median(xs) if xs else None  # noqa: E731
            rows.append(dict(
                amp=amp, batch=b, ratios=ratios, ratio=med(ratios), mem_ratio=med(mem),
                c_ips=med([r["images_per_s"] for r in c.values()]),
                t_ips=med([r["images_per_s"] for r in t.values()]),
                c_peak=med([r["peak_allocated_bytes"] for r in c.values() if "peak_allocated_bytes" in r]),
                t_peak=med([r["peak_allocated_bytes"] for r in t.values() if "peak_allocated_bytes" in r]),
                c_step=med([r["step_ms"] for r in c.values()]), t_step=med([r["step_ms"] for r in t.values()]),
                skipped=sum(r.get("skipped_steps", 0) for r in list(c.values()) + list(t.values()))))
    return rows


def gib(x):
    return "-" if x is None else f"{x / 2**30:.2f} GiB"


def verdict(value, ok):
    return "-" if value is None else ("PASS" if ok else "FAIL")


def write_report(runner, final):
    a = runner.args
    rows = table(runner)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    torch_info = next((r for r in runner.results if r["impl"] == "torch"), {})
    where = card() if a.device == "cuda" else None
    where = where or f"{cpu_model()}, {os.cpu_count()} cores (CPU run: a test of the scripts, not a benchmark)"
    rounds = max([p["round"] for p in runner.processes], default=0)
    speed_ok = sum(1 for r in rows if r["ratio"] is not None and r["ratio"] >= SPEED_TARGET)
    mem_ok = sum(1 for r in rows if r["mem_ratio"] is not None and r["mem_ratio"] <= 1.0)
    measured = sum(1 for r in rows if r["ratio"] is not None)
    L = ["# GPU benchmark: C trainer vs PyTorch eager", ""]
    if not final:
        L += ["**Partial: the benchmark was still running (or was cut short) when this was written.**", ""]
    L += [
        f"Measured {now} on {where}, {rounds} round(s), by",
        "",
        f"    {a.command_line}",
        "",
        f"- Model: the `{a.preset}` preset, synthetic {a.size if 'x' in a.size else a.size + 'x' + a.size} "
        "images (no padding, 1-3 boxes each),",
        "  Hungarian matching, set loss with auxiliary losses, AdamW (two groups), clipping 0.1, dropout 0.1.",
        f"- C: `{a.build}/bench/bench_train --device {a.device}`; precision as `detr-train --amp`",
        "  (backend `set_precision`: bf16 operands, float32 accumulation and master weights).",
        f"- PyTorch {torch_info.get('torch', '?')} (CUDA {torch_info.get('cuda', '-')}, cuDNN "
        f"{torch_info.get('cudnn', '-')}): `bench/bench_torch.py` running `tests/ref/detr_ref.py` eagerly,",
        f"  cudnn.benchmark on, float32 math {torch_info.get('float32_math', '-')} (no TF32 on either side),",
        f"  bf16 = `torch.autocast(device_type=\"{a.device}\", dtype=torch.bfloat16)` around forward and loss; "
        f"matcher: {torch_info.get('matcher', '-')}.",
        f"- Per batch size: {a.warmup} warm-up steps, then {a.steps} timed steps; every step synchronised",
        "  (`be->synchronize()` / `torch.cuda.synchronize()`), the batch's copy to the GPU inside the step.",
        "  Peak memory: the caching allocators' allocated bytes over the timed steps (C: `cuda_memory_stats()`,",
        "  PyTorch: `torch.cuda.max_memory_allocated()`; peaks reset after the warm-up).",
        "- Processes alternate C / PyTorch (round 2 in reverse order); ratio = median of the per-round ratios.",
        "",
        f"Targets (issue 7): images/s >= {SPEED_TARGET}x PyTorch's: **{speed_ok} of {measured}** measured rows; "
        f"peak memory <= PyTorch's: **{mem_ok} of {measured}**.",
        "",
        "| precision | batch | C images/s | PyTorch images/s | C / PyTorch (per round) | >= 1.3x | "
        "C peak | PyTorch peak | C / PyTorch memory | <= 1 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    fmt = lambda x, f: "-" if x is None else f.format(x)  # noqa: E731
    for r in rows:
        per = ", ".join(f"{x:.2f}" for x in r["ratios"])
        L.append(f"| {'fp32' if r['amp'] == 'off' else r['amp']} | {r['batch']} | {fmt(r['c_ips'], '{:.2f}')} | "
                 f"{fmt(r['t_ips'], '{:.2f}')} | **{fmt(r['ratio'], '{:.2f}x')}** ({per or '-'}) | "
                 f"{verdict(r['ratio'], r['ratio'] is not None and r['ratio'] >= SPEED_TARGET)} | "
                 f"{gib(r['c_peak'])} | {gib(r['t_peak'])} | {fmt(r['mem_ratio'], '{:.2f}')} | "
                 f"{verdict(r['mem_ratio'], r['mem_ratio'] is not None and r['mem_ratio'] <= 1.0)} |")
    L += ["", "Step times (median of rounds, ms): " + "; ".join(
        f"{'fp32' if r['amp'] == 'off' else r['amp']} b{r['batch']}: C {fmt(r['c_step'], '{:.1f}')}, "
        f"PyTorch {fmt(r['t_step'], '{:.1f}')}" for r in rows) + ".", ""]
    problems = [p for p in runner.processes if p["note"]]
    if problems:
        L += ["Processes that did not finish cleanly (their completed batch sizes are kept):", ""]
        L += [f"- round {p['round']}, {p['impl']} {p['amp']}: {p['note']} after {p['seconds']}s "
              f"({p['results']} batch size(s) measured; log `{p['log']}`)" for p in problems]
        L.append("")
    if runner.env_note:
        L += ["Libraries for the C programs (scripts/gpu_bundle.sh env):", "", "```",
              runner.env_note, "```", ""]
    text = "\n".join(L) + "\n"
    for path in a.out_paths:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    if a.json:
        tmp = a.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"results": runner.results, "processes": runner.processes, "rows": rows,
                       "command": a.command_line, "card": where, "final": final}, f, indent=1)
        os.replace(tmp, a.json)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=default_build(), help="folder with bench/bench_train (default: build, "
                    "else $GPU_DEPS_DIR/build, .gpu-deps/build)")
    ap.add_argument("--python", default=sys.executable, help="Python with torch for bench_torch.py")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--preset", default="r50")
    ap.add_argument("--size", default="800x1066")
    ap.add_argument("--batches", default="2,4,8")
    ap.add_argument("--precisions", default="off,bf16", help="comma list of off, bf16, fp16")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 4)
    ap.add_argument("--budget", type=float, default=300, help="seconds for the whole benchmark (default 300)")
    ap.add_argument("--process-timeout", type=float, default=150, help="seconds per process (default 150)")
    ap.add_argument("--max-rounds", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "gpu-benchmark.md"))
    ap.add_argument("--logs", default=None, help="process logs (default $OUT/gpu-bench-logs, else build/gpu-bench-logs)")
    ap.add_argument("--json", default=None, help="raw results (default $OUT/gpu-bench.json, else next to the logs)")
    args = ap.parse_args()
    args.command_line = " ".join(shlex.quote(x) for x in ["bench/gpu_bench.py"] + sys.argv[1:])
    for amp in args.precisions.split(","):
        if amp not in ("off", "bf16", "fp16"):
            ap.error(f"--precisions: '{amp}' is not one of off, bf16, fp16")
    outdir = os.environ.get("OUT")
    args.logs = args.logs or os.path.join(outdir or os.path.join(ROOT, "build"), "gpu-bench-logs")
    args.json = args.json or os.path.join(outdir or os.path.dirname(args.logs), "gpu-bench.json")
    os.makedirs(args.logs, exist_ok=True)
    args.out_paths = [args.out] + ([os.path.join(outdir, "gpu-benchmark.md")] if outdir else [])
    binary = os.path.join(ROOT, args.build, "bench", "bench_train")
    if not os.access(binary, os.X_OK):
        sys.exit(f"gpu_bench: {binary} is missing: build it (make CUDA=1 {args.build}/bench/bench_train) "
                 "or carry .gpu-deps (scripts/gpu_bundle.sh)")
    if args.device == "cuda" and card() is None:
        print("gpu_bench: no GPU (nvidia-smi lists none); nothing measured", file=sys.stderr)
        sys.exit(2)
    runner = Runner(args)
    if runner.env_note:
        print(runner.env_note, file=sys.stderr)
    order = [(impl, amp) for amp in args.precisions.split(",") for impl in ("c", "torch")]
    print(f"== gpu_bench: budget {args.budget:.0f}s, report {args.out}", flush=True)
    for rnd in range(1, args.max_rounds + 1):
        this_round = order if rnd % 2 else list(reversed(order))
        ran = 0
        for impl, amp in this_round:
            if runner.run(impl, amp, rnd):
                ran += 1
                write_report(runner, final=False)
        if ran < len(this_round):
            break
    rows = write_report(runner, final=True)
    print(f"wrote {', '.join(args.out_paths)} ({time.monotonic() - runner.start:.0f}s)")
    for r in rows:
        print(f"  {r['amp']:4s} batch {r['batch']}: C/PyTorch images/s "
              + ("-" if r["ratio"] is None else f"{r['ratio']:.2f}x")
              + ", memory " + ("-" if r["mem_ratio"] is None else f"{r['mem_ratio']:.2f}"))
    sys.exit(0 if rows and all(r["ratio"] is not None for r in rows) else 1)


if __name__ == "__main__":
    main()
