#!/usr/bin/env bash
# Which kernels should be an AVX-512 CPU's default? One thread per image, per backbone:
# onnxruntime against flowers' blocked ops with FLOWERS_KERNELS=avx512 and =avx2, and
# optionally a peer build of examples/backbone_speed (its default path), side by side.
#
#   bench/isa_paths.sh [ROUNDS] [PEER_BACKBONE_SPEED]
#
# ROUNDS               alternated rounds (default 10); each measures every path once, the
#                      order rotated every round, each measurement the median of 30 runs
# PEER_BACKBONE_SPEED  another build of examples/backbone_speed (e.g. main's, before a change)
#
# Environment: PYTHON (default python3, with numpy and onnxruntime), SHARED_MODELS (default
# ../shared/models). Run `cargo build --release --example backbone_speed` first. Prints the
# CPU model and SIMD flags, then per backbone the median ms per image of each path and the
# median of the rounds' onnxruntime / flowers ratios (above 1: flowers is faster).
set -euo pipefail

cd "$(dirname "$0")/.."
ROUNDS=${1:-10}
PEER=${2:-}
PYTHON=${PYTHON:-python3}
SPEED=$PWD/target/release/examples/backbone_speed
SHARED_MODELS=${SHARED_MODELS:-$PWD/../shared/models}
[ -x "$SPEED" ] || { echo "no $SPEED: cargo build --release --example backbone_speed" >&2; exit 1; }
echo "## CPU: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores; SIMD flags:" \
    "$(grep -m1 -o -w -E 'avx2|fma|avx512[a-z_0-9]*' /proc/cpuinfo | sort -u | tr '\n' ' ')"
echo "## load average at the start: $(cut -d' ' -f1-3 /proc/loadavg)"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

ms() { grep -o '[0-9.]* ms' | cut -d' ' -f1; }
path_ort() { "$PYTHON" bench/onnxruntime_one_thread.py "$1" 30 | ms; }
path_avx512() { FLOWERS_KERNELS=avx512 "$SPEED" 30 --flowers-only --model "$1" | ms; }
path_avx2() { FLOWERS_KERNELS=avx2 "$SPEED" 30 --flowers-only --model "$1" | ms; }
path_peer() { "$PEER" 30 --flowers-only --model "$1" | ms; }
PATHS=(ort avx512 avx2)
[ -n "$PEER" ] && PATHS+=(peer)

for model in mobilenet_v1_1.0_224 mobilenet_v2_1.0_224 efficientnet_lite0; do
    onnx=$SHARED_MODELS/$model/$model.onnx
    [ -f "$onnx" ] || { echo "## skipping $model: no $onnx" >&2; continue; }
    : >"$WORK/$model"
    for round in $(seq "$ROUNDS"); do
        declare -A t=()
        n=${#PATHS[@]}
        for i in $(seq 0 $((n - 1))); do
            p=${PATHS[$(((i + round) % n))]}
            t[$p]=$("path_$p" "$onnx")
        done
        line=""
        for p in "${PATHS[@]}"; do line="$line ${t[$p]}"; done
        echo "$line" >>"$WORK/$model"
        echo "  $model round $round (${PATHS[*]}):$line" >&2
    done
    "$PYTHON" - "$model" "$WORK/$model" "${PATHS[@]}" <<'EOF'
import statistics as st, sys
model, rows, paths = sys.argv[1], [l.split() for l in open(sys.argv[2])], sys.argv[3:]
cols = {p: [float(r[i]) for r in rows] for i, p in enumerate(paths)}
out = [f"{p} {st.median(cols[p]):.2f} ms" for p in paths]
for p in paths[1:]:
    ratios = [o / f for o, f in zip(cols["ort"], cols[p])]
    out.append(f"ort/{p} {st.median(ratios):.2f}")
print(f"| {model} | " + " | ".join(out) + " |")
EOF
done
