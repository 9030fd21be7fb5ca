#!/usr/bin/env bash
# Training memory against the image count (issue 14): warm retrains of synthetic datasets
# whose bottlenecks are all cached (examples/synthetic_dataset.rs), mapped and streamed,
# optionally inside a memory cgroup that caps the run, page cache included.
#
#   bench/memory.sh WORK_DIR [COUNT ...]        (default counts: 100000 1000000)
#
# RUNS (environment) picks runs among: mapped streamed capped-mapped capped-streamed (all
# by default). A mapped 1M run capped at 2 GB pages without end (see BENCHMARKS.md).
# Needs root and cgroup v1's memory controller for the capped runs (skipped otherwise).
# Prints one line per run: count, --training-memory, cap, wall seconds, peak RSS (MiB,
# /usr/bin/time %M), the cgroup's peak usage (MiB, page cache included), exit code.
set -euo pipefail
work=${1:?usage: bench/memory.sh WORK_DIR [COUNT ...]}
shift
counts=("${@:-100000 1000000}")
read -r -a counts <<<"${counts[*]}"
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo build --release --bin flowers --example synthetic_dataset >&2
# A copy, so that rebuilding during the (long) runs does not change the binary measured.
mkdir -p "$work"
cp "$root/target/release/flowers" "$work/flowers"
flowers=$work/flowers
cgroup=/sys/fs/cgroup/memory/flowers-bench

grep -m1 "model name" /proc/cpuinfo >&2 || true

run() { # count training-memory cap(MiB or "-")
    local count=$1 memory=$2 cap=$3 data=$work/$1 out=$work/out
    mkdir -p "$out"
    local peak=-
    local command=("$flowers" retrain --image-dir "$data/images" --bottleneck-dir "$data/bottlenecks"
        --training-memory "$memory" --output-graph "$out/graph.onnx" --output-labels "$out/labels.txt"
        --quiet)
    sync
    echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
    local code=0
    set +e
    if [[ $cap != - ]]; then
        mkdir -p "$cgroup"
        echo $((cap * 1024 * 1024)) >"$cgroup/memory.limit_in_bytes"
        echo 0 >"$cgroup/memory.max_usage_in_bytes"
        bash -c 'echo $$ > '"$cgroup"'/cgroup.procs; exec "$@"' _ \
            /usr/bin/time -f "%e %M" -o "$out/time" "${command[@]}" >"$out/stdout" 2>"$out/stderr"
        code=$?
        peak=$(( $(cat "$cgroup/memory.max_usage_in_bytes") / 1024 / 1024 ))
    else
        /usr/bin/time -f "%e %M" -o "$out/time" "${command[@]}" >"$out/stdout" 2>"$out/stderr"
        code=$?
    fi
    set -e
    read -r wall rss <"$out/time" || { wall=-; rss=0; }
    local accuracy
    accuracy=$(grep -o "Final test accuracy = [0-9.]*%" "$out/stdout" | grep -o "[0-9.]*%" || echo -)
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$count" "$memory" "$cap" "$wall" "$((rss / 1024))" "$peak" "$code" "$accuracy"
}

printf 'images\t--training-memory\tcap MiB\twall s\tpeak RSS MiB\tcgroup peak MiB\texit\ttest accuracy\n'
for count in "${counts[@]}"; do
    if [[ ! -d $work/$count/images ]]; then
        cargo run --release --example synthetic_dataset -- "$work/$count/images" "$work/$count/bottlenecks" "$count" >&2
    fi
    runs=${RUNS:-mapped streamed capped-mapped capped-streamed}
    [[ $runs == *" mapped"* || $runs == mapped* ]] && run "$count" 64GiB -
    [[ $runs == *" streamed"* || $runs == streamed* ]] && run "$count" 256MiB -
    if [[ -w /sys/fs/cgroup/memory ]]; then
        [[ $runs == *capped-mapped* ]] && run "$count" 64GiB 2048
        [[ $runs == *capped-streamed* ]] && run "$count" 256MiB 2048
    fi
done
