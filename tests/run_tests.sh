#!/usr/bin/env bash
# Runs every test and prints the closing line "N passed, N failed" (plus skipped).
# Each C test program prints "RESULT passed=N failed=N skipped=N"; Python-side checks report the
# same way. Fixtures come from the PyTorch reference in tests/ref (Debian's /usr/bin/python3).
set -u
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
export DETR_BUILD=$BUILD
export DETR_FIXTURES=$BUILD/fixtures
PY=/usr/bin/python3
passed=0; failed=0; skipped=0
log=$BUILD/test-logs; mkdir -p "$log"

add_result() { # parse a RESULT line from file $1; a missing line counts as one failure
    local line
    line=$(grep -E '^RESULT passed=' "$1" | tail -n 1)
    if [ -z "$line" ]; then failed=$((failed + 1)); return; fi
    local p f s
    p=$(sed -E 's/.*passed=([0-9]+).*/\1/' <<<"$line")
    f=$(sed -E 's/.*failed=([0-9]+).*/\1/' <<<"$line")
    s=$(sed -E 's/.*skipped=([0-9]+).*/\1/' <<<"$line")
    passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
}

# 1. Reference fixtures (PyTorch). Missing torch/scipy -> the golden tests skip and say why.
if $PY -c 'import torch, scipy, torchvision, PIL' 2>/dev/null; then
    echo "== generating reference fixtures with $PY (torch $($PY -c 'import torch; print(torch.__version__)'))"
    rm -rf "$DETR_FIXTURES"
    if ! OMP_NUM_THREADS=2 $PY tests/ref/make_fixtures.py --out "$DETR_FIXTURES" >"$log/fixtures.log" 2>&1; then
        echo "FAIL fixture generation (see $log/fixtures.log):"; tail -n 20 "$log/fixtures.log"
        failed=$((failed + 1))
    fi
    if ! $PY tests/ref/gen_matcher_cases.py "$DETR_FIXTURES/matcher_cases.bin" >>"$log/fixtures.log" 2>&1 ||
       ! OMP_NUM_THREADS=2 $PY tests/ref/gen_criterion_cases.py "$DETR_FIXTURES/criterion_cases.json" >>"$log/fixtures.log" 2>&1; then
        echo "FAIL matcher/criterion fixture generation (see $log/fixtures.log)"; failed=$((failed + 1))
    fi
    if ! $PY tests/ref/gen_transform_cases.py --out "$DETR_FIXTURES/transforms" >>"$log/fixtures.log" 2>&1; then
        echo "FAIL transform/decode fixture generation (see $log/fixtures.log)"; failed=$((failed + 1))
    fi
    if ! $PY tests/ref/gen_postprocess_cases.py "$DETR_FIXTURES/postprocess_cases.json" >>"$log/fixtures.log" 2>&1; then
        echo "FAIL postprocess fixture generation (see $log/fixtures.log)"; failed=$((failed + 1))
    fi
    $PY tests/ref/check_reference.py >"$log/check_reference.log" 2>&1
    echo "== check_reference.py (self-check of the PyTorch reference)"
    grep -E '^(FAIL|skip) ' "$log/check_reference.log" || true
    add_result "$log/check_reference.log"
else
    echo "skip: /usr/bin/python3 lacks torch, scipy, torchvision or PIL (run scripts/setup.sh); fixture-based tests will skip"
fi

# 2. C test programs.
for t in "$BUILD"/tests/test_*; do
    [ -x "$t" ] || continue
    name=$(basename "$t")
    echo "== $name"
    start=$(date +%s.%N)
    "$t" >"$log/$name.log" 2>&1
    rc=$?
    grep -E '^(ok|FAIL|skip) ' "$log/$name.log" | grep -vE '^ok ' || true
    add_result "$log/$name.log"
    if [ $rc -ne 0 ] && ! grep -q '^FAIL' "$log/$name.log"; then
        echo "FAIL $name exited with status $rc:"; tail -n 20 "$log/$name.log"
        failed=$((failed + 1))
    fi
    printf '   %s: %s (%ss)\n' "$name" "$(grep -E '^RESULT' "$log/$name.log" | tail -n1)" \
        "$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')"
done

echo
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
