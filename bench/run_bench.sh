#!/usr/bin/env bash
# make bench: fixtures for the verification step, then the alternating C / PyTorch benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
if [ ! -d "$BUILD/fixtures/tiny" ]; then
    OMP_NUM_THREADS=2 /usr/bin/python3 tests/ref/make_fixtures.py --out "$BUILD/fixtures"
fi
/usr/bin/python3 bench/run_bench.py --build "$BUILD" "$@"
/usr/bin/python3 bench/run_loader_bench.py --build "$BUILD"
/usr/bin/python3 bench/profile_overhead.py --build "$BUILD"
/usr/bin/python3 bench/fidelity.py --build "$BUILD" --out "$BUILD/fidelity"
