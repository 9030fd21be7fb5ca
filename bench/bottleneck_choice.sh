#!/usr/bin/env bash
# retrain.py's MobileNet bottleneck (the 1001 logits) against flowers' default (the pooled
# features under them), on a TensorFlow MobileNet from the registry: final test accuracy of
# a default retrain (4000 steps) for several seeds. Needs the archive in MODEL_DIR (or a
# mirror in FLOWERS_MODEL_BASE_URL).
# Usage: bench/bottleneck_choice.sh IMAGE_DIR [ARCHITECTURE] [SEEDS...]
set -euo pipefail
IMAGES=${1:?usage: bench/bottleneck_choice.sh IMAGE_DIR [ARCHITECTURE] [SEEDS...]}
ARCH=${2:-mobilenet_0.25_224}
shift 2 || shift $#
SEEDS=${*:-0 1 2}
FLOWERS=${FLOWERS:-target/release/flowers}
MODEL_DIR=${MODEL_DIR:-models}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
for choice in pooled logits; do
  extra=()
  [ "$choice" = logits ] && extra=(--bottleneck-tensor MobilenetV1/Predictions/Reshape)
  for seed in $SEEDS; do
    line=$("$FLOWERS" retrain -q --image-dir "$IMAGES" --architecture "$ARCH" --model-dir "$MODEL_DIR" \
      --bottleneck-dir "$WORK/cache" --output-graph "$WORK/g.pb" --output-labels "$WORK/l.txt" \
      --seed "$seed" "${extra[@]}" --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["test_accuracy"], d["test_images"], d["bottlenecks_computed"], round(d["extraction_seconds"],1))')
    echo "$choice seed=$seed test_accuracy,test_images,computed,extraction_s = $line"
  done
done
