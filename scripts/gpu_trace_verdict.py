#!/usr/bin/env python3
"""gpu_trace_verdict.py - the `trace` step of scripts/gpu_check.sh: checks the database of a
`detr-train --device cuda --profile=trace --trace-steps SCHEDULE` run for consistency, with SQL
on its newest run (docs/gpu-check.md, "The trace checks"): the CUPTI tables non-empty, every
kernel attributed to a phase, the recorded steps = the schedule, raw rows = per-step aggregates,
kernel time per step within the step, kernels inside their step on the clock, host-to-device
bytes per step = what the data path copies.

usage: gpu_trace_verdict.py DB TRAIN_JSONL SCHEDULE
  DB           the run's profile.sqlite
  TRAIN_JSONL  the run's train.jsonl (images and batch_hw of every step)
  SCHEDULE     the --trace-steps the run was given, wait:warmup:active[:repeat]

Prints one line per check ("  ok    ..." / "  FAIL  ..."), then a last line "PASS <summary>" or
"FAIL <the failed checks' names>". Exit 0 on PASS, 1 on FAIL, 2 on bad usage. Standard library
only (json, sqlite3), Python >= 3.8: it runs with whatever Python the GPU machine has.
tests/unit/test_gpu_trace_verdict.c runs it on CPU databases given synthetic GPU rows
(tests/ref/fake_gpu_profile.py), once consistent and once per planted defect."""
import json
import sqlite3
import sys


def main(argv):
    if len(argv) != 4:
        print("usage: gpu_trace_verdict.py DB TRAIN_JSONL SCHEDULE (e.g. trace/profile.sqlite "
              "trace/train.jsonl 2:1:4:1)", file=sys.stderr)
        return 2
    db, jsonl, schedule = argv[1:4]
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        con.execute("SELECT count(*) FROM DETR_RUNS").fetchone()
    except sqlite3.Error as e:
        print(f"FAIL cannot read {db}: {e}")
        return 1

    def q(sql, *a):
        return con.execute(sql, a).fetchall()

    fails = []
    def check(ok, what):
        print(("  ok    " if ok else "  FAIL  ") + what)
        if not ok:
            fails.append(what.split(":")[0].split(" (")[0])

    runs = q("SELECT run_id, level, device, status, global_pid, dropped_records, dropped_gpu_records, "
             "cupti_dropped_records, config_json, end_ns FROM DETR_RUNS ORDER BY run_id DESC LIMIT 1")
    if not runs:
        print(f"FAIL run: {db} holds no run (DETR_RUNS is empty)")
        return 1
    (run_id, level, device, status, gpid, dropped, dropped_gpu, cupti_dropped, cfg, run_end) = runs[0]
    pid = gpid >> 24
    check(level == "trace" and str(device).startswith("cuda") and status == "ok",
          f"run: {run_id}, level {level}, device {device}, status {status}")
    check(dropped == 0 and dropped_gpu == 0 and cupti_dropped == 0,
          f"lost records: queue {dropped}, GPU batches {dropped_gpu}, CUPTI {cupti_dropped}")

    # ---- the tables are there and hold this run's rows ----
    tables = {r[0] for r in q("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")}
    counts = {}
    for table, where, args in [
            ("CUPTI_ACTIVITY_KIND_KERNEL", "globalPid = ?", (gpid,)),
            ("CUPTI_ACTIVITY_KIND_MEMCPY", "globalPid = ?", (gpid,)),
            ("CUPTI_ACTIVITY_KIND_RUNTIME", "(globalTid >> 24) = ?", (pid,)),
            ("CUPTI_ACTIVITY_KIND_SYNCHRONIZATION", "globalPid = ?", (gpid,)),
            ("CUPTI_ACTIVITY_KIND_MEMSET", "globalPid = ?", (gpid,)),
            ("DETR_GPU_CORRELATION", "run_id = ?", (run_id,)),
            ("DETR_GPU_STEPS", "run_id = ?", (run_id,)),
            ("TARGET_INFO_GPU", "vmId = ?", (run_id,)),
            ("ENUM_CUDA_MEMCPY_OPER", "1", ()), ("ENUM_CUDA_MEM_KIND", "1", ())]:
        counts[table] = q(f"SELECT count(*) FROM {table} WHERE {where}", *args)[0][0] if table in tables else None
    optional = {"CUPTI_ACTIVITY_KIND_MEMSET"}  # the trainer fills with kernels; memsets may not occur
    empty = [t for t, n in counts.items() if not n and t not in optional]
    check(not empty, "tables (non-empty): " + ", ".join(f"{t.replace('CUPTI_ACTIVITY_KIND_', '')} {n}"
                                                       for t, n in counts.items()))
    if counts["CUPTI_ACTIVITY_KIND_KERNEL"] and counts["DETR_GPU_STEPS"] and counts["DETR_GPU_CORRELATION"]:
        bad_times = q("SELECT count(*) FROM CUPTI_ACTIVITY_KIND_KERNEL WHERE globalPid = ? AND NOT "
                      "(start > 0 AND \"end\" >= start)", gpid)[0][0]
        check(bad_times == 0, f"kernel times (start > 0, end >= start): {bad_times} rows wrong")

        # ---- attribution: every kernel to a phase ----
        orphans = q("SELECT count(*) FROM CUPTI_ACTIVITY_KIND_KERNEL k WHERE k.globalPid = ? AND NOT EXISTS "
                    "(SELECT 1 FROM DETR_GPU_CORRELATION c WHERE c.run_id = ? AND c.correlationId = k.correlationId)",
                    gpid, run_id)[0][0]
        by_phase = q("SELECT p.value, count(*) FROM CUPTI_ACTIVITY_KIND_KERNEL k JOIN DETR_GPU_CORRELATION c "
                     "ON c.run_id = ? AND c.correlationId = k.correlationId JOIN StringIds p ON p.id = c.name_id "
                     "WHERE k.globalPid = ? GROUP BY 1 ORDER BY 2 DESC", run_id, gpid)
        check(orphans == 0, "attribution (every traced kernel has a phase in DETR_GPU_CORRELATION): "
              f"{orphans} without; "
              + ", ".join(f"{p} {n}" for p, n in by_phase))
        steps = dict(q("SELECT step, wall_ns FROM DETR_STEPS WHERE run_id = ?", run_id))
        if not steps:
            print("FAIL steps: DETR_STEPS has no rows for the run")
            return 1
        unattributed = q("SELECT coalesce(sum(g.count), 0) FROM DETR_GPU_STEPS g JOIN StringIds s ON s.id = g.phase_id "
                         "WHERE g.run_id = ? AND g.activity = 'kernel' AND s.value = 'unattributed' AND g.step IN "
                         "(SELECT step FROM DETR_STEPS WHERE run_id = ?)", run_id, run_id)[0][0]
        gpu_steps = {r[0] for r in q("SELECT DISTINCT step FROM DETR_GPU_STEPS WHERE run_id = ? AND activity = "
                                     "'kernel'", run_id)}
        check(unattributed == 0 and set(steps) <= gpu_steps,
              f"aggregates (every step has kernels, none unattributed): {unattributed} unattributed kernels in "
              f"steps; steps without kernel rows: {sorted(set(steps) - gpu_steps)}; steps outside DETR_STEPS: "
              f"{sorted(gpu_steps - set(steps) - {-1})}")

        # ---- the recorded steps follow --trace-steps ----
        w, wu, a, *rest = (int(x) for x in schedule.split(":"))
        repeat, first = (rest[0] if rest else 0), min(steps)
        expected, k = set(), 0
        while (repeat == 0 or k < repeat) and first + k * (w + wu + a) <= max(steps):
            base = first + k * (w + wu + a) + w + wu
            expected |= {s for s in range(base, base + a) if s in steps}
            k += 1
        recorded = {r[0] for r in q("SELECT DISTINCT step FROM DETR_GPU_CORRELATION WHERE run_id = ?", run_id)}
        check(recorded == expected, f"schedule (recorded steps = --trace-steps {schedule}): {sorted(recorded)} "
              f"(expected {sorted(expected)})")

        # ---- raw rows = aggregates, for every recorded step ----
        mism = []
        for s in sorted(recorded):
            raw = q("SELECT count(*), coalesce(sum(k.\"end\" - k.start), 0) FROM CUPTI_ACTIVITY_KIND_KERNEL k "
                    "JOIN DETR_GPU_CORRELATION c ON c.run_id = ? AND c.correlationId = k.correlationId "
                    "WHERE k.globalPid = ? AND c.step = ?", run_id, gpid, s)[0]
            agg = q("SELECT coalesce(sum(count), 0), coalesce(sum(total_ns), 0) FROM DETR_GPU_STEPS "
                    "WHERE run_id = ? AND step = ? AND activity = 'kernel'", run_id, s)[0]
            rawc = q("SELECT coalesce(sum(m.bytes), 0) FROM CUPTI_ACTIVITY_KIND_MEMCPY m JOIN DETR_GPU_CORRELATION c "
                     "ON c.run_id = ? AND c.correlationId = m.correlationId WHERE m.globalPid = ? AND c.step = ?",
                     run_id, gpid, s)[0][0]
            aggc = q("SELECT coalesce(sum(bytes), 0) FROM DETR_GPU_STEPS WHERE run_id = ? AND step = ? AND "
                     "activity = 'memcpy'", run_id, s)[0][0]
            if tuple(raw) != tuple(agg) or rawc != aggc:
                mism.append(f"step {s}: kernels raw {tuple(raw)} vs aggregate {tuple(agg)}, "
                            f"copy bytes {rawc} vs {aggc}")
        check(not mism, "raw = aggregates (kernel count and time, copy bytes of the recorded steps in DETR_GPU_STEPS)"
              + (": " + "; ".join(mism[:3]) if mism else ": equal"))

        # ---- kernel time per step <= step time ----
        # Kernels of one stream run one after another, and the host waits for them before the step
        # ends (logits download, gradient norm), except the optimizer's, which may finish in the next
        # step: kernel time - optimizer kernel time <= wall time, per step.
        kern = dict(q("SELECT step, sum(total_ns) FROM DETR_GPU_STEPS WHERE run_id = ? AND activity = 'kernel' "
                      "GROUP BY step", run_id))
        opt = dict(q("SELECT g.step, sum(g.total_ns) FROM DETR_GPU_STEPS g JOIN StringIds s ON s.id = g.phase_id "
                     "WHERE g.run_id = ? AND g.activity = 'kernel' AND s.value = 'optimizer' GROUP BY g.step", run_id))
        over = [(s, kern.get(s, 0), opt.get(s, 0), wall) for s, wall in sorted(steps.items())
                if kern.get(s, 0) - opt.get(s, 0) > wall]
        worst = max(steps, key=lambda s: kern.get(s, 0) / steps[s])
        check(not over, f"kernel time <= step time: busiest step {worst}: "
              f"{kern.get(worst, 0) / 1e6:.2f} ms of kernels in {steps[worst] / 1e6:.2f} ms"
              + "".join(f"; step {s}: {k / 1e6:.2f} ms kernels ({o / 1e6:.2f} optimizer) > {wl / 1e6:.2f} ms"
                        for s, k, o, wl in over[:3]))

        # ---- one clock: the kernels of a recorded step run between its start and the next step's end ----
        bounds = q("SELECT step, start_ns, end_ns FROM DETR_STEPS WHERE run_id = ? ORDER BY step", run_id)
        nxt = {bounds[i][0]: bounds[i + 1][2] for i in range(len(bounds) - 1)}
        slack, outside = 2_000_000, []
        for s, start, _ in bounds:
            if s not in recorded:
                continue
            lo, hi = q("SELECT min(k.start), max(k.\"end\") FROM CUPTI_ACTIVITY_KIND_KERNEL k "
                       "JOIN DETR_GPU_CORRELATION c "
                       "ON c.run_id = ? AND c.correlationId = k.correlationId WHERE k.globalPid = ? AND c.step = ?",
                       run_id, gpid, s)[0]
            limit = nxt.get(s) or run_end
            if lo is None or lo < start - slack or (limit and hi > limit + slack):
                outside.append(f"step {s}: kernels {lo}..{hi}, step from {start}, next step ends {limit}")
        check(not outside, "clock (kernels of a recorded step between its start and the next step's end: CUPTI's "
              "clock = the profiler's CLOCK_REALTIME, 2 ms slack)"
              + (": " + "; ".join(outside[:2]) if outside else ": yes"))

        # ---- host-to-device bytes per step = what the data path copies ----
        # Per step (tiny preset, float32, one micro-batch, --gpu-preprocess on):
        #   h2d phase: the uint8 images [B, 3, H, W] and the uint8 mask [B, H, W] (the copy stream);
        #   backbone:  the downsampled mask [B, S] (uint8) and the sine position encoding [B*S, D] (float);
        #   backward:  the loss gradients of logits [L*B*Q, C+1] and boxes [L*B*Q, 4] (float).
        # Targets stay on the host (matching and loss run there).
        model = json.loads(cfg)["model"]
        D, Q, L, C1 = model["hidden"], model["queries"], model["dec_layers"], model["num_classes"] + 1
        halvings = 5 - (1 if model.get("dilation") else 0)
        logged = {}
        with open(jsonl) as lines:
            for line in lines:
                if '"step"' in line:
                    r = json.loads(line)
                    logged[r["step"]] = (r["images"], r["batch_hw"][0], r["batch_hw"][1])
        htod = {}
        for s, phase, nbytes in q("SELECT g.step, p.value, sum(g.bytes) FROM DETR_GPU_STEPS g JOIN StringIds p "
                                  "ON p.id = g.phase_id WHERE g.run_id = ? AND g.activity = 'memcpy' "
                                  "AND g.copy_kind = 1 "
                                  "GROUP BY 1, 2", run_id):
            htod.setdefault(s, {})[phase] = nbytes
        bad_h2d, bad_total, shown = [], [], None
        for s in sorted(steps):
            if s not in logged:
                bad_h2d.append(f"step {s} not in train.jsonl"); continue
            B, H, W = logged[s]
            h, w = H, W
            for _ in range(halvings):
                h, w = (h + 1) // 2, (w + 1) // 2
            S, T = h * w, L * B * Q
            want_u8 = B * 3 * H * W + B * H * W
            want = {"h2d": want_u8, "backbone": B * S + B * S * D * 4, "backward": T * C1 * 4 + T * 4 * 4}
            got = htod.get(s, {})
            if got.get("h2d", 0) != want_u8:
                bad_h2d.append(f"step {s}: h2d {got.get('h2d', 0)} B, want {want_u8} ({B} x (3+1) x {H} x {W})")
            if s > min(steps) and sum(got.values()) != sum(want.values()):
                bad_total.append(f"step {s}: {sum(got.values())} B, want {sum(want.values())}")
                shown = shown or (s, got, want)
        check(not bad_h2d, "h2d bytes (= the batch's uint8 images + mask, every step)"
              + (": " + "; ".join(bad_h2d[:3]) if bad_h2d else f": {want_u8} B per step"))
        check(not bad_total, "HtoD bytes per step (= h2d + backbone: mask and position encoding + backward: loss "
              "gradients; steps after the first)" + (": " + "; ".join(bad_total[:3]) if bad_total else ": equal"))
        if shown:
            s, got, want = shown
            print(f"        step {s} HtoD bytes by phase: got {dict(sorted(got.items()))}, want {want}")
    print(("FAIL " + ", ".join(fails)) if fails else
          f"PASS {counts['CUPTI_ACTIVITY_KIND_KERNEL']} kernels, {counts['CUPTI_ACTIVITY_KIND_MEMCPY']} copies in "
          f"the recorded steps, all attributed and consistent")
    return 1 if fails else 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except (OSError, sqlite3.Error, ValueError, KeyError, IndexError, TypeError) as e:
        # a missing train.jsonl, a table or column missing, a malformed schedule or config:
        # still a verdict line, naming the error
        print(f"FAIL the checks stopped: {type(e).__name__}: {e}")
        sys.exit(1)
