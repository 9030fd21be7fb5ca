#!/usr/bin/env bash
# Runs each fuzz target of the graph loaders and the bottleneck cache reader
# (fuzz/fuzz_targets) for a bounded time, one after the other on one core, and prints one
# line per target: executions, crashes (crash, leak, out-of-memory and timeout artifacts
# libFuzzer wrote), CPU seconds, and the corpus size. Not part of CI.
#
#   bench/fuzz.sh SECONDS [TARGET ...]   (default: label_onnx label_tensorflow cache_entry)
#
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). Seeds: the graphs
# of tests/fixtures/hostile/graphs (the TensorFlow target's without their first byte, see
# its source) and one valid cache entry. The corpus grows in fuzz/corpus/TARGET and
# findings land in fuzz/artifacts/TARGET (both ignored by git); replay one with
# `cargo +nightly fuzz run TARGET fuzz/artifacts/TARGET/FILE`.
# FUZZ_FLAGS (environment) go to cargo fuzz; the default, `--sanitizer none`, runs many
# times more inputs per second than AddressSanitizer: the code fuzzed is safe Rust apart
# from flowers' SIMD kernels, which loading swaps in but never runs.
# A run is bounded in memory (-rss_limit_mb, -malloc_limit_mb: a graph must not make
# flowers allocate 2 GiB) and time per input (-timeout).
set -euo pipefail
seconds=${1:?usage: bench/fuzz.sh SECONDS [TARGET ...]}
shift
targets=("${@:-label_onnx label_tensorflow cache_entry}")
read -r -a targets <<<"${targets[*]}"
FUZZ_FLAGS=${FUZZ_FLAGS:---sanitizer none}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root/fuzz"
graphs=$root/tests/fixtures/hostile/graphs

seed() { # target corpus-dir
    local target=$1 dir=$2 file
    mkdir -p "$dir"
    case $target in
        label_onnx) cp "$graphs"/*.onnx "$dir/" ;;
        label_tensorflow)
            for file in "$graphs"/*.pb; do
                tail -c +2 "$file" >"$dir/$(basename "$file")"
            done
            ;;
        cache_entry)
            python3 - "$dir/valid.bn" <<'PY'
import hashlib, struct, sys
body = b"FLWRBN01" + bytes(range(32)) + bytes(range(32, 64)) + struct.pack("<I", 3)
body += struct.pack("<3f", 0.5, -1.0, 2.0)
open(sys.argv[1], "wb").write(body + hashlib.sha256(body).digest())
PY
            ;;
    esac
}

printf '%-18s %12s %8s %8s %8s\n' target executions crashes cpu_s corpus
for target in "${targets[@]}"; do
    cargo +nightly fuzz build $FUZZ_FLAGS "$target" >&2
    corpus=corpus/$target
    artifacts=artifacts/$target
    mkdir -p "$artifacts"
    seed "$target" "$corpus"
    before=$(find "$artifacts" -type f | wc -l)
    log=$(mktemp)
    # One process, one core; libFuzzer stops at the first finding.
    /usr/bin/time -f '%U %S' -o "$log.time" \
        cargo +nightly fuzz run $FUZZ_FLAGS "$target" "$corpus" -- \
        -max_total_time="$seconds" -print_final_stats=1 -max_len=65536 \
        -rss_limit_mb=2048 -malloc_limit_mb=2048 -timeout=30 >"$log" 2>&1 || true
    executions=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
    crashes=$(($(find "$artifacts" -type f | wc -l) - before))
    cpu=$(awk '{printf "%.0f", $1 + $2}' "$log.time")
    printf '%-18s %12s %8s %8s %8s\n' "$target" "${executions:-0}" "$crashes" "$cpu" "$(find "$corpus" -type f | wc -l)"
    if [ "$crashes" -gt 0 ]; then
        grep -m5 -E 'ERROR|panic|abort|SUMMARY' "$log" >&2 || true
    fi
    rm -f "$log" "$log.time"
done
