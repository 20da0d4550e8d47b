#!/usr/bin/env bash
# The main job on the embedded default: the tiny preset trained on generated synthetic batches.
# (The data loader issue replaces the in-memory batches with the embedded synthetic dataset,
# and the profiling issue adds --profile and the report.)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
exec "$BUILD/detr-train" --preset tiny --num-classes 4 --batch 8 --image-size 64 --steps "${STEPS:-300}" \
    --lr 1e-3 --lr-backbone 1e-3 --dropout 0 --max-objects 1 --log-every 20 --out "${OUT:-out}" "$@"
