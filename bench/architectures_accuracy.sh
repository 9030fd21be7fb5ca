#!/usr/bin/env bash
# What each backbone, and each combination of backbones, buys (issue 25): CV accuracy of
# flowers' own final layer on a photo folder, extraction speed, and the retrained graph's size.
#
#   bench/architectures_accuracy.sh PHOTOS MODELS WORK [singles|all]
#
# PHOTOS: one folder per class (../shared/data/flower_photos). MODELS: the folder holding
# mobilenet_v2_1.0_224/, efficientnet_lite0/ and efficientnet_lite2/ with their .onnx files
# (../shared/models). WORK: scratch space; WORK/bn keeps the bottleneck caches for reruns.
# `singles` (the default) measures the embedded MobileNet v1 and the three ONNX files alone;
# `all` also the combinations, which need `--architecture A+B` (see COMBINED below).
#
# Columns:
# - CV accuracy: examples/final_layer_cv.rs, 5-fold stratified CV x REPEATS fold seeds
#   (environment, default 10: 50 fits; the spread between fold seeds is as large as the
#   gaps between the best combinations, so fewer fits rank them by chance), each
#   bottleneck with its default final layer (FinalLayerRecipe::default_for), paired with
#   the embedded backbone on the same folds. The CV rows of combinations need no `A+B`: the
#   example concatenates the per-backbone caches itself.
# - img/s: `flowers extract --threads 2` of every photo into an empty cache (wall time as
#   flowers reports it; the machine may be shared, so rerun on a quiet one for figures).
# - graph: the size of the graph `flowers retrain` writes (warm cache, 100 steps).
# Prints a markdown table on stdout; progress and the CPU on stderr.
set -euo pipefail
usage="usage: bench/architectures_accuracy.sh PHOTOS MODELS WORK [singles|all]"
photos=$(realpath "${1:?$usage}")
models=$(realpath "${2:?$usage}")
work=${3:?$usage}
what=${4:-singles}
REPEATS=${REPEATS:-10}
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$work/bn" "$work/models"
work=$(realpath "$work")
(cd "$root" && cargo build --release --bin flowers --example final_layer_cv >&2)
flowers="$root/target/release/flowers"
cv="$root/target/release/examples/final_layer_cv"
grep -m1 "model name" /proc/cpuinfo >&2 || true

# The ONNX files under the names the registry gives them, for --architecture's --model-dir.
ln -sf "$models/mobilenet_v2_1.0_224/mobilenet_v2_1.0_224.onnx" "$work/models/"
ln -sf "$models/efficientnet_lite0/efficientnet_lite0.onnx" "$work/models/"
ln -sf "$models/efficientnet_lite2/efficientnet_lite2.onnx" "$work/models/"

# Short name -> what `flowers extract` / `retrain` take, and the example's --backbone.
names=(v1 v2 lite0 lite2)
declare -A flags=(
    [v1]=""
    [v2]="--model $work/models/mobilenet_v2_1.0_224.onnx"
    [lite0]="--model $work/models/efficientnet_lite0.onnx"
    [lite2]="--model $work/models/efficientnet_lite2.onnx --input-mean 127 --input-std 128"
)
declare -A example=(
    [v1]="v1=embedded"
    [v2]="v2=$work/models/mobilenet_v2_1.0_224.onnx"
    [lite0]="lite0=$work/models/efficientnet_lite0.onnx"
    [lite2]="lite2=$work/models/efficientnet_lite2.onnx:mean=127,std=128"
)
declare -A label=(
    [v1]="MobileNet v1 (embedded)"
    [v2]="MobileNet v2"
    [lite0]="EfficientNet-Lite0"
    [lite2]="EfficientNet-Lite2"
)
# Combinations: the embedded backbone by name (`--architecture`), the others as files
# (`--model`, given once per backbone; names come before files, so v1 leads its rows).
COMBINED=(v1+lite0 v1+lite2 lite0+lite2 v1+lite0+lite2 v1+v2 v1+lite0+lite2+v2)
declare -A file=(
    [v2]=$work/models/mobilenet_v2_1.0_224.onnx
    [lite0]=$work/models/efficientnet_lite0.onnx
    [lite2]=$work/models/efficientnet_lite2.onnx
)
combined_flags() {
    local parts=() part out=""
    IFS=+ read -ra parts <<< "$1"
    for part in "${parts[@]}"; do
        if [[ $part == v1 ]]; then out+=" --architecture mobilenet_v1_1.0_224"; else out+=" --model ${file[$part]}"; fi
    done
    echo "$out"
}

rows=("${names[@]}")
if [[ $what == all ]]; then
    rows+=("${COMBINED[@]}")
elif [[ $what != singles ]]; then
    echo "$usage" >&2
    exit 2
fi
flags_of() { if [[ $1 == *+* ]]; then combined_flags "$1"; else echo "${flags[$1]}"; fi; }
label_of() {
    local parts=() part out=""
    IFS=+ read -ra parts <<< "$1"
    for part in "${parts[@]}"; do out+="${out:+ + }${label[$part]}"; done
    echo "$out"
}

declare -A speed size
for row in "${rows[@]}"; do
    # Extraction speed: a fresh cache, then the entries join WORK/bn for the CV and reruns.
    rm -rf "$work/fresh"
    # shellcheck disable=SC2046
    json=$("$flowers" extract --image-dir "$photos" --bottleneck-dir "$work/fresh" --threads 2 \
        --json --quiet $(flags_of "$row"))
    # `computed` counts vectors, one per photo and backbone: photos per second is that
    # over the number of backbones in the row.
    backbone_count=$(($(tr -cd + <<< "$row" | wc -c) + 1))
    speed[$row]=$(python3 -c 'import json,sys; s=json.loads(sys.argv[1]); print("%.1f" % (s["computed"] / int(sys.argv[2]) / s["seconds"]))' "$json" "$backbone_count")
    cp -r "$work/fresh/." "$work/bn/"
    echo "$row: ${speed[$row]} img/s" >&2
    # Graph size: a short retrain on the warm cache.
    # shellcheck disable=SC2046
    "$flowers" retrain --image-dir "$photos" --bottleneck-dir "$work/bn" --quiet \
        --output-graph "$work/graph-$row.onnx" --output-labels "$work/labels.txt" \
        --how-many-training-steps 100 $(flags_of "$row") > /dev/null
    size[$row]=$(stat -c %s "$work/graph-$row.onnx")
done

# CV: every row in one run of the example, so all share their folds with the first (v1).
backbones=()
for name in "${names[@]}"; do backbones+=(--backbone "${example[$name]}"); done
combinations=(--combination v1 --combination v2 --combination lite0 --combination lite2)
for row in "${COMBINED[@]}"; do combinations+=(--combination "$row"); done
"$cv" "$photos" "$work/bn" "${backbones[@]}" "${combinations[@]}" --recipe default \
    --repeats "$REPEATS" \
    > "$work/cv.md" 2> "$work/cv.log"

echo "| backbone | bottleneck values | CV accuracy, % ($((REPEATS * 5)) fits) | paired gain over v1 | extraction, img/s (2 threads) | graph |"
echo "|---|---:|---|---|---:|---:|"
for row in "${names[@]}" "${COMBINED[@]}"; do
    line=$(grep "^| $row, default" "$work/cv.md")
    IFS='|' read -r _ _ values accuracy gain _ <<< "$line"
    mb=${size[$row]:+$(awk -v b="${size[$row]}" 'BEGIN { printf "%.1f MB", b / 1e6 }')}
    echo "| $(label_of "$row") |$values|$accuracy|$gain| ${speed[$row]:-needs A+B} | ${mb:-needs A+B} |"
done
