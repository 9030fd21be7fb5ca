#!/usr/bin/env bash
# Two flowers binaries side by side: did a change cost speed?
#
#   bench/ab_binaries.sh OLD_BINARY NEW_BINARY [IMAGE_DIR] [ROUNDS]
#
# IMAGE_DIR  one sub-folder per class (default: ../shared/data/flower_photos from the repo root)
# ROUNDS     alternated rounds (default: 5)
#
# Each round runs, for both binaries back to back (the order swapped every round, so the
# machine's drifting speed hits both alike):
#   cold   `flowers retrain` with a fresh empty --bottleneck-dir (extraction + training + graph write)
#   label  `flowers label` on one photo with the graph that binary wrote (whole process)
# and reports per measurement the medians and the median of the rounds' new/old time ratios
# (above 1 = the new binary is slower). The CPU model and SIMD flags are printed first.
set -euo pipefail

cd "$(dirname "$0")/.."
. bench/ab_common.sh
ab_setup "$1" "$2" "${3:-../shared/data/flower_photos}" "${4:-5}"

cold() { # cold BINARY TAG
    rm -rf "$WORK/cache-$2"
    seconds "$1" retrain --image-dir "$IMAGE_DIR" --bottleneck-dir "$WORK/cache-$2" \
        --output-graph "$WORK/graph-$2.onnx" --output-labels "$WORK/labels-$2.txt" \
        --summaries-dir "$WORK/summaries-$2" --intermediate-output-graphs-dir "$WORK/intermediate-$2"
}

label() { # label BINARY TAG
    seconds "$1" label --graph "$WORK/graph-$2.onnx" --labels "$WORK/labels-$2.txt" "$PHOTO"
}

ab_rounds cold label
echo "## medians over $ROUNDS rounds"
ab_summary "cold retrain" "label one photo"
