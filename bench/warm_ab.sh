#!/usr/bin/env bash
# Two flowers binaries side by side on the two runs a user repeats most: a warm retrain
# (every bottleneck cached) and `label` on one photo.
#
#   bench/warm_ab.sh OLD_BINARY NEW_BINARY [IMAGE_DIR] [ROUNDS] [BOTTLENECK_DIR]
#
# IMAGE_DIR       one sub-folder per class (default: ../shared/data/flower_photos)
# ROUNDS          alternated rounds (default: 10)
# BOTTLENECK_DIR  a cache both binaries share (default: a fresh one, filled once by OLD
#                 before the rounds; the binaries must agree on the cache format)
#
# Each round runs, for both binaries back to back (the order swapped every round, so the
# machine's drifting speed hits both alike):
#   warm   `flowers retrain` with every bottleneck cached (4000 steps, the graph written)
#   label  `flowers label` on one photo with the graph OLD wrote (whole process)
# and reports per measurement the medians and the median of the rounds' new/old time ratios
# (above 1 = the new binary is slower). It also checks that both wrote the same graph bytes.
set -euo pipefail

cd "$(dirname "$0")/.."
. bench/ab_common.sh
ab_setup "$1" "$2" "${3:-../shared/data/flower_photos}" "${4:-10}"
CACHE=${5:-$WORK/cache}
echo "## cache: $CACHE"

warm() { # warm BINARY TAG
    seconds "$1" retrain --image-dir "$IMAGE_DIR" --bottleneck-dir "$CACHE" \
        --output-graph "$WORK/graph-$2.onnx" --output-labels "$WORK/labels-$2.txt"
}

label() { # label BINARY TAG: with the graph OLD wrote, so both label with the same graph
    seconds "$1" label --graph "$WORK/graph-old.onnx" --labels "$WORK/labels-old.txt" "$PHOTO"
}

same_graphs() {
    cmp "$WORK/graph-old.onnx" "$WORK/graph-new.onnx" || { echo "the graphs differ" >&2; exit 1; }
}

"$OLD" retrain --image-dir "$IMAGE_DIR" --bottleneck-dir "$CACHE" \
    --output-graph "$WORK/graph-old.onnx" --output-labels "$WORK/labels-old.txt" >/dev/null 2>&1
ab_rounds warm label same_graphs
echo "## medians over $ROUNDS rounds; the graphs were byte-identical in every round"
ab_summary "warm retrain" "label one photo"
