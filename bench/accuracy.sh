#!/usr/bin/env bash
# Held-out accuracy and wall time of retrain options on a fixed split (issue 12): every
# configuration at 500 and 4000 steps with several seeds, on warm bottleneck caches (the
# first run of a distortion computes its pool of distorted copies; that run's time is not
# a warm retrain and is printed on stderr only).
#
#   bench/accuracy.sh IMAGE_DIR WORK_DIR [SEEDS] [CONFIG ...]
#
# Prints TSV: configuration, steps, seed, test accuracy (%), wall seconds. A CONFIG is one
# of the names below (all of them by default) or a quoted string of flags. The split is
# retrain.py's hash split, so it is the same for every run; seeds change the initial
# weights and the batches sampled.
set -euo pipefail
images=${1:?usage: bench/accuracy.sh IMAGE_DIR WORK_DIR [SEEDS] [CONFIG ...]}
work=${2:?usage: bench/accuracy.sh IMAGE_DIR WORK_DIR [SEEDS] [CONFIG ...]}
seeds=${3:-"1 2 3 4 5"}
shift $(( $# < 3 ? $# : 3 ))
root=$(cd "$(dirname "$0")/.." && pwd)
(cd "$root" && cargo build --release --bin flowers >&2)
mkdir -p "$work"
cp "$root/target/release/flowers" "$work/flowers"

declare -A configs=(
    [plain]=""
    [flip]="--flip_left_right"
    [crop10]="--random_crop 10"
    [scale10]="--random_scale 10"
    [brightness10]="--random_brightness 10"
    [all4]="--flip_left_right --random_crop 10 --random_scale 10 --random_brightness 10"
    [all4_k1]="--flip_left_right --random_crop 10 --random_scale 10 --random_brightness 10 --distorted-copies 1"
    [all4_k2]="--flip_left_right --random_crop 10 --random_scale 10 --random_brightness 10 --distorted-copies 2"
    [all4_k5]="--flip_left_right --random_crop 10 --random_scale 10 --random_brightness 10 --distorted-copies 5"
    [all4_k20]="--flip_left_right --random_crop 10 --random_scale 10 --random_brightness 10 --distorted-copies 20"
)
names=("$@")
if [[ ${#names[@]} -eq 0 ]]; then
    names=(plain flip crop10 scale10 brightness10 all4 all4_k1 all4_k2 all4_k5 all4_k20)
fi

grep -m1 "model name" /proc/cpuinfo >&2 || true
printf 'config\tsteps\tseed\taccuracy\twall_s\n'
for name in "${names[@]}"; do
    flags=${configs[$name]-$name}
    # Warm the caches (plain and distorted bottlenecks) once, untimed.
    # shellcheck disable=SC2086
    "$work/flowers" retrain --image-dir "$images" --bottleneck-dir "$work/bottlenecks" \
        --output-graph "$work/graph.onnx" --output-labels "$work/labels.txt" \
        --how-many-training-steps 10 --quiet $flags >/dev/null
    for steps in 500 4000; do
        for seed in $seeds; do
            start=$(date +%s.%N)
            # shellcheck disable=SC2086
            accuracy=$("$work/flowers" retrain --image-dir "$images" --bottleneck-dir "$work/bottlenecks" \
                --output-graph "$work/graph.onnx" --output-labels "$work/labels.txt" \
                --how-many-training-steps "$steps" --seed "$seed" --quiet $flags \
                | grep -o "Final test accuracy = [0-9.]*" | grep -o "[0-9.]*$")
            end=$(date +%s.%N)
            printf '%s\t%s\t%s\t%s\t%.2f\n' "$name" "$steps" "$seed" "$accuracy" "$(echo "$end - $start" | bc)"
        done
    done
done
