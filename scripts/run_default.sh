#!/usr/bin/env bash
# The main job on the embedded default: the tiny preset trained on the embedded synthetic
# dataset (generated on first use into the cache) through the data loader, small-image scales.
# (The profiling issue adds --profile and the report.)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
exec "$BUILD/detr-train" --preset tiny --batch 8 --scales 96,112,128 --max-size 213 \
    --resize-choices 64,80,96 --crop 61,96 \
    --epochs "${EPOCHS:-10}" --lr 1e-3 --lr-backbone 1e-3 --dropout 0 --log-every 32 \
    --out "${OUT:-out}" "$@"
