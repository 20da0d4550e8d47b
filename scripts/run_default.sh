#!/usr/bin/env bash
# The main job on the embedded default: the tiny preset trained on the embedded synthetic
# dataset (generated on first use into the cache) through the data loader, with small-image
# transforms, COCO evaluation of the val split after every epoch, and profiling into
# OUT/profile.sqlite.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
OUT=${OUT:-out}
"$BUILD/detr-train" --preset tiny --batch 8 --scales 96,112,128 --max-size 213 \
    --resize-choices 64,80,96 --crop 61,96 --val-size 128 \
    --epochs "${EPOCHS:-10}" --lr 1e-3 --lr-backbone 1e-3 --dropout 0 --log-every 32 \
    --profile --out "$OUT" "$@"
echo "database: $OUT/profile.sqlite (schema: docs/profile-schema.md)"
