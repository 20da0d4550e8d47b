"""fake_gpu_profile.py - turns the database of a CPU `detr-train --profile=trace` run into what
the same run on a GPU would write, so that scripts/gpu_trace_verdict.py (the `trace` step of
scripts/gpu_check.sh) can be tested without a GPU (tests/unit/test_gpu_trace_verdict.c).

usage: fake_gpu_profile.py SRC_DB DST_DB TRAIN_JSONL --recorded STEPS [--defect NAME]
  SRC_DB       profile.sqlite of a CPU run with --profile=trace (left unchanged)
  DST_DB       the GPU-like copy to write (must not exist)
  TRAIN_JSONL  the run's train.jsonl: images and batch_hw of every step
  --recorded   the steps the run's --trace-steps schedule records, e.g. 4,5,6,7 (the test takes
               them from the trainer's own schedule code, profiler/prof_schedule.c)
  --defect     plant one defect (below) that the verdict must catch

What it adds to the copy (docs/gpu-profiling.md has the tables, docs/gpu-check.md the checks):
  - DETR_RUNS.device 'cuda:0'; one TARGET_INFO_GPU row; the CUPTI_ACTIVITY_KIND_* and ENUM_*
    tables, created with the DDL of profiler/prof_schema.c (read from the source, so they follow
    the schema);
  - per step, the trainer's GPU phases step, h2d, backbone, encoder, decoder, heads, backward, clip,
    optimizer, each with 3 kernels, laid out one after another in equal slots of the step's
    DETR_STEPS window (kernel time is well below the step's wall time). Their DETR_GPU_STEPS
    aggregates are written for every step, as at both profile levels;
  - the host-to-device copies the data path makes (what the verdict's byte checks expect): h2d:
    the uint8 images B x 3 x H x W and mask B x H x W; backbone: the downsampled mask B x S bytes and
    the position encoding B*S x D floats (S = H x W halved 5 times, 4 with dilation, rounding up);
    backward: the loss gradients of logits L*B*Q x (C+1) and boxes L*B*Q x 4 floats (B, H, W from
    train.jsonl; D, Q, L, C from the run's config_json);
  - work before the first step (model set-up): unattributed kernels and the weights' upload at
    step -1, in the aggregates only;
  - for the --recorded steps only, the raw rows: a kernel, a runtime call
    (cudaLaunchKernel_v7000 on the training thread) and a DETR_GPU_CORRELATION row per kernel
    (externalId (step + 1) << 8 | the phase's PROF_PHASE_* value from profiler/prof.h); a memcpy
    and a correlation row per copy; one stream synchronisation at the step's end.
Without --defect the result is consistent: the verdict must say PASS.

Defects. T is the first recorded step after the run's first step, U the last step that is not
recorded; the checks of scripts/gpu_trace_verdict.py each one trips are in brackets:
  orphan            one encoder kernel of step T has no DETR_GPU_CORRELATION row
                    [attribution; raw = aggregates, as its step loses a raw kernel]
  unattributed      step U's aggregates hold an 'unattributed' kernel (launched outside every
                    phase range) [aggregates]
  slow_kernel       every kernel of step T lasts until the step's end: they stay inside the step
                    but add up to several times its wall time, which one stream cannot do
                    [kernel time <= step time]
  clock             the kernels of step T are 1000 s early, as if CUPTI used another clock [clock]
  extra_copy        step T's backbone phase uploads 4 bytes more than the data path does (raw row
                    and aggregate agree) [HtoD bytes per step]
  agg_bytes         step T's h2d aggregate counts 1 byte more than its raw copies
                    [raw = aggregates; h2d bytes; HtoD bytes per step]
  lost              DETR_RUNS.cupti_dropped_records = 3 [lost records]
  no_sync           no CUPTI_ACTIVITY_KIND_SYNCHRONIZATION rows [tables]
  backwards_kernel  one kernel of step T ends before it starts (its aggregate agrees)
                    [kernel times]
  warmup_kept       the warm-up step before the first recorded step keeps its raw rows, as if
                    the schedule's discard were lost [schedule]
Exit 0 when written, 2 on bad usage or input (the message names the file and what is wrong).
Standard library only."""
import argparse
import json
import os
import re
import sqlite3
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GPU_PHASES = ["step", "h2d", "backbone", "encoder", "decoder", "heads", "backward", "clip", "optimizer"]
KERNELS_PER_PHASE = 3
DEFECTS = ["orphan", "unattributed", "slow_kernel", "clock", "extra_copy", "agg_bytes", "lost", "no_sync",
           "backwards_kernel", "warmup_kept"]
COPY_HTOD, MEM_PINNED, MEM_DEVICE, SYNC_STREAM = 1, 1, 2, 3  # ENUM_CUDA_MEMCPY_OPER, _MEM_KIND, _CUPTI_SYNC_TYPE
EXTERNAL_CUSTOM0 = 3


class BadInput(Exception):
    pass


def c_string_literals(text):
    """The statements of a C array of SQL strings: each is adjacent literals, joined."""
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    statements = []
    for m in re.finditer(r'((?:\s*"(?:[^"\\]|\\.)*")+)\s*[,;}]', text):
        parts = re.findall(r'"((?:[^"\\]|\\.)*)"', m.group(1))
        statements.append(re.sub(r"\\(.)", r"\1", "".join(parts)))
    return statements


def schema_ddl():
    """(CUPTI tables' statements, TARGET_INFO_GPU's CREATE) from profiler/prof_schema.c."""
    path = os.path.join(REPO, "profiler", "prof_schema.c")
    try:
        with open(path) as f:
            src = f.read()
    except OSError as e:
        raise BadInput(f"cannot read {path} (the schema's DDL): {e}")
    found = {}
    for name, opener, closer in (("cupti", "static const char *const cupti_tables_sql[] = {", "};"),
                                 ("gpu", "static const char *const gpu_table_sql =", ";")):
        at = src.find(opener)
        if at < 0:
            raise BadInput(f"{path}: '{opener}' not found; update fake_gpu_profile.py to the schema's code")
        body = src[at + len(opener):src.index(closer, at + len(opener)) + 1]
        found[name] = c_string_literals(body)
        if not found[name] or not all(s.lstrip().startswith(("CREATE", "INSERT")) for s in found[name]):
            raise BadInput(f"{path}: cannot read the SQL after '{opener}'")
    return found["cupti"], found["gpu"][0]


def phase_ids():
    """Phase name -> PROF_PHASE_* value, from the enum in profiler/prof.h."""
    path = os.path.join(REPO, "profiler", "prof.h")
    try:
        with open(path) as f:
            src = f.read()
    except OSError as e:
        raise BadInput(f"cannot read {path}: {e}")
    m = re.search(r"PROF_PHASE_STEP\s*=\s*0,(.*?)PROF_PHASE_COUNT", src, re.S)
    if not m:
        raise BadInput(f"{path}: the PROF_PHASE_* enum (PROF_PHASE_STEP = 0 ... PROF_PHASE_COUNT) not found")
    body = re.sub(r"/\*.*?\*/", "", m.group(1), flags=re.S)
    names = ["step"] + [n.lower() for n in re.findall(r"PROF_PHASE_([A-Z0-9_]+)", body)]
    missing = [p for p in GPU_PHASES if p not in names]
    if missing:
        raise BadInput(f"{path}: no PROF_PHASE_* for {missing}")
    return {n: i for i, n in enumerate(names)}


def logged_steps(path):
    """step -> (images, H, W) from train.jsonl."""
    out = {}
    try:
        with open(path) as f:
            for n, line in enumerate(f, 1):
                if '"step"' not in line:
                    continue
                r = json.loads(line)
                out[r["step"]] = (r["images"], r["batch_hw"][0], r["batch_hw"][1])
    except OSError as e:
        raise BadInput(f"cannot read {path}: {e}")
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise BadInput(f"{path}:{n}: not a train.jsonl step line (needs step, images, batch_hw): {e}")
    return out


class Writer:
    def __init__(self, con, run_id, gpid, defect):
        self.con, self.run_id, self.gpid, self.defect = con, run_id, gpid, defect
        self.corr = 1000  # CUPTI correlation ids: unique within the process

    def sid(self, value):
        r = self.con.execute("SELECT id FROM StringIds WHERE value = ?", (value,)).fetchone()
        if r:
            return r[0]
        nid = self.con.execute("SELECT coalesce(max(id), 0) + 1 FROM StringIds").fetchone()[0]
        self.con.execute("INSERT INTO StringIds (id, value) VALUES (?, ?)", (nid, value))
        return nid

    def next_corr(self):
        self.corr += 1
        return self.corr

    def correlation(self, corr, step, external_id, phase):
        self.con.execute("INSERT INTO DETR_GPU_CORRELATION (run_id, correlationId, externalKind, externalId, "
                         "step, name_id) VALUES (?, ?, ?, ?, ?, ?)",
                         (self.run_id, corr, EXTERNAL_CUSTOM0, external_id, step, self.sid(phase)))

    def kernel(self, corr, start, end, tid):
        self.con.execute(
            "INSERT INTO CUPTI_ACTIVITY_KIND_KERNEL (start, \"end\", deviceId, contextId, streamId, correlationId, "
            "globalPid, demangledName, shortName, registersPerThread, gridX, gridY, gridZ, blockX, blockY, blockZ, "
            "staticSharedMemory, dynamicSharedMemory, localMemoryPerThread, localMemoryTotal, gridId, "
            "sharedMemoryExecuted) VALUES (?, ?, 0, 1, 7, ?, ?, ?, ?, 32, 1, 1, 1, 256, 1, 1, 0, 0, 0, 0, ?, 0)",
            (start, end, corr, self.gpid, self.sid("void gemm_kernel<float>(float const*, float*, int)"),
             self.sid("gemm_kernel"), corr))
        self.con.execute("INSERT INTO CUPTI_ACTIVITY_KIND_RUNTIME (start, \"end\", eventClass, globalTid, "
                         "correlationId, nameId, returnValue) VALUES (?, ?, 0, ?, ?, ?, 0)",
                         (start - 500, start - 100, tid, corr, self.sid("cudaLaunchKernel_v7000")))

    def memcpy(self, corr, start, nbytes):
        self.con.execute("INSERT INTO CUPTI_ACTIVITY_KIND_MEMCPY (start, \"end\", deviceId, contextId, streamId, "
                         "correlationId, globalPid, bytes, copyKind, srcKind, dstKind) VALUES "
                         "(?, ?, 0, 1, 8, ?, ?, ?, ?, ?, ?)",
                         (start, start + 100, corr, self.gpid, nbytes, COPY_HTOD, MEM_PINNED, MEM_DEVICE))

    def aggregate(self, step, phase, activity, copy_kind, count, total_ns, nbytes):
        self.con.execute("INSERT INTO DETR_GPU_STEPS (run_id, step, phase_id, activity, copy_kind, count, "
                         "total_ns, bytes) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         (self.run_id, step, self.sid(phase), activity, copy_kind, count, total_ns, nbytes))


def uploads(model, images, H, W):
    """Phase -> the host-to-device copies (bytes each) of one step of the data path."""
    D, Q, L, C1 = model["hidden"], model["queries"], model["dec_layers"], model["num_classes"] + 1
    h, w = H, W
    for _ in range(5 - (1 if model.get("dilation") else 0)):
        h, w = (h + 1) // 2, (w + 1) // 2
    S, T = h * w, L * images * Q
    return {"h2d": [images * 3 * H * W, images * H * W], "backbone": [images * S, images * S * D * 4],
            "backward": [T * C1 * 4, T * 4 * 4]}


def make(src, dst, jsonl, recorded, defect):
    if os.path.exists(dst):
        raise BadInput(f"{dst} exists; remove it or give another path")
    cupti_ddl, gpu_info_ddl = schema_ddl()
    ids = phase_ids()
    logged = logged_steps(jsonl)
    con = sqlite3.connect(dst)
    try:
        copy_and_fill(con, src, jsonl, recorded, defect, cupti_ddl, gpu_info_ddl, ids, logged)
    finally:
        con.close()


def copy_and_fill(con, src, jsonl, recorded, defect, cupti_ddl, gpu_info_ddl, ids, logged):
    try:
        source = sqlite3.connect(f"file:{src}?mode=ro", uri=True)
        try:
            source.backup(con)
        finally:
            source.close()
        runs = con.execute("SELECT run_id, global_pid, level, config_json FROM DETR_RUNS "
                           "ORDER BY run_id DESC LIMIT 1").fetchall()
    except sqlite3.Error as e:
        raise BadInput(f"{src}: not a profile database: {e}")
    if not runs:
        raise BadInput(f"{src}: DETR_RUNS is empty")
    run_id, gpid, level, config = runs[0]
    if level != "trace":
        raise BadInput(f"{src}: run {run_id} has level {level}; make it with --profile=trace")
    model = json.loads(config)["model"]
    steps = con.execute("SELECT step, start_ns, end_ns FROM DETR_STEPS WHERE run_id = ? ORDER BY step",
                        (run_id,)).fetchall()
    if len(steps) < 2:
        raise BadInput(f"{src}: run {run_id} has {len(steps)} steps in DETR_STEPS; at least 2 are needed")
    numbers = [s for s, _, _ in steps]
    if not recorded <= set(numbers):
        raise BadInput(f"--recorded {sorted(recorded)}: steps {sorted(recorded - set(numbers))} are not in "
                       f"DETR_STEPS (steps {numbers[0]}..{numbers[-1]})")
    absent = [s for s in numbers if s not in logged]
    if absent:
        raise BadInput(f"{jsonl}: no line for steps {absent}")
    later = sorted(s for s in recorded if s > numbers[0])
    quiet = [s for s in numbers if s not in recorded]
    if defect and not later:
        raise BadInput(f"--defect {defect} needs a recorded step after the run's first")
    target = later[0] if later else None
    quiet_step = quiet[-1] if quiet else target
    if defect == "warmup_kept":
        warmup = min(recorded) - 1
        if warmup not in numbers or warmup in recorded:
            raise BadInput("--defect warmup_kept needs an unrecorded step just before the first recorded one")
        recorded = recorded | {warmup}
    tid = con.execute("SELECT global_tid FROM DETR_PHASES WHERE run_id = ? AND depth = 0 AND global_tid IS NOT "
                      "NULL LIMIT 1", (run_id,)).fetchone()
    tid = tid[0] if tid else gpid | (gpid >> 24)

    for sql in cupti_ddl + [gpu_info_ddl]:
        con.execute(sql)
    con.execute("INSERT INTO TARGET_INFO_GPU (vmId, id, name) VALUES (?, 0, ?)",
                (run_id, "synthetic GPU (tests/ref/fake_gpu_profile.py)"))
    con.execute("UPDATE DETR_RUNS SET device = 'cuda:0' WHERE run_id = ?", (run_id,))
    if defect == "lost":
        con.execute("UPDATE DETR_RUNS SET cupti_dropped_records = 3 WHERE run_id = ?", (run_id,))
    out = Writer(con, run_id, gpid, defect)

    # model set-up, before the first step: aggregates only (no phase, no recorded step)
    out.aggregate(-1, "unattributed", "kernel", -1, 40, 2_000_000, 0)
    out.aggregate(-1, "unattributed", "memcpy", COPY_HTOD, 60, 600_000, 4 * 1024 * 1024)

    for step, s0, s1 in steps:
        raw = step in recorded
        copies = uploads(model, *logged[step])
        if defect == "extra_copy" and step == target:
            copies["backbone"].append(4)
        slot = (s1 - s0) // (len(GPU_PHASES) + 1)
        for i, phase in enumerate(GPU_PHASES):
            external_id = (step + 1) << 8 | ids[phase]
            count, total = 0, 0
            for j in range(KERNELS_PER_PHASE):
                corr = out.next_corr()
                start = s0 + i * slot + j * (slot // 4) + 1000
                end = start + slot // 8
                if step == target and defect == "slow_kernel":
                    end = s1
                if step == target and defect == "clock":
                    start, end = start - 10**12, end - 10**12
                if step == target and defect == "backwards_kernel" and i == j == 0:
                    end = start - 1000
                count, total = count + 1, total + end - start
                if raw:
                    if not (defect == "orphan" and step == target and phase == "encoder" and j == 0):
                        out.correlation(corr, step, external_id, phase)
                    out.kernel(corr, start, end, tid)
            out.aggregate(step, phase, "kernel", -1, count, total, 0)
            if phase in copies:
                nbytes = 0
                for k, size in enumerate(copies[phase]):
                    corr = out.next_corr()
                    nbytes += size
                    if raw:
                        out.correlation(corr, step, external_id, phase)
                        out.memcpy(corr, s0 + i * slot + 200 * k, size)
                if defect == "agg_bytes" and step == target and phase == "h2d":
                    nbytes += 1
                out.aggregate(step, phase, "memcpy", COPY_HTOD, len(copies[phase]), 100 * len(copies[phase]), nbytes)
        if defect == "unattributed" and step == quiet_step:
            out.aggregate(step, "unattributed", "kernel", -1, 1, 10_000, 0)
        if raw and defect != "no_sync":
            con.execute("INSERT INTO CUPTI_ACTIVITY_KIND_SYNCHRONIZATION (start, \"end\", deviceId, contextId, "
                        "streamId, correlationId, globalPid, syncType) VALUES (?, ?, 0, 1, 7, ?, ?, ?)",
                        (s1 - 2000, s1 - 1000, out.next_corr(), gpid, SYNC_STREAM))
    con.commit()


def steps_list(text):
    try:
        steps = {int(x) for x in text.split(",") if x.strip()}
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}': want step numbers separated by commas, e.g. 4,5,6,7")
    if not steps:
        raise argparse.ArgumentTypeError("no step given")
    return steps


def main():
    ap = argparse.ArgumentParser(description="Turns a CPU --profile=trace database into what a GPU run "
                                 "would write, optionally with one defect (the docstring lists them).")
    ap.add_argument("src_db")
    ap.add_argument("dst_db")
    ap.add_argument("train_jsonl")
    ap.add_argument("--recorded", type=steps_list, required=True,
                    help="the steps --trace-steps records, e.g. 4,5,6,7")
    ap.add_argument("--defect", choices=DEFECTS, help="plant this defect")
    a = ap.parse_args()
    existed = os.path.exists(a.dst_db)
    try:
        make(a.src_db, a.dst_db, a.train_jsonl, a.recorded, a.defect)
    except (BadInput, sqlite3.Error, KeyError, ValueError, TypeError) as e:
        why = e if isinstance(e, BadInput) else f"{a.src_db}: unexpected content ({type(e).__name__}: {e})"
        print(f"fake_gpu_profile.py: {why}", file=sys.stderr)
        if not existed:  # no half-made copy left behind
            for leftover in (a.dst_db + suffix for suffix in ("", "-journal", "-wal", "-shm")):
                if os.path.exists(leftover):
                    os.remove(leftover)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
