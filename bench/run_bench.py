#!/usr/bin/python3
"""make bench: training images/s of the C trainer next to the PyTorch reference doing the same
step (same model, loss, AdamW, clipping) on the same machine with the same thread count, run
alternately, reported as the median of the per-round ratios; plus the C trainer's per-phase
GFLOP/s against the measured sgemm peak. Writes docs/benchmarks.md (atomically).

Two environments are measured, because this machine type sets OPENBLAS_CORETYPE=Haswell (and
OPENBLAS_L2_SIZE) for all processes, which pins OpenBLAS to AVX2 kernels on an AVX-512 CPU:
  default: the environment as given (what the tests and CI run with);
  native:  both variables unset for the benchmark commands alone (OpenBLAS picks its kernels
           for the CPU). Before measuring there, the op tests and the golden check against
           PyTorch are re-run in that environment, so the numbers come from a verified build.
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = "/usr/bin/python3"

CASES = [  # name, C/torch args, rounds
    ("tiny", ["--preset", "tiny", "--batch", "8", "--size", "128", "--warmup", "2", "--steps", "6"], 5),
    ("r50", ["--preset", "r50", "--batch", "2", "--size", "320", "--warmup", "1", "--steps", "3"], 3),
]


def env_for(kind):
    env = dict(os.environ)
    if kind == "native":
        env.pop("OPENBLAS_CORETYPE", None)
        env.pop("OPENBLAS_L2_SIZE", None)
    return env


def run_json(cmd, env):
    out = subprocess.run(cmd, env=env, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def verify(build, env):
    """Op tests and golden check in this environment; returns summary lines for the report
    (the RESULT line of each, and which groups of checks failed, if any)."""
    lines = []
    for cmd in ([f"{build}/tests/test_ops"], [f"{build}/tests/test_golden"]):
        r = subprocess.run(cmd, env=dict(env, DETR_FIXTURES=f"{build}/fixtures", DETR_BUILD=build),
                           cwd=ROOT, capture_output=True, text=True)
        last = [l for l in r.stdout.splitlines() if l.startswith("RESULT")]
        name = os.path.basename(cmd[0])
        lines.append(f"`{name}`: {last[-1] if last else 'no RESULT line'}")
        groups = {}
        for l in r.stdout.splitlines():
            if l.startswith("FAIL "):
                key = " ".join(l.split()[1:5])
                groups[key] = groups.get(key, 0) + 1
        for key, n in groups.items():
            lines.append(f"  failing: {n} checks of \"{key}\"")
        print(f"  verify {name}: {last[-1] if last else 'no RESULT line'}", flush=True)
    return lines


def machine():
    model = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="build")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks.md"))
    ap.add_argument("--envs", default="default,native")
    ap.add_argument("--quick", action="store_true", help="one round each (smoke test)")
    args = ap.parse_args()
    cbin = os.path.join(args.build, "bench", "bench_train")
    results, verification = {}, {}
    for kind in args.envs.split(","):
        env = env_for(kind)
        print(f"== environment: {kind}", flush=True)
        verification[kind] = verify(args.build, env)
        peak = run_json([cbin, "--threads", str(args.threads), "--sgemm-peak", "--steps", "1",
                         "--warmup", "0"], env)["sgemm_peak_gflops"]
        for name, case_args, rounds in CASES:
            rounds = 1 if args.quick else rounds
            cs, ts, ratios, last_c = [], [], [], None
            for r in range(rounds):
                c = run_json([cbin, "--threads", str(args.threads)] + case_args, env)
                t = run_json([PY, "bench/bench_torch.py", "--threads", str(args.threads)] + case_args, env)
                cs.append(c["images_per_s"]); ts.append(t["images_per_s"])
                ratios.append(c["images_per_s"] / t["images_per_s"])
                last_c = c
                print(f"  {name} round {r + 1}/{rounds}: C {c['images_per_s']:.2f} img/s, "
                      f"PyTorch {t['images_per_s']:.2f} img/s, ratio {ratios[-1]:.2f}", flush=True)
            results[(kind, name)] = dict(c=statistics.median(cs), t=statistics.median(ts),
                                         ratio=statistics.median(ratios), ratios=ratios,
                                         phases=last_c["phases"], gflops=last_c["gflops"],
                                         peak=peak, torch=t.get("torch"))
    write_report(args, results, verification)


def write_report(args, results, verification):
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Benchmarks",
        "",
        f"Measured {now} on {machine()} by `make bench` (`bench/run_bench.py`), {args.threads} threads",
        "for both implementations. C: `build/bench/bench_train`; PyTorch: `bench/bench_torch.py`",
        "(the reference model of `tests/ref/detr_ref.py` with Debian's PyTorch "
        f"{next(iter(results.values()))['torch']}, same model, Hungarian matching, loss, AdamW with",
        "two groups and clipping 0.1, dropout as the preset (tiny 0, r50 0.1), fixed-size synthetic batches of 1-3 boxes).",
        "Runs alternate C / PyTorch; the ratio is the median of the per-round ratios (these",
        "machines are noisy, so single runs can be off by a lot).",
        "",
        "Environments: *default* is the environment as given (this machine type sets",
        "`OPENBLAS_CORETYPE=Haswell`, which pins OpenBLAS to AVX2 kernels on this AVX-512 CPU; tests",
        "and CI run like this); *native* unsets it and `OPENBLAS_L2_SIZE` for the benchmark commands",
        "only. The op tests and the golden check against PyTorch are re-run in each environment",
        "before measuring; their results:",
        "",
    ]
    for kind, vlines in verification.items():
        lines.append(f"- *{kind}*: " + "; ".join(l.strip() for l in vlines))
    lines += [
        "",
        "| case | environment | C images/s | PyTorch images/s | ratio (median) | per-round ratios |",
        "|---|---|---|---|---|---|",
    ]
    labels = {"tiny": "tiny, batch 8, 128x128", "r50": "r50, batch 2, 320x320"}
    for (kind, name), r in results.items():
        lines.append(f"| {labels[name]} | {kind} | {r['c']:.2f} | {r['t']:.2f} | **{r['ratio']:.2f}x** | "
                     + ", ".join(f"{x:.2f}" for x in r["ratios"]) + " |")
    lines += ["", "## Where the C step spends its time", "",
              "Per phase of the last C run: milliseconds per step and achieved GFLOP/s (analytic",
              "FLOPs, multiply-add = 2; see docs/design.md), against the measured sgemm peak",
              "(2048^3, best of 3) of that environment.", ""]
    for (kind, name), r in results.items():
        lines.append(f"**{labels[name]}, {kind}** (sgemm peak {r['peak']:.0f} GFLOP/s, "
                     f"whole step {r['gflops']:.0f} GFLOP/s = {100 * r['gflops'] / r['peak']:.0f}% of peak)")
        lines.append("")
        lines.append("| phase | ms/step | GFLOP/s | % of sgemm peak |")
        lines.append("|---|---|---|---|")
        for ph, v in r["phases"].items():
            pct = f"{100 * v['gflops'] / r['peak']:.0f}%" if v["gflops"] > 0 else "-"
            lines.append(f"| {ph} | {v['ms']:.2f} | {v['gflops']:.1f} | {pct} |")
        lines.append("")
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")
    table = [l for l in lines if l.startswith("|")][:2 + len(results)]
    print("\n".join(table))


if __name__ == "__main__":
    main()
