#!/usr/bin/env bash
# flowers against TensorFlow 2 (pip) on retrain.py's own backbones, side by side:
# `flowers extract --architecture mobilenet_0.25_224` (and `_128`) against
# bench/tensorflow_extract.py running the same frozen graph over the same photos.
#
#   bench/tensorflow_ab.sh FLOWERS_BINARY [IMAGE_DIR] [ROUNDS] [SIZES]
#
# IMAGE_DIR  one sub-folder per class (default: ../shared/data/flower_photos)
# ROUNDS     alternated rounds (default: 3)
# SIZES      input sides to measure (default: "224 128"); the archives are read from
#            ../shared/models/tf_mobilenet_v1_0.25_<size>/ (or MODELS=DIR holding them)
#
# Each round runs, for every size, both programs back to back (the order swapped every
# round): all cores (flowers' default threads; the script's two threads with a session
# each), then one thread (`--threads 1` for both). flowers gets a fresh --bottleneck-dir
# every run and a model folder holding the archive, installed by one run before the
# rounds. Times are whole processes (TensorFlow's import and graph load included);
# the script's own loop time (first photo to last bottleneck) is reported beside it.
# Prints the medians and the median of the rounds' TensorFlow/flowers ratios (above 1 =
# flowers is faster) of wall time, of the script's loop against flowers' whole process, and
# of CPU time (user + system: steadier on a shared machine), and per-image milliseconds for
# the one-thread runs.
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=bench/ab_common.sh
. bench/ab_common.sh # median
FLOWERS=$(realpath "$1")
IMAGE_DIR=$(cd "${2:-../shared/data/flower_photos}" && pwd)
ROUNDS=${3:-3}
SIZES=${4:-224 128}
MODELS=${MODELS:-../shared/models}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

cpu_model=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
simd_flags=$(grep -m1 -o -w -E 'avx2|fma|avx512[a-z_0-9]*' /proc/cpuinfo | sort -u | tr '\n' ' ')
echo "## CPU: $cpu_model, $(nproc) cores; SIMD flags: $simd_flags"
echo "## flowers: $FLOWERS (FLOWERS_KERNELS=${FLOWERS_KERNELS:-auto})"
echo "## TensorFlow: $(python3 -c 'import tensorflow as tf; print(tf.__version__)' 2>/dev/null)"
IMAGES=$(find "$IMAGE_DIR" -type f \( -iname '*.jpg' -o -iname '*.jpeg' \) | wc -l)
echo "## images: $IMAGE_DIR ($IMAGES JPEGs), $ROUNDS rounds, sizes: $SIZES"
find "$IMAGE_DIR" -type f -exec cat {} + >/dev/null # warm the page cache

archive() { echo "$MODELS/tf_mobilenet_v1_0.25_$1/mobilenet_v1_0.25_$1_frozen.tgz"; }

for size in $SIZES; do
    mkdir -p "$WORK/models-$size"
    cp "$(archive "$size")" "$WORK/models-$size/"
    # Installs the archive, so that the rounds time extraction, not unpacking.
    "$FLOWERS" extract --architecture "mobilenet_0.25_$size" --model-dir "$WORK/models-$size" \
        --image-dir "$IMAGE_DIR" --bottleneck-dir "$WORK/install-$size" -q >/dev/null
    rm -rf "$WORK/install-$size"
done

run_flowers() { # run_flowers SIZE THREADS
    local cache="$WORK/cache" flags=()
    rm -rf "$cache"
    [ "$2" = all ] || flags=(--threads "$2")
    timed "$FLOWERS" extract --architecture "mobilenet_0.25_$1" \
        --model-dir "$WORK/models-$1" --image-dir "$IMAGE_DIR" --bottleneck-dir "$cache" \
        "${flags[@]}" -q
}

timed() { # timed COMMAND...: "wall cpu" seconds of one run (cpu = user + system)
    /usr/bin/time -f '%e %U %S' -o "$WORK/time" "$@" >"$WORK/out" 2>/dev/null
    awk '{print $1, $2 + $3}' "$WORK/time"
}

run_tf() { # run_tf SIZE THREADS: as timed; the loop's seconds to $WORK/loop
    local threads=$2
    [ "$threads" = all ] && threads=2
    timed python3 bench/tensorflow_extract.py "$(archive "$1")" "$IMAGE_DIR" --threads "$threads"
    awk '{print $4, $8}' "$WORK/out" >"$WORK/loop"
}

: >"$WORK/rows"
for round in $(seq 1 "$ROUNDS"); do
    for size in $SIZES; do
        for threads in all 1; do
            if [ $((round % 2)) = 1 ]; then order="flowers tf"; else order="tf flowers"; fi
            for who in $order; do
                if [ "$who" = flowers ]; then
                    f=$(run_flowers "$size" "$threads")
                else
                    t=$(run_tf "$size" "$threads")
                    read -r loop loop_cpu <"$WORK/loop"
                fi
            done
            read -r fw fc <<<"$f"
            read -r tw tc <<<"$t"
            printf 'round %s, %s, threads %s (%s): flowers %.3f s (cpu %.2f), TensorFlow %.3f s (cpu %.2f; loop %.3f s, cpu %.2f)\n' \
                "$round" "$size" "$threads" "$order" "$fw" "$fc" "$tw" "$tc" "$loop" "$loop_cpu"
            echo "$size $threads $fw $tw $loop $fc $tc $loop_cpu" >>"$WORK/rows"
        done
    done
done

echo "## medians over $ROUNDS rounds (whole processes; TF loop = the script's photo loop alone)"
for size in $SIZES; do
    for threads in all 1; do
        rows() { awk -v s="$size" -v t="$threads" '$1 == s && $2 == t' "$WORK/rows"; }
        f=$(rows | awk '{print $3}' | median)
        t=$(rows | awk '{print $4}' | median)
        loop=$(rows | awk '{print $5}' | median)
        ratio=$(rows | awk '{print $4 / $3}' | median)
        loop_ratio=$(rows | awk '{print $5 / $3}' | median)
        cpu=$(rows | awk '{print $7 / $6}' | median)
        loop_cpu=$(rows | awk '{print $8 / $6}' | median)
        printf 'mobilenet_0.25_%s, threads %s: flowers %.3f s, TensorFlow %.3f s (loop %.3f s); TensorFlow/flowers %.3f (loop only %.3f; cpu time %.3f, loop only %.3f)' \
            "$size" "$threads" "$f" "$t" "$loop" "$ratio" "$loop_ratio" "$cpu" "$loop_cpu"
        if [ "$threads" = 1 ]; then
            fc=$(rows | awk '{print $6}' | median)
            lc=$(rows | awk '{print $8}' | median)
            printf '; per image: flowers %.2f ms, TensorFlow %.2f ms (loop %.2f ms); cpu per image: flowers %.2f ms, TensorFlow loop %.2f ms' \
                "$(echo "1000 * $f / $IMAGES" | bc -l)" "$(echo "1000 * $t / $IMAGES" | bc -l)" \
                "$(echo "1000 * $loop / $IMAGES" | bc -l)" "$(echo "1000 * $fc / $IMAGES" | bc -l)" \
                "$(echo "1000 * $lc / $IMAGES" | bc -l)"
        fi
        echo
    done
done
