#!/usr/bin/env bash
# gpu_check.sh - the GPU verification of the CUDA build, run by `make gpu-check` (which builds
# with CUDA=1 first), or on a GPU machine with the programs carried in .gpu-deps/ (made by
# scripts/gpu_bundle.sh; docs/gpu-check.md). One prepared run of at most GPU_CHECK_BUDGET seconds
# (default 480):
#   info         nvidia-smi and detr-train --version (the build's CUDA libraries and GPU code)
#   backend_ops  build/tests/test_backend_ops: every CUDA op against the CPU backend
#   input_batch  build/tests/test_input_batch: the uint8 copy-stream path against the CPU, bitwise
#   train50      50 training steps of the tiny preset on the GPU; the loss must fall (mean of the
#                first 5 steps vs the last 5, from OUT/train.jsonl)
#   train50_bf16, train50_fp16  the same with --amp bf16 / --amp fp16; fp16 also reports the
#                steps its loss scaler skipped (train.jsonl update_skipped), fewer than half
#   trace        --profile=trace on the tiny preset: the CUPTI tables non-empty and consistent
#                (scripts/gpu_trace_verdict.py, SQL on the database: every kernel attributed to a
#                phase; kernel time per step within the step; raw rows = per-step aggregates;
#                kernels inside their step on the clock; host-to-device bytes per step = what the
#                data path copies)
#   overhead     steps/s of the r50 preset (512x512, batch 2) without profiling, with
#                --profile=basic and with --profile=trace, alternating; targets 2 % and 10 %
#   oom_budget   golden mode under --mem-limit 4M: exit 3 and the allocator's explanation
#   oom_estimate training under --mem-limit 32M: exit 3 from the start-up estimate (run on the GPU)
#   fixtures     weights/inputs/targets for the golden comparison: build/fixtures/<cfg> if present,
#                else tests/ref/make_fixtures.py (needs torch), else made here (numpy + --save-init)
#   golden_<cfg> forward, losses, gradients and one AdamW step on the GPU vs the CPU (tiny and the
#                small ResNet-50 "r50mini"): every tensor within 1e-3, max|gpu-cpu| / max|cpu|
# Usage: scripts/gpu_check.sh [LOG_DIR]   (default: $OUT, else gpu-check-logs). Full logs go to
# LOG_DIR/<step>.log; the summary table is printed last. Exit 0 when every step passed, 1 when
# one failed, 2 when there is no GPU (immediately) or no CUDA build. Every step has a timeout;
# a failing step does not stop the later ones. The .safetensors files a step writes (weights,
# checkpoints, gradient dumps: hundreds of MB) are deleted once its verdict is logged, the rest at
# the end, unless GPU_CHECK_KEEP=1, so that LOG_DIR (a device session's $OUT) stays small.
# BUILD picks the programs' folder (default build, else .gpu-deps/build); with .gpu-deps/ present
# (GPU_DEPS_DIR), its libraries are made resolvable first (scripts/gpu_bundle.sh env).
# GPU_CHECK_OVERHEAD_ROUNDS (default 3) and GPU_CHECK_OVERHEAD_SECONDS (default 150) bound the
# overhead step.
set -u
cd "$(dirname "$0")/.." || exit 2
DEPS=${GPU_DEPS_DIR:-.gpu-deps} # the bundle of scripts/gpu_bundle.sh, when carried here
if [ -z "${BUILD:-}" ]; then
    BUILD=build
    [ ! -x build/detr-train ] && [ -x "$DEPS/build/detr-train" ] && BUILD=$DEPS/build
fi
TRAIN=$BUILD/detr-train
LOGS=${1:-${OUT:-gpu-check-logs}}
BUDGET=${GPU_CHECK_BUDGET:-480}
THREADS=$(nproc 2>/dev/null || echo 4)

# ---- no GPU, no CUDA build: say so and stop ---------------------------------------------------
if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "gpu_check: no GPU: nvidia-smi is not installed (no NVIDIA driver); nothing was checked" >&2
    exit 2
fi
if ! gpu_list=$(nvidia-smi -L 2>&1) || ! grep -q '^GPU ' <<<"$gpu_list"; then
    echo "gpu_check: no GPU: nvidia-smi -L says: $gpu_list" >&2
    exit 2
fi
if [ -d "$DEPS" ]; then # the carried bundle: its libraries, only those this machine lacks
    if ! bundle_env=$(GPU_DEPS_DIR=$DEPS PY=${PY:-} bash scripts/gpu_bundle.sh env); then
        echo "gpu_check: the libraries of $DEPS cannot be resolved on this machine (above)" >&2
        exit 2
    fi
    eval "$bundle_env"
fi
if [ ! -x "$TRAIN" ] || ! "$TRAIN" --version 2>/dev/null | grep -q 'CUDA runtime'; then
    echo "gpu_check: $TRAIN is missing or was built without CUDA; run make gpu-check (builds with CUDA=1)" >&2
    exit 2
fi
# Python for the verdicts (json, sqlite3; numpy for the golden comparison; torch for the fixtures
# when it is there): $PY, else the first of /usr/bin/python3 and python3 with numpy and torch, then
# with numpy alone (a GPU machine's torch may live in another Python than /usr/bin/python3).
if [ -z "${PY:-}" ]; then
    for want in "numpy, torch" numpy ""; do
        for cand in /usr/bin/python3 python3; do
            if command -v "$cand" >/dev/null 2>&1 && "$cand" -c "import json, sqlite3${want:+, $want}" 2>/dev/null; then
                PY=$cand
                break 2
            fi
        done
    done
    PY=${PY:-python3}
fi
mkdir -p "$LOGS" || { echo "gpu_check: cannot create the log folder $LOGS" >&2; exit 2; }
LOGS=$(cd "$LOGS" && pwd)

# ---- step bookkeeping ---------------------------------------------------------------------------
START=$(date +%s)
names=() statuses=() times=() notes=()
failures=0

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

# record NAME STATUS START_MS NOTE
record() {
    local secs
    secs=$(awk -v ms=$(( $(now_ms) - $3 )) 'BEGIN { printf "%.1f", ms / 1000 }')
    names+=("$1") statuses+=("$2") times+=("$secs") notes+=("$4")
    [ "$2" = FAIL ] && failures=$((failures + 1))
    printf '%-15s %-4s %6ss  %s\n' "$1" "$2" "$secs" "$4"
}

# drop_weights PATH...: deletes the .safetensors files under PATH (GPU_CHECK_KEEP=1: keeps them).
drop_weights() {
    [ "${GPU_CHECK_KEEP:-0}" = 1 ] && return 0
    find "$@" -name '*.safetensors' -type f -delete 2>/dev/null
    return 0
}

# limit WANTED: the seconds a command may take, within what is left of the budget (0: none left).
limit() {
    local left=$(( BUDGET - ($(date +%s) - START) - 5 ))
    if [ "$left" -lt 10 ]; then echo 0; elif [ "$left" -lt "$1" ]; then echo "$left"; else echo "$1"; fi
}

# run SECONDS LOG CMD...: runs CMD with a timeout, appending its output to LOG; returns its exit
# status (124: timed out, 125: no time left in the budget).
run() {
    local secs log=$2 t
    t=$(limit "$1")
    shift 2
    if [ "$t" -eq 0 ]; then echo "(no time left in the ${BUDGET}s budget)" >>"$log"; return 125; fi
    echo "\$ $*   (timeout ${t}s)" >>"$log"
    timeout --kill-after=10 "$t" "$@" >>"$log" 2>&1
}

# ---- info ---------------------------------------------------------------------------------------
step_info() {
    local t0 log=$LOGS/info.log
    t0=$(now_ms)
    : >"$log"
    run 30 "$log" nvidia-smi
    local rc1=$?
    run 30 "$log" "$TRAIN" --version
    local rc2=$?
    cat "$log"
    if [ $rc1 -eq 0 ] && [ $rc2 -eq 0 ]; then record info PASS "$t0" "$(head -n 1 <<<"$gpu_list")"
    else record info FAIL "$t0" "nvidia-smi exit $rc1, detr-train --version exit $rc2 (info.log)"; fi
}

# ---- op-by-op test ------------------------------------------------------------------------------
step_gpu_test() { # NAME TEST: a C test program whose GPU checks must all run and pass
    local name=$1 t0 log=$LOGS/$1.log bin=$BUILD/tests/$2
    t0=$(now_ms)
    : >"$log"
    if [ ! -x "$bin" ]; then record "$name" FAIL "$t0" "$bin was not built"; return; fi
    DETR_BUILD=$BUILD run 180 "$log" "$bin"
    local rc=$? result
    result=$(grep -E '^RESULT passed=' "$log" | tail -n 1)
    local passed failed skipped
    passed=$(sed -nE 's/.*passed=([0-9]+).*/\1/p' <<<"$result")
    failed=$(sed -nE 's/.*failed=([0-9]+).*/\1/p' <<<"$result")
    skipped=$(sed -nE 's/.*skipped=([0-9]+).*/\1/p' <<<"$result")
    if [ $rc -eq 0 ] && [ "${failed:-1}" -eq 0 ] && [ "${passed:-0}" -gt 0 ] && [ "${skipped:-1}" -eq 0 ]; then
        record "$name" PASS "$t0" "$passed passed"
    elif [ $rc -eq 0 ] && [ "${failed:-1}" -eq 0 ]; then
        record "$name" FAIL "$t0" "$passed passed but $skipped skipped: on a GPU nothing may skip ($name.log: grep skip)"
    else
        record "$name" FAIL "$t0" "exit $rc; ${result:-no RESULT line} ($name.log: grep FAIL)"
    fi
}

# ---- 50 training steps on the GPU (float32, bf16, fp16) ----------------------------------------
step_train50() { # NAME [--amp bf16|fp16]
    local name=$1 t0 log=$LOGS/$1.log out=$LOGS/$1
    shift
    t0=$(now_ms)
    : >"$log"
    rm -rf "$out"
    run 180 "$log" "$TRAIN" --device cuda --batch 8 --steps 50 --eval-every 0 --log-every 10 "$@" --out "$out"
    local rc=$?
    if [ $rc -ne 0 ]; then drop_weights "$out"; record "$name" FAIL "$t0" "detr-train exit $rc ($name.log)"; return; fi
    local verdict
    verdict=$("$PY" - "$out/train.jsonl" "$*" "$log" <<'EOF' 2>&1
import json, math, re, sys
path, amp_args, log = sys.argv[1], sys.argv[2], sys.argv[3]
steps = [json.loads(line) for line in open(path) if '"step"' in line]
losses = [s["loss"] for s in steps]
if len(losses) < 10:
    print(f"FAIL only {len(losses)} steps logged"); sys.exit()
if not all(math.isfinite(x) for x in losses):
    print("FAIL a non-finite loss was logged"); sys.exit()
first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
ok, extra = last < first, ""
if "fp16" in amp_args:  # the loss scaler's record: train.jsonl loss_scale / update_skipped
    if not all("update_skipped" in s and "loss_scale" in s for s in steps):
        print("FAIL --amp fp16: train.jsonl lacks loss_scale/update_skipped on some steps"); sys.exit()
    skipped = sum(int(s["update_skipped"]) for s in steps)
    summary = re.search(r"fp16 loss scaling: (\d+) of (\d+) steps skipped", open(log).read())
    agree = summary is None or int(summary.group(1)) == skipped
    ok = ok and skipped < len(steps) / 2 and agree
    extra = (f"; {skipped} of {len(steps)} steps skipped by the loss scaler"
             f"{'' if agree else ' (the end-of-run line says ' + summary.group(1) + ')'}, "
             f"scale {steps[0]['loss_scale']:g} -> {steps[-1]['loss_scale']:g}")
print(f"{'PASS' if ok else 'FAIL'} loss {first:.4f} (steps 1-5) -> {last:.4f} "
      f"(last 5 of {len(losses)}){extra}")
EOF
)
    echo "$verdict" >>"$log"
    drop_weights "$out"
    local last
    last=$(tail -n 1 <<<"$verdict")
    record "$name" "$(cut -d' ' -f1 <<<"$last" | grep -E '^(PASS|FAIL)$' || echo FAIL)" "$t0" \
        "$(cut -d' ' -f2- <<<"$last")"
}

# ---- a traced run: the CUPTI tables, checked with SQL ----------------------------------------
TRACE_STEPS=2:1:4:1 # steps 1-2 skipped, 3 warm-up, 4-7 recorded

# trace_verdict DB JSONL SCHEDULE: the checks, one line each, then "PASS|FAIL <summary>"
# (scripts/gpu_trace_verdict.py; tested on the CPU with synthetic GPU rows by
# tests/unit/test_gpu_trace_verdict.c).
trace_verdict() {
    "$PY" scripts/gpu_trace_verdict.py "$@" 2>&1
}

step_trace() {
    local t0 log=$LOGS/trace.log out=$LOGS/trace
    t0=$(now_ms)
    : >"$log"
    rm -rf "$out"
    run 150 "$log" "$TRAIN" --device cuda --batch 8 --steps 12 --eval-every 0 --log-every 4 \
        --profile=trace --trace-steps "$TRACE_STEPS" --out "$out"
    local rc=$?
    if [ $rc -ne 0 ]; then drop_weights "$out"; record trace FAIL "$t0" "detr-train exit $rc (trace.log)"; return; fi
    local verdict
    verdict=$(trace_verdict "$out/profile.sqlite" "$out/train.jsonl" "$TRACE_STEPS")
    echo "$verdict" >>"$log"
    drop_weights "$out"
    echo "$verdict" | sed -n 's/^  FAIL  /trace: FAIL  /p'
    # the readers on real GPU tables: detr-prof report must produce its page
    local report_rc=0
    if [ -x "$BUILD/detr-prof" ]; then
        run 60 "$log" "$BUILD/detr-prof" report "$out/profile.sqlite" -o "$LOGS/trace_report.html"
        report_rc=$?
    fi
    local last status
    last=$(tail -n 1 <<<"$verdict")
    status=$(cut -d' ' -f1 <<<"$last" | grep -E '^(PASS|FAIL)$' || echo FAIL)
    [ $report_rc -ne 0 ] && status=FAIL last="$last; detr-prof report exit $report_rc"
    record trace "$status" "$t0" "$(cut -d' ' -f2- <<<"$last")"
}

# ---- profiler overhead: steps/s without, with basic, with trace -------------------------------
# The r50 preset on the embedded dataset upscaled to 512x512, batch 2: steps 6-21 are timed (from
# train.jsonl's t), with --trace-steps 4:1:16:1 recording exactly those steps. Rounds rotate the
# order; the overhead is the median over rounds of rate(none) / rate(level) - 1.
OVERHEAD_ARGS=(--device cuda --preset r50 --batch 2 --steps 21 --eval-every 0 --log-every 1000
               --workers 4 --scales 512 --max-size 512 --resize-choices "512,512,512" --crop "512,512")
step_overhead() {
    local t0 log=$LOGS/overhead.log rounds=${GPU_CHECK_OVERHEAD_ROUNDS:-3}
    local allot=${GPU_CHECK_OVERHEAD_SECONDS:-150} scratch r i level start_s took=0 rc
    t0=$(now_ms)
    : >"$log"
    mkdir -p "$LOGS/overhead"
    scratch=$(mktemp -d) || { record overhead FAIL "$t0" "mktemp failed"; return; }
    local levels=(none basic trace)
    start_s=$(date +%s)
    for r in $(seq 1 "$rounds"); do
        for i in 0 1 2; do
            level=${levels[$(( (i + r - 1) % 3 ))]}
            local spent=$(( $(date +%s) - start_s ))
            if [ "$r" -gt 1 ] && [ $(( spent + took + 5 )) -gt "$allot" ]; then
                echo "(round $r $level: not started, ${spent}s of the ${allot}s allotment spent)" >>"$log"
                continue
            fi
            local extra=() t_run
            case $level in
                basic) extra=(--profile=basic) ;;
                trace) extra=(--profile=trace --trace-steps 4:1:16:1) ;;
            esac
            t_run=$(date +%s)
            run 90 "$log" "$TRAIN" "${OVERHEAD_ARGS[@]}" "${extra[@]}" --out "$scratch/$level-$r"
            rc=$?
            took=$(( $(date +%s) - t_run ))
            [ -f "$scratch/$level-$r/train.jsonl" ] && cp "$scratch/$level-$r/train.jsonl" "$LOGS/overhead/$level-$r.jsonl"
            [ $rc -ne 0 ] && echo "(round $r $level: detr-train exit $rc)" >>"$log"
            rm -rf "${scratch:?}/$level-$r" # checkpoints of r50: large, not needed
        done
    done
    rm -rf "$scratch"
    local verdict
    verdict=$("$PY" - "$LOGS/overhead" <<'EOF' 2>&1
import glob, json, os, statistics, sys
rates = {}
for path in glob.glob(os.path.join(sys.argv[1], "*.jsonl")):
    level, rnd = os.path.basename(path)[:-6].split("-")
    t = {r["step"]: r["t"] for r in map(json.loads, (l for l in open(path) if '"step"' in l))}
    if 5 in t and 21 in t and t[21] > t[5]:
        rates.setdefault(level, {})[int(rnd)] = 16 / (t[21] - t[5])
none = rates.get("none", {})
out, ok = [], True
for level, target in (("basic", 0.02), ("trace", 0.10)):
    per = [none[r] / rates[level][r] - 1 for r in sorted(rates.get(level, {})) if r in none]
    if not per:
        out.append(f"{level}: no complete pair of runs"); ok = False; continue
    med = statistics.median(per)
    ok = ok and med <= target
    out.append(f"{level} {100 * med:+.1f}% (target {100 * target:.0f}%; rounds "
               + " ".join(f"{100 * x:+.1f}" for x in per) + ")")
base = f"{statistics.median(none.values()):.2f} steps/s unprofiled" if none else "no unprofiled run"
print(f"{'PASS' if ok else 'FAIL'} " + ", ".join(out) + f"; {base} (r50, 512x512, batch 2)")
EOF
)
    echo "$verdict" >>"$log"
    local last
    last=$(tail -n 1 <<<"$verdict")
    record overhead "$(cut -d' ' -f1 <<<"$last" | grep -E '^(PASS|FAIL)$' || echo FAIL)" "$t0" \
        "$(cut -d' ' -f2- <<<"$last")"
}

# ---- out of memory ------------------------------------------------------------------------------
step_oom_budget() {
    local t0 log=$LOGS/oom_budget.log fx=$1
    t0=$(now_ms)
    : >"$log"
    if [ -z "$fx" ]; then record oom_budget FAIL "$t0" "no tiny fixture (see fixtures)"; return; fi
    run 60 "$log" "$TRAIN" --device cuda --mem-limit 4M --weights "$fx/weights.safetensors" \
        --inputs "$fx/inputs.safetensors" --targets "$fx/targets.json" \
        --dump-grads "$LOGS/oom_budget.safetensors" --steps 1
    local rc=$?
    if [ $rc -eq 3 ] && grep -q 'out of the memory budget (--mem-limit): tried to allocate' "$log" &&
       grep -q 'reserved but unallocated' "$log" && grep -q '^HINT:' "$log"; then
        record oom_budget PASS "$t0" "exit 3 with the allocator's explanation"
    else
        record oom_budget FAIL "$t0" "exit $rc; want 3 and the allocator's explanation (oom_budget.log)"
    fi
}

step_oom_estimate() {
    local t0 log=$LOGS/oom_estimate.log
    t0=$(now_ms)
    : >"$log"
    run 90 "$log" "$TRAIN" --device cuda --batch 8 --steps 2 --eval-every 0 --mem-limit 32M \
        --out "$LOGS/oom_estimate"
    local rc=$?
    if [ $rc -eq 3 ] && grep -q 'does not fit --mem-limit' "$log"; then
        record oom_estimate PASS "$t0" "exit 3: the estimate (measured on the GPU) exceeds 32M"
    else
        record oom_estimate FAIL "$t0" "exit $rc (want 3) or no estimate message (oom_estimate.log)"
    fi
}

# ---- golden fixtures ----------------------------------------------------------------------------
FX_TINY="" FX_R50=""

# make_own_fixture DIR MODEL_ARGS...: weights from detr-train --save-init (one CPU step on the
# embedded dataset), inputs and targets drawn with numpy. No margin against near-ties in the
# matching: a rare mismatch here is not necessarily a GPU error.
make_own_fixture() {
    local dir=$1 log=$2
    shift 2
    mkdir -p "$dir"
    run 120 "$log" "$TRAIN" --threads "$THREADS" --steps 1 --batch 2 --eval-every 0 --num-classes 5 \
        --save-init "$dir/weights.safetensors" --out "$dir/init-run" "$@" || return 1
    run 30 "$log" "$PY" - "$dir" <<'EOF'
import json, os, sys
import numpy as np
sys.path.insert(0, "tests/ref")
from st_io import write_safetensors
d = sys.argv[1]
rng = np.random.default_rng(7)
B, H, W = 2, 96, 80
images = rng.standard_normal((B, 3, H, W)).astype(np.float32)
mask = np.zeros((B, H, W), np.uint8)
images[1, :, 70:, :] = 0; images[1, :, :, 60:] = 0   # image 1 is 70 x 60, padded
mask[1, 70:, :] = 1; mask[1, :, 60:] = 1
write_safetensors(os.path.join(d, "inputs.safetensors"), {"images": images, "mask": mask})
targets = [{"labels": [1, 3], "boxes": [[0.3, 0.4, 0.2, 0.3], [0.7, 0.6, 0.4, 0.25]]},
           {"labels": [2], "boxes": [[0.5, 0.5, 0.3, 0.35]]}]
json.dump(targets, open(os.path.join(d, "targets.json"), "w"))
EOF
}

step_fixtures() {
    local t0 log=$LOGS/fixtures.log how
    t0=$(now_ms)
    : >"$log"
    if [ -f "$BUILD/fixtures/tiny/weights.safetensors" ] && [ -f "$BUILD/fixtures/r50mini/weights.safetensors" ]; then
        FX_TINY=$BUILD/fixtures/tiny FX_R50=$BUILD/fixtures/r50mini how="from $BUILD/fixtures"
    elif [ -f tests/ref/make_fixtures.py ] && "$PY" -c 'import torch, scipy' 2>/dev/null &&
         OMP_NUM_THREADS=$THREADS run 200 "$log" "$PY" tests/ref/make_fixtures.py --out "$LOGS/fixtures" \
             --configs tiny,r50mini --no-f32-proxy; then
        FX_TINY=$LOGS/fixtures/tiny FX_R50=$LOGS/fixtures/r50mini how="made by tests/ref/make_fixtures.py"
    elif make_own_fixture "$LOGS/own/tiny" "$log" --preset tiny &&
         make_own_fixture "$LOGS/own/r50mini" "$log" --preset r50 --hidden 128 --nheads 8 --enc-layers 2 \
             --dec-layers 2 --ffn 256 --queries 12; then
        FX_TINY=$LOGS/own/tiny FX_R50=$LOGS/own/r50mini
        how="made here (no torch; random inputs, no matching-margin guard)"
    fi
    if [ -n "$FX_TINY" ]; then record fixtures PASS "$t0" "$how"
    else record fixtures FAIL "$t0" "none found or made (fixtures.log)"; fi
}

# ---- GPU vs CPU through the golden mode ----------------------------------------------------
step_golden() {
    local cfg=$1 fx=$2 t0 log=$LOGS/golden_$1.log
    t0=$(now_ms)
    : >"$log"
    if [ -z "$fx" ]; then record "golden_$cfg" FAIL "$t0" "no fixture (see fixtures)"; return; fi
    local common=(--weights "$fx/weights.safetensors" --inputs "$fx/inputs.safetensors"
                  --targets "$fx/targets.json" --steps 1)
    run 150 "$log" "$TRAIN" --threads "$THREADS" "${common[@]}" --dump-grads "$LOGS/golden_$cfg.cpu.safetensors"
    local rc_cpu=$?
    run 90 "$log" "$TRAIN" --device cuda "${common[@]}" --dump-grads "$LOGS/golden_$cfg.gpu.safetensors"
    local rc_gpu=$?
    if [ $rc_cpu -ne 0 ] || [ $rc_gpu -ne 0 ]; then
        record "golden_$cfg" FAIL "$t0" "detr-train exit: cpu $rc_cpu, gpu $rc_gpu (golden_$cfg.log)"
        return
    fi
    local verdict
    verdict=$("$PY" - "$LOGS/golden_$cfg.cpu.safetensors" "$LOGS/golden_$cfg.gpu.safetensors" <<'EOF' 2>&1
import sys
import numpy as np
sys.path.insert(0, "tests/ref")
from st_io import read_safetensors
TOL = 1e-3
cpu, gpu = read_safetensors(sys.argv[1]), read_safetensors(sys.argv[2])
if set(cpu) != set(gpu):
    print(f"FAIL different tensors: only cpu {sorted(set(cpu) - set(gpu))[:5]}, "
          f"only gpu {sorted(set(gpu) - set(cpu))[:5]}"); sys.exit()
rows = []
for name in sorted(cpu):
    c, g = cpu[name].astype(np.float64), gpu[name].astype(np.float64)
    if c.shape != g.shape:
        rows.append((float("inf"), name, f"shape {c.shape} vs {g.shape}")); continue
    err = np.abs(g - c).max() / (np.abs(c).max() + 1e-6) if c.size else 0.0
    rows.append((float("inf") if not np.isfinite(err) else float(err), name, ""))
rows.sort(reverse=True)
for err, name, why in rows[:15]:
    print(f"  {err:.3e}  {name} {why}")
bad = [r for r in rows if not r[0] <= TOL]
groups = {k: sum(1 for r in rows if r[1].startswith(k)) for k in ("grad.", "param.")}
print(f"{'FAIL' if bad else 'PASS'} {len(rows)} tensors ({groups['grad.']} grads, {groups['param.']} "
      f"params after 1 step, losses); worst {rows[0][0]:.2e} ({rows[0][1]}); {len(bad)} over {TOL:g}")
EOF
)
    echo "$verdict" >>"$log"
    drop_weights "$LOGS/golden_$cfg.cpu.safetensors" "$LOGS/golden_$cfg.gpu.safetensors"
    local last
    last=$(tail -n 1 <<<"$verdict")
    record "golden_$cfg" "$(cut -d' ' -f1 <<<"$last" | grep -E '^(PASS|FAIL)$' || echo FAIL)" "$t0" \
        "$(cut -d' ' -f2- <<<"$last")"
}

# ---- run everything, summary last ----------------------------------------------------------
echo "== gpu_check: logs in $LOGS, budget ${BUDGET}s"
step_info
step_gpu_test backend_ops test_backend_ops
step_gpu_test input_batch test_input_batch
step_train50 train50
step_train50 train50_bf16 --amp bf16
step_train50 train50_fp16 --amp fp16
step_trace
step_fixtures
step_oom_budget "$FX_TINY"
step_oom_estimate
step_golden tiny "$FX_TINY"
step_golden r50mini "$FX_R50"
step_overhead

# What is left of the weights and dumps (fixtures, the OOM runs) has served its verdicts too.
if [ "${GPU_CHECK_KEEP:-0}" != 1 ]; then
    removed=$(find "$LOGS"/own "$LOGS"/fixtures "$LOGS"/oom_* "$LOGS"/golden_* "$LOGS"/train50* "$LOGS"/trace \
                   -name '*.safetensors' -type f -printf '%s\n' -delete 2>/dev/null | awk '{ n++; b += $1 } END { printf "%d files, %.0f MiB", n, b / 1048576 }')
    echo "(removed the steps' .safetensors files under $LOGS: $removed; GPU_CHECK_KEEP=1 keeps them)"
fi

echo
echo "== gpu_check summary ($(( $(date +%s) - START ))s in all; logs: $LOGS)"
printf '%-15s %-6s %8s  %s\n' step status time note
for i in "${!names[@]}"; do
    printf '%-15s %-6s %7ss  %s\n' "${names[$i]}" "${statuses[$i]}" "${times[$i]}" "${notes[$i]}"
done
if [ "$failures" -gt 0 ]; then
    echo "$failures step(s) FAILED"
    exit 1
fi
echo "all ${#names[@]} steps passed"
exit 0
