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
OLD=$(realpath "$1")
NEW=$(realpath "$2")
IMAGE_DIR=$(cd "${3:-../shared/data/flower_photos}" && pwd)
ROUNDS=${4:-10}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
CACHE=${5:-$WORK/cache}

CPU_MODEL=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
SIMD_FLAGS=$(grep -m1 -o -w -E 'avx2|fma|sha_ni|avx512[a-z_0-9]*' /proc/cpuinfo | sort -u | tr '\n' ' ')
echo "## CPU: $CPU_MODEL, $(nproc) cores; SIMD flags: $SIMD_FLAGS"
echo "## old: $OLD"
echo "## new: $NEW"
echo "## images: $IMAGE_DIR, cache: $CACHE, $ROUNDS rounds"
find "$IMAGE_DIR" -type f -exec cat {} + >/dev/null # warm the page cache
PHOTO=$(find "$IMAGE_DIR" -type f -name '*.jpg' | sort | sed -n 1p)

seconds() { # seconds COMMAND...: wall time of one run, in seconds
    local start end
    start=$(date +%s.%N)
    "$@" >/dev/null 2>&1
    end=$(date +%s.%N)
    echo "$end - $start" | bc -l
}

warm() { # warm BINARY TAG
    seconds "$1" retrain --image-dir "$IMAGE_DIR" --bottleneck-dir "$CACHE" \
        --output-graph "$WORK/graph-$2.onnx" --output-labels "$WORK/labels-$2.txt"
}

label() { # label BINARY
    seconds "$1" label --graph "$WORK/graph-old.onnx" --labels "$WORK/labels-old.txt" "$PHOTO"
}

"$OLD" retrain --image-dir "$IMAGE_DIR" --bottleneck-dir "$CACHE" \
    --output-graph "$WORK/graph-old.onnx" --output-labels "$WORK/labels-old.txt" >/dev/null 2>&1
: >"$WORK/rows"
for round in $(seq 1 "$ROUNDS"); do
    if [ $((round % 2)) = 1 ]; then order="old new"; else order="new old"; fi
    declare -A warm_s label_s
    for tag in $order; do
        binary=$OLD; [ "$tag" = new ] && binary=$NEW
        warm_s[$tag]=$(warm "$binary" "$tag")
    done
    cmp "$WORK/graph-old.onnx" "$WORK/graph-new.onnx" || { echo "the graphs differ" >&2; exit 1; }
    for tag in $order; do
        binary=$OLD; [ "$tag" = new ] && binary=$NEW
        label_s[$tag]=$(label "$binary")
    done
    printf 'round %s (%s): warm %.3f / %.3f s, label %.3f / %.3f s (old / new)\n' "$round" "$order" \
        "${warm_s[old]}" "${warm_s[new]}" "${label_s[old]}" "${label_s[new]}"
    echo "${warm_s[old]} ${warm_s[new]} ${label_s[old]} ${label_s[new]}" >>"$WORK/rows"
done

median() { sort -g | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
echo "## medians over $ROUNDS rounds; the graphs were byte-identical in every round"
printf 'warm retrain: old %.3f s, new %.3f s, new/old ratio %.3f\n' \
    "$(awk '{print $1}' "$WORK/rows" | median)" "$(awk '{print $2}' "$WORK/rows" | median)" \
    "$(awk '{print $2/$1}' "$WORK/rows" | median)"
printf 'label one photo: old %.3f s, new %.3f s, new/old ratio %.3f\n' \
    "$(awk '{print $3}' "$WORK/rows" | median)" "$(awk '{print $4}' "$WORK/rows" | median)" \
    "$(awk '{print $4/$3}' "$WORK/rows" | median)"
