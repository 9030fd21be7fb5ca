#!/usr/bin/env bash
# Benchmark flowers against the onnxruntime/Pillow scripts a user would write instead.
#
#   bench/run.sh [IMAGE_DIR] [RUNS]
#
# IMAGE_DIR  one sub-folder per class (default: ../shared/data/flower_photos from the repo root)
# RUNS       repetitions per measurement; medians are reported (default: 3)
#
# Environment: SKIP_BUILD=1 uses the existing target/release/flowers (e.g. while src/ does not build).
#              ONE_THREAD_ROUNDS (default 10): rounds of the one-thread comparison.
#              PYTHON (default python3) must have onnx, onnxruntime, pillow, numpy:
#   python3 -m venv /tmp/bench-venv && /tmp/bench-venv/bin/pip install onnx onnxruntime pillow numpy
#   PYTHON=/tmp/bench-venv/bin/python bench/run.sh
#
# What it does: cargo build --release, then on the same images, model and 2 threads:
#   flowers retrain, cold (fresh empty --bottleneck-dir each run) and warm (cache full),
#   bench/reference_extract.py (Pillow + onnxruntime, features of every image),
#   flowers label vs bench/label_onnxruntime.py on 1 image and on 100 images (one process each),
#   cold-retrain peak RSS on a 2-class ~450-image subset vs the whole IMAGE_DIR,
#   and per-image inference on ONE thread for each shared backbone found in
#   $SHARED_MODELS (default ../shared/models): bench/onnxruntime_one_thread.py against
#   `examples/backbone_speed --flowers-only` (on AVX-512 CPUs also with FLOWERS_KERNELS=avx2:
#   the default there is the blocked ops' 512-bit kernels, avx2 their 256-bit ones; the
#   faster of the two should be that CPU's default), in ONE_THREAD_ROUNDS rounds of back-to-back
#   measurements whose order is swapped every round; the ratio is the median of the rounds'.
# The CPU model and its SIMD flags are printed first: quote them with every figure.
# Wall time is measured around each whole process, peak RSS with /usr/bin/time (%M).
# The page cache is warmed first (all images read once), so no row measures disk I/O.
# Measurements of flowers and of the reference are interleaved run by run, so that any
# background load hits both sides alike; CPU used by other processes is reported at the end.
# Takes ~5 min with RUNS=3 on 2 quiet cores (1817 images).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
IMAGE_DIR=$(cd "${1:-../shared/data/flower_photos}" && pwd)
RUNS=${2:-3}
ROUNDS=${ONE_THREAD_ROUNDS:-10}
PYTHON=${PYTHON:-python3}
THREADS=2
BACKBONE=$ROOT/models/mobilenet_v1_1.0_224/mobilenet_v1_1.0_224.onnx
FLOWERS=$ROOT/target/release/flowers
TIME=/usr/bin/time

[ -x "$TIME" ] || { echo "needs GNU time at $TIME (apt-get install time)" >&2; exit 1; }
"$PYTHON" -c 'import onnx, onnxruntime, PIL, numpy' 2>/dev/null || {
    echo "$PYTHON lacks onnx/onnxruntime/pillow/numpy; set PYTHON=... (see the header of $0)" >&2; exit 1; }

if [ "${SKIP_BUILD:-0}" = 1 ]; then
    echo "## SKIP_BUILD=1: using the existing $FLOWERS" >&2
else
    echo "## building (cargo build --release)" >&2
    cargo build --release --bin flowers --example backbone_speed >&2 || {
        echo "build failed; SKIP_BUILD=1 benchmarks the existing binary" >&2; exit 1; }
fi
SPEED=$ROOT/target/release/examples/backbone_speed
SHARED_MODELS=${SHARED_MODELS:-$ROOT/../shared/models}
CPU_MODEL=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
SIMD_FLAGS=$(grep -m1 -o -w -E 'avx2|fma|avx512[a-z_0-9]*|amx[a-z_0-9]*' /proc/cpuinfo | sort -u | tr '\n' ' ')
echo "## CPU: $CPU_MODEL; SIMD flags: $SIMD_FLAGS" >&2

WORK=$(mktemp -d /tmp/flowers-bench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
# a private copy, so a concurrent rebuild cannot swap the binary mid-benchmark
cp "$FLOWERS" "$WORK/flowers"; FLOWERS=$WORK/flowers
[ -x "$SPEED" ] && cp "$SPEED" "$WORK/backbone_speed" && SPEED=$WORK/backbone_speed
echo "## flowers binary: sha256 $(sha256sum "$FLOWERS" | cut -c1-16), git $(git describe --always --dirty 2>/dev/null || echo '?')" >&2
export OMP_NUM_THREADS=$THREADS   # keep numpy/onnxruntime helpers on the same 2 threads

echo "## warming the page cache" >&2
find "$IMAGE_DIR" -type f -exec cat {} + >/dev/null
cat "$FLOWERS" "$BACKBONE" >/dev/null

busy_jiffies() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9; exit}' /proc/stat; }
BUSY0=$(busy_jiffies); T0=$(date +%s.%N); OWN_CPU=0; LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)

# measure NAME CMD... : runs CMD once, appends "wall_s peak_rss_kb" to $WORK/NAME.dat
measure() {
    local name=$1; shift
    local t0 t1
    t0=$(date +%s.%N)
    "$TIME" -f "%M %U %S" -o "$WORK/time.out" "$@" >"$WORK/$name.stdout" 2>"$WORK/$name.stderr" || {
        echo "FAILED: $*" >&2; tail -5 "$WORK/$name.stderr" >&2; exit 1; }
    t1=$(date +%s.%N)
    read -r rss usr sys < <(tail -1 "$WORK/time.out")
    OWN_CPU=$(awk -v a="$OWN_CPU" -v u="$usr" -v s="$sys" 'BEGIN{print a+u+s}')
    awk -v a="$t0" -v b="$t1" -v r="$rss" 'BEGIN{printf "%.3f %d\n", b-a, r}' >>"$WORK/$name.dat"
    printf '  %-22s run: %s\n' "$name" "$(tail -1 "$WORK/$name.dat")" >&2
}
# median FILE COLUMN
median() { awk -v c="$2" '{print $c}' "$1" | sort -g | awk '{v[NR]=$1} END{ if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2 }'; }

NCLASSES=$(find "$IMAGE_DIR" -mindepth 1 -maxdepth 1 -type d | wc -l)
NIMAGES=$(find "$IMAGE_DIR" -mindepth 2 -type f \( -iname '*.jpg' -o -iname '*.jpeg' -o -iname '*.png' \) | wc -l)

echo "## cold retrain vs reference extraction ($RUNS runs each, interleaved)" >&2
for i in $(seq "$RUNS"); do
    rm -rf "$WORK/bn"; mkdir "$WORK/bn"
    measure cold "$FLOWERS" retrain --image-dir "$IMAGE_DIR" --bottleneck-dir "$WORK/bn" \
        --output-graph "$WORK/g.onnx" --output-labels "$WORK/l.txt" --threads $THREADS --json
    "$PYTHON" -c 'import json,sys; print(json.load(open(sys.argv[1]))["extraction_seconds"])' \
        "$WORK/cold.stdout" >>"$WORK/cold_extract.dat"
    measure ref_extract "$PYTHON" bench/reference_extract.py "$BACKBONE" "$IMAGE_DIR"
done

echo "## warm retrain (cache full, default 4000 steps)" >&2
for i in $(seq "$RUNS"); do
    measure warm "$FLOWERS" retrain --image-dir "$IMAGE_DIR" --bottleneck-dir "$WORK/bn" \
        --output-graph "$WORK/g_warm.onnx" --output-labels "$WORK/l_warm.txt" --threads $THREADS
done

echo "## label: 1 image and 100 images, one process each" >&2
"$PYTHON" - "$IMAGE_DIR" >"$WORK/images100.txt" <<'EOF'
import sys; sys.path.insert(0, "bench")
from verify_onnxruntime import pick_images
print("\n".join(pick_images(sys.argv[1], 100)))
EOF
mapfile -t IMG100 <"$WORK/images100.txt"
IMG1=${IMG100[0]}
G=$WORK/g.onnx
# untimed warm-up of both sides (binary, Python modules and the graph in the page cache)
"$FLOWERS" label --graph "$G" --threads $THREADS "$IMG1" >/dev/null
"$PYTHON" bench/label_onnxruntime.py "$G" "$IMG1" >/dev/null
for i in $(seq "$RUNS"); do
    measure label1 "$FLOWERS" label --graph "$G" --threads $THREADS "$IMG1"
    measure ort_label1 "$PYTHON" bench/label_onnxruntime.py "$G" "$IMG1"
    measure label100 "$FLOWERS" label --graph "$G" --threads $THREADS "${IMG100[@]}"
    measure ort_label100 "$PYTHON" bench/label_onnxruntime.py "$G" "${IMG100[@]}"
done

echo "## peak RSS growth: cold retrain on 2 classes x 225 images" >&2
mapfile -t CLASSES < <(find "$IMAGE_DIR" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | sort | head -2)
for c in "${CLASSES[@]}"; do
    mkdir -p "$WORK/subset/$c"
    find "$IMAGE_DIR/$c" -maxdepth 1 -type f \( -iname '*.jpg' -o -iname '*.jpeg' -o -iname '*.png' \) \
        | sort | head -225 | xargs -I{} cp {} "$WORK/subset/$c/"
done
NSUB=$(find "$WORK/subset" -type f | wc -l)
for i in $(seq "$RUNS"); do
    rm -rf "$WORK/bn_sub"; mkdir "$WORK/bn_sub"
    measure cold_subset "$FLOWERS" retrain --image-dir "$WORK/subset" --bottleneck-dir "$WORK/bn_sub" \
        --output-graph "$WORK/g_sub.onnx" --output-labels "$WORK/l_sub.txt" --threads $THREADS
done

echo "## one thread per backbone: onnxruntime vs flowers' plan, ms per image ($ROUNDS rounds; medians of 30 each)" >&2
ONE_THREAD=$WORK/one_thread.md
AVX512=$(grep -m1 -q -w avx512f /proc/cpuinfo && echo 1 || echo 0)
one_ort() { "$PYTHON" bench/onnxruntime_one_thread.py "$1" 30 | grep -o '[0-9.]* ms' | cut -d' ' -f1; }
one_flowers() { "$SPEED" 30 --flowers-only --model "$1" | grep -o '[0-9.]* ms' | cut -d' ' -f1; }
one_avx2() {
    if [ "$AVX512" = 1 ]; then FLOWERS_KERNELS=avx2 one_flowers "$1"; else echo n/a; fi
}
for model in mobilenet_v1_1.0_224 mobilenet_v2_1.0_224 efficientnet_lite0; do
    onnx=$SHARED_MODELS/$model/$model.onnx
    [ -f "$onnx" ] && [ -x "$SPEED" ] || { echo "  skipping $model (no $onnx or no backbone_speed)" >&2; continue; }
    : >"$WORK/one_$model.dat"
    for i in $(seq "$ROUNDS"); do
        # Each round measures both back to back, one first and then the other in turn: this
        # VM's speed wanders within seconds, and whichever runs second gains or loses by it.
        if [ $((i % 2)) = 1 ]; then
            ort=$(one_ort "$onnx"); fl=$(one_flowers "$onnx"); avx2=$(one_avx2 "$onnx")
        else
            avx2=$(one_avx2 "$onnx"); fl=$(one_flowers "$onnx"); ort=$(one_ort "$onnx")
        fi
        echo "$ort $fl $avx2" >>"$WORK/one_$model.dat"
        printf '  %-22s round %2d: ort %s ms, flowers %s ms, avx2 %s\n' "$model" "$i" "$ort" "$fl" "$avx2" >&2
    done
    "$PYTHON" - "$model" "$WORK/one_$model.dat" >>"$ONE_THREAD" <<'EOF'
import statistics as st, sys
rows = [line.split() for line in open(sys.argv[2])]
ort, fl = [float(r[0]) for r in rows], [float(r[1]) for r in rows]
avx2 = "n/a" if rows[0][2] == "n/a" else "%.2f" % st.median(float(r[2]) for r in rows)
ratios = sorted(o / f for o, f in zip(ort, fl))
print("| %s | %.2f | %.2f | %s | %.2f | %.2f-%.2f |" % (sys.argv[1], st.median(ort), st.median(fl), avx2,
      st.median(ratios), ratios[len(ratios) // 4], ratios[(3 * len(ratios)) // 4]))
EOF
done

T1=$(date +%s.%N); BUSY1=$(busy_jiffies); LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)
HZ=$(getconf CLK_TCK)

# ---- report ----
echo "CPU: $CPU_MODEL ($(nproc) cores); SIMD flags: $SIMD_FLAGS"
echo
m() { median "$WORK/$1.dat" "$2"; }
"$PYTHON" - "$NIMAGES" "$NSUB" "$RUNS" "$NCLASSES" \
    "$(m cold 1)" "$(m cold 2)" "$(median "$WORK/cold_extract.dat" 1)" \
    "$(m ref_extract 1)" "$(m ref_extract 2)" \
    "$(m warm 1)" "$(m warm 2)" \
    "$(m label1 1)" "$(m label1 2)" "$(m ort_label1 1)" "$(m ort_label1 2)" \
    "$(m label100 1)" "$(m label100 2)" "$(m ort_label100 1)" "$(m ort_label100 2)" \
    "$(m cold_subset 1)" "$(m cold_subset 2)" <<'EOF'
import sys
a = sys.argv[1:]
n, nsub, runs, ncls = int(a[0]), int(a[1]), int(a[2]), int(a[3])
(cold_w, cold_r, cold_x, ref_w, ref_r, warm_w, warm_r, l1_w, l1_r, o1_w, o1_r,
 l100_w, l100_r, o100_w, o100_r, sub_w, sub_r) = map(float, a[4:])
mb = lambda kb: kb / 1024
rows = [
    # name, flowers, reference, unit, higher_is_better
    (f"Cold retrain vs reference extraction, wall ({n} images)", cold_w, ref_w, "s", False),
    ("Cold retrain vs reference extraction, images/s (whole process)", n / cold_w, n / ref_w, "img/s", True),
    ("Cold retrain: extraction phase only, images/s (flowers' own timer)", n / cold_x, n / ref_w, "img/s", True),
    ("Cold retrain vs reference extraction, peak RSS", mb(cold_r), mb(ref_r), "MiB", False),
    ("Warm retrain (cache full, 4000 steps), wall", warm_w, None, "s", False),
    ("Warm retrain, peak RSS", mb(warm_r), None, "MiB", False),
    ("Label 1 image (whole process), wall", l1_w, o1_w, "s", False),
    ("Label 1 image, peak RSS", mb(l1_r), mb(o1_r), "MiB", False),
    ("Label 100 images (one process), wall", l100_w, o100_w, "s", False),
    ("Label 100 images, images/s", 100 / l100_w, 100 / o100_w, "img/s", True),
    ("Label 100 images, peak RSS", mb(l100_r), mb(o100_r), "MiB", False),
]
fmt = lambda v: "n/a" if v is None else (f"{v:.3f}" if v < 10 else f"{v:.1f}")
print(f"| Measurement (median of {runs}) | flowers | reference | flowers/reference | better is | flowers is |")
print("|---|---:|---:|---:|---|---|")
for name, f, r, unit, hib in rows:
    if r is None:
        print(f"| {name} | {fmt(f)} {unit} | n/a (no peer) | – | – | – |")
        continue
    ratio = f / r
    good = ratio > 1 if hib else ratio < 1
    factor = ratio if ratio >= 1 else 1 / ratio
    word = {("s", True): "faster", ("s", False): "slower", ("img/s", True): "faster",
            ("img/s", False): "slower", ("MiB", True): "smaller", ("MiB", False): "larger"}[(unit, good)]
    print(f"| {name} | {fmt(f)} {unit} | {fmt(r)} {unit} | {ratio:.2f} | {'higher' if hib else 'lower'} | "
          f"{factor:.2f}x {word} |")
print()
print(f"Peak RSS growth, flowers cold retrain: {nsub} images (2 classes) {mb(sub_r):.1f} MiB "
      f"({sub_w:.1f} s) -> {n} images ({ncls} classes) {mb(cold_r):.1f} MiB ({cold_w:.1f} s): "
      f"+{mb(cold_r - sub_r):.1f} MiB for +{n - nsub} images "
      f"(~{(cold_r - sub_r) / max(n - nsub, 1):.1f} KiB per image)")
EOF
if [ -s "$ONE_THREAD" ]; then
    echo
    echo "One thread, ms per image: medians over $ROUNDS rounds, each round both measured back to back, the order swapped every round, each measurement the median of 30 runs; flowers' path: \`FLOWERS_KERNELS\` unset. The ratio is the median of the rounds' ratios, with their quartiles."
    echo
    echo "| backbone | onnxruntime | flowers | flowers, FLOWERS_KERNELS=avx2 (blocked) | flowers speed / onnxruntime's | quartiles |"
    echo "|---|---:|---:|---:|---:|---|"
    cat "$ONE_THREAD"
fi
awk -v b0="$BUSY0" -v b1="$BUSY1" -v hz="$HZ" -v own="$OWN_CPU" -v t0="$T0" -v t1="$T1" \
    -v l0="$LOAD0" -v l1="$LOAD1" 'BEGIN{
    busy=(b1-b0)/hz; other=busy-own; if (other<0) other=0; wall=t1-t0
    printf "\nBenchmark wall %.0f s; CPU used by the measured processes %.0f s; by everything else %.0f s (%.0f%% of the 2 cores); load average before %s, after %s\n", wall, own, other, 100*other/(2*wall), l0, l1 }'
