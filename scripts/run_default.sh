#!/usr/bin/env bash
# The main job on the embedded default: the tiny preset trained from random weights on the
# embedded synthetic dataset (2048 + 128 images of 64x64, generated on first use into the cache)
# through the data loader, COCO evaluation of the val split after every epoch, and profiling
# into OUT/profile.sqlite. The preset's and the dataset's defaults were chosen so that the loss
# falls and the val AP rises within minutes on 2 cores: docs/make-run.md.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
OUT=${OUT:-out}
"$BUILD/detr-train" --preset tiny --batch 8 --epochs "${EPOCHS:-15}" --log-every 256 \
    --profile --out "$OUT" "$@"
echo "database: $OUT/profile.sqlite (schema: docs/profile-schema.md)"
if [ -x "$BUILD/detr-prof" ] && "$BUILD/detr-prof" report "$OUT/profile.sqlite" -o "$OUT/report.html" >/dev/null; then
    echo "report: $OUT/report.html (open it in a browser; works offline)"
fi
