#!/usr/bin/env bash
# The float TensorFlow Lite export checked against TensorFlow Lite's own interpreter, for
# one backbone: retrain on DIR with --output-tflite, `flowers export` the graph again
# (timed; must give the same bytes), then on the 200-photo sample (bench/tflite_oracle.py
# sample: every 9th sorted path) compare
#   - tf.lite.Interpreter on the .tflite (flowers' exact input tensors) with `flowers label` on
#     the ONNX graph: top-1 agreement and the largest score difference;
#   - `flowers label` on the .tflite with tf.lite.Interpreter: the same.
#
#   [GRAPH_EXT=pb] bench/tflite_check.sh NAME DIR WORK [retrain flags, e.g. --model FILE]
# Needs: cargo build --release --examples; python3 with tensorflow.
set -euo pipefail
name=$1 dir=$2 work=$3
ext=${GRAPH_EXT:-onnx}  # pb for TensorFlow backbones
shift 3
root=$(cd "$(dirname "$0")/.." && pwd)
flowers=$root/target/release/flowers
mkdir -p "$work"
cd "$work"
"$flowers" --quiet retrain --image-dir "$dir" --bottleneck-dir cache "$@" \
  --output-graph "$name.$ext" --output-labels "$name.txt" --output-tflite "$name.tflite" > "$name.retrain.txt"
start=$(date +%s.%N)
"$flowers" export --graph "$name.$ext" --output "$name.export.tflite" > /dev/null
end=$(date +%s.%N)
cmp "$name.tflite" "$name.export.tflite"
python3 "$root/bench/tflite_oracle.py" sample "$dir" > sample.txt
mapfile -t photos < sample.txt
"$root/target/release/examples/input_tensors" "$name.$ext" "$name.in.f32" "${photos[@]}"
python3 "$root/bench/tflite_oracle.py" run "$name.tflite" --tensors "$name.in.f32" > "$name.tf.json" 2> /dev/null
"$flowers" label --graph "$name.$ext" --json --top-k 1000 "${photos[@]}" > "$name.graph.jsonl"
"$flowers" label --graph "$name.tflite" --json --top-k 1000 "${photos[@]}" > "$name.lite.jsonl"
python3 - "$name" "$(echo "$end - $start" | bc)" <<'PY'
import json, os, sys
name, export_seconds = sys.argv[1], float(sys.argv[2])
tf = json.load(open(f"{name}.tf.json"))
labels = tf["labels"]
def flowers(path):
    rows = {}
    for line in open(path):
        row = json.loads(line)
        scores = {p["label"]: p["score"] for p in row["predictions"]}
        rows[row["image"]] = [scores[l] for l in labels]
    return rows
onnx, lite = flowers(f"{name}.graph.jsonl"), flowers(f"{name}.lite.jsonl")
def compare(a, b):
    same = sum(max(range(len(labels)), key=a[i].__getitem__) == max(range(len(labels)), key=b[i].__getitem__) for i in a)
    diff = max(abs(x - y) for i in a for x, y in zip(a[i], b[i]))
    return same, len(a), diff
oracle = {r["image"]: r["scores"] for r in tf["results"]}
print(json.dumps({
    "backbone": name,
    "photos": len(oracle),
    "tf_vs_graph": dict(zip(["same_top1", "of", "max_abs_diff"], compare(oracle, {i: onnx[i] for i in oracle}))),
    "flowers_tflite_vs_tf": dict(zip(["same_top1", "of", "max_abs_diff"], compare({i: lite[i] for i in oracle}, oracle))),
    "graph_bytes": os.path.getsize(f"{name}.{os.environ.get('GRAPH_EXT', 'onnx')}"),
    "tflite_bytes": os.path.getsize(f"{name}.tflite"),
    "export_seconds": round(export_seconds, 2),
}))
PY
