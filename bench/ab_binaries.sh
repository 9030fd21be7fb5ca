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
OLD=$(realpath "$1")
NEW=$(realpath "$2")
IMAGE_DIR=$(cd "${3:-../shared/data/flower_photos}" && pwd)
ROUNDS=${4:-5}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

CPU_MODEL=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
SIMD_FLAGS=$(grep -m1 -o -w -E 'avx2|fma|avx512[a-z_0-9]*' /proc/cpuinfo | sort -u | tr '\n' ' ')
echo "## CPU: $CPU_MODEL; SIMD flags: $SIMD_FLAGS"
echo "## old: $OLD"
echo "## new: $NEW"
echo "## images: $IMAGE_DIR, $ROUNDS rounds"
find "$IMAGE_DIR" -type f -exec cat {} + >/dev/null # warm the page cache
PHOTO=$(find "$IMAGE_DIR" -type f -name '*.jpg' | sort | sed -n 1p)

seconds() { # seconds COMMAND...: wall time of one run, in seconds
    local start end
    start=$(date +%s.%N)
    "$@" >/dev/null 2>&1
    end=$(date +%s.%N)
    echo "$end - $start" | bc -l
}

cold() { # cold BINARY TAG
    rm -rf "$WORK/cache-$2"
    seconds "$1" retrain --image-dir "$IMAGE_DIR" --bottleneck-dir "$WORK/cache-$2" \
        --output-graph "$WORK/graph-$2.onnx" --output-labels "$WORK/labels-$2.txt" \
        --summaries-dir "$WORK/summaries-$2" --intermediate-output-graphs-dir "$WORK/intermediate-$2"
}

label() { # label BINARY TAG
    seconds "$1" label --graph "$WORK/graph-$2.onnx" --labels "$WORK/labels-$2.txt" "$PHOTO"
}

: >"$WORK/rows"
for round in $(seq 1 "$ROUNDS"); do
    if [ $((round % 2)) = 1 ]; then order="old new"; else order="new old"; fi
    declare -A cold_s label_s
    for tag in $order; do
        binary=$OLD; [ "$tag" = new ] && binary=$NEW
        cold_s[$tag]=$(cold "$binary" "$tag")
    done
    for tag in $order; do
        binary=$OLD; [ "$tag" = new ] && binary=$NEW
        label_s[$tag]=$(label "$binary" "$tag")
    done
    printf 'round %s (%s): cold %.2f / %.2f s, label %.3f / %.3f s (old / new)\n' "$round" "$order" \
        "${cold_s[old]}" "${cold_s[new]}" "${label_s[old]}" "${label_s[new]}"
    echo "${cold_s[old]} ${cold_s[new]} ${label_s[old]} ${label_s[new]}" >>"$WORK/rows"
done

median() { sort -g | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
echo "## medians over $ROUNDS rounds"
printf 'cold retrain: old %.2f s, new %.2f s, new/old ratio %.3f\n' \
    "$(awk '{print $1}' "$WORK/rows" | median)" "$(awk '{print $2}' "$WORK/rows" | median)" \
    "$(awk '{print $2/$1}' "$WORK/rows" | median)"
printf 'label one photo: old %.3f s, new %.3f s, new/old ratio %.3f\n' \
    "$(awk '{print $3}' "$WORK/rows" | median)" "$(awk '{print $4}' "$WORK/rows" | median)" \
    "$(awk '{print $4/$3}' "$WORK/rows" | median)"
