#!/usr/bin/env bash
# Issue 25's manual check of a graph of combined backbones: retrain MobileNet v1 (the
# embedded backbone) + EfficientNet-Lite0 on the shared flower photos, check the graph with
# onnx.checker, then label 200 of the photos (every 9th path in sorted order) with
# `flowers label` and with onnxruntime fed as bench/label_onnxruntime.py feeds it (one
# tensor per input, as `flowers.inputs` describes), and count how often top-1 agrees.
#
#   bench/combined_agreement.sh [IMAGE_DIR] [LITE0_ONNX] [WORK_DIR]
#
# Needs python3 with onnx, onnxruntime, numpy and Pillow.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
images=${1:-$root/../shared/data/flower_photos}
lite0=${2:-$root/../shared/models/efficientnet_lite0/efficientnet_lite0.onnx}
work=${3:-$(mktemp -d)}
(cd "$root" && cargo build --release --bin flowers >&2)
flowers=$root/target/release/flowers
mkdir -p "$work"
grep -m1 "model name" /proc/cpuinfo >&2 || true

"$flowers" retrain --image-dir "$images" --bottleneck-dir "$work/cache" \
    --architecture mobilenet_v1_1.0_224 --model "$lite0" \
    --output-graph "$work/combined.onnx" --output-labels "$work/labels.txt" >&2
python3 -c "import onnx, sys; onnx.checker.check_model(sys.argv[1], full_check=True); print('onnx.checker: ok')" \
    "$work/combined.onnx"

find "$images" -type f -iname '*.jpg' | LC_ALL=C sort | awk 'NR % 9 == 1' | head -200 > "$work/photos.txt"
mapfile -t photos < "$work/photos.txt"
"$flowers" label --graph "$work/combined.onnx" --top-k 1 --json "${photos[@]}" \
    | python3 -c '
import json, sys
for line in sys.stdin:
    row = json.loads(line)
    print(row["image"], row["predictions"][0]["label"])' > "$work/flowers_top1.txt"
python3 "$root/bench/label_onnxruntime.py" "$work/combined.onnx" "${photos[@]}" \
    | awk 'NR % 6 == 1 { path = $0 } NR % 6 == 2 { print path, $1 }' > "$work/onnxruntime_top1.txt"
python3 - "$work/flowers_top1.txt" "$work/onnxruntime_top1.txt" <<'PY'
import sys
def top1(path):
    return dict(line.rsplit(" ", 1) for line in open(path).read().splitlines())
ours, theirs = top1(sys.argv[1]), top1(sys.argv[2])
shared = sorted(set(ours) & set(theirs))
agree = sum(ours[p] == theirs[p] for p in shared)
print(f"top-1 agreement: {agree} of {len(shared)} photos ({len(ours)} labelled by flowers, {len(theirs)} by onnxruntime)")
for p in shared:
    if ours[p] != theirs[p]:
        print(f"  differs: {p}: flowers {ours[p]}, onnxruntime {theirs[p]}")
PY
