#!/usr/bin/env python3
"""What `detr-train --profile=basic` costs: the tiny preset on the embedded dataset, run with and
without profiling in alternating rounds (off, on, off, on, ...), same seed, same steps.

Metric: the steady-state time per step, (t[N] - t[K]) / (N - K), from the "t" field of train.jsonl
(seconds since the training loop started, taken after the step's record and log line), so it
includes everything profiling adds to a step: ranges, the step record, memory and loader records,
the queue. Steps before K (warm-up: first allocations, the loader's first batches) are left out,
and evaluation is off. The overhead is median(on) / median(off) - 1 over the rounds.

    bench/profile_overhead.py [--build build] [--rounds 5] [--steps 300] [--doc docs/profile-overhead.md]
"""
import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile

from run_bench import machine  # "CPU model, N cores, OS release", as the other benchmark docs

# make run's settings (the embedded dataset, 64x64, with its transform defaults), without evaluation
SETTINGS = ["--preset", "tiny", "--batch", "8", "--eval-every", "0", "--log-every", "100000",
            "--keep-last", "1"]


def step_time(build, out, steps, warmup, profile):
    cmd = [os.path.join(build, "detr-train"), *SETTINGS, "--steps", str(steps), "--epochs", "100",
           "--out", out]
    if profile:
        cmd += ["--profile=basic", "--db", os.path.join(out, "profile.sqlite")]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    t = {}
    with open(os.path.join(out, "train.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            if "step" in row and "t" in row:
                t[row["step"]] = row["t"]
    return (t[steps] - t[warmup]) / (steps - warmup)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default="build")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--doc", default="docs/profile-overhead.md")
    a = ap.parse_args()
    off, on = [], []
    with tempfile.TemporaryDirectory(prefix="detr-prof-overhead-") as tmp:
        for r in range(a.rounds):
            for profile, times in ((False, off), (True, on)):
                out = os.path.join(tmp, "%s-%d" % ("on" if profile else "off", r))
                times.append(step_time(a.build, out, a.steps, a.warmup, profile))
                print("round %d profile %-3s %.2f ms/step" % (r + 1, "on" if profile else "off",
                                                            times[-1] * 1e3), flush=True)
    m_off, m_on = statistics.median(off), statistics.median(on)
    overhead = m_on / m_off - 1
    # run-to-run noise: the spread of the unprofiled rounds around their median
    noise = (max(off) - min(off)) / m_off
    verdict = "within the 2% budget" if overhead <= 0.02 else "ABOVE the 2% budget"
    print("median %.2f ms/step off, %.2f ms/step on: overhead %+.2f%% (%s); spread of the off rounds %.2f%%"
          % (m_off * 1e3, m_on * 1e3, overhead * 100, verdict, noise * 100))
    lines = [
        "# Profiling overhead (`--profile=basic`)",
        "",
        "Measured by `bench/profile_overhead.py` (part of `make bench`) on %s, %s."
        % (datetime.date.today().isoformat(), machine()),
        "",
        "The tiny preset on the embedded synthetic dataset (`%s`), %d steps per run, steps %d..%d timed "
        "from the `t` field of `train.jsonl` (which includes the step's records, ranges and log line), "
        "evaluation off; %d rounds, each an unprofiled run then a profiled one (alternating, so slow "
        "drifts of the machine hit both)."
        % (" ".join(SETTINGS), a.steps, a.warmup, a.steps, a.rounds),
        "",
        "| round | off (ms/step) | on (ms/step) |",
        "| --- | --- | --- |",
    ]
    for r, (x, y) in enumerate(zip(off, on)):
        lines.append("| %d | %.2f | %.2f |" % (r + 1, x * 1e3, y * 1e3))
    lines += [
        "",
        "**Median: %.2f ms/step without profiling, %.2f ms/step with `--profile=basic`: overhead %+.2f%%** "
        "(%s). The unprofiled rounds themselves spread over %.2f%% of their median, the run-to-run noise "
        "of this machine at the time." % (m_off * 1e3, m_on * 1e3, overhead * 100, verdict, noise * 100),
        "",
        "Why it is small: a step's records are copied into a bounded in-memory queue (about 4 us per step, "
        "measured in `tests/unit/test_prof.c`); SQLite runs on a background writer thread at lower "
        "priority (docs/profile-schema.md).",
        "",
    ]
    tmp_doc = a.doc + ".tmp"
    with open(tmp_doc, "w") as f:
        f.write("\n".join(lines))
    os.replace(tmp_doc, a.doc)
    print("wrote", a.doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
