# shellcheck shell=bash
# Shared by bench/ab_binaries.sh and bench/warm_ab.sh (sourced, not run): the setup, the
# timer, the alternated rounds and the medians of two binaries measured side by side.

# ab_setup OLD NEW IMAGE_DIR ROUNDS: sets OLD, NEW, IMAGE_DIR, ROUNDS, WORK (removed on
# exit) and PHOTO (the first photo), prints the machine, and warms the page cache.
ab_setup() {
    OLD=$(realpath "$1")
    NEW=$(realpath "$2")
    IMAGE_DIR=$(cd "$3" && pwd)
    ROUNDS=$4
    WORK=$(mktemp -d)
    trap 'rm -rf "$WORK"' EXIT
    local cpu_model simd_flags
    cpu_model=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
    simd_flags=$(grep -m1 -o -w -E 'avx2|fma|sha_ni|avx512[a-z_0-9]*' /proc/cpuinfo | sort -u | tr '\n' ' ')
    echo "## CPU: $cpu_model, $(nproc) cores; SIMD flags: $simd_flags"
    echo "## old: $OLD"
    echo "## new: $NEW"
    echo "## images: $IMAGE_DIR, $ROUNDS rounds"
    find "$IMAGE_DIR" -type f -exec cat {} + >/dev/null # warm the page cache
    # shellcheck disable=SC2034 # read by the scripts that source this one
    PHOTO=$(find "$IMAGE_DIR" -type f -name '*.jpg' | sort | sed -n 1p)
}

# AB_CLOCK=cpu: `seconds` gives the run's CPU time (user + system, all threads, from
# `perf stat`'s task clock) instead of its wall time: the steadier figure on a machine
# other jobs share.
seconds() { # seconds COMMAND...: wall (or CPU) time of one run, in seconds
    local start end
    if [ "${AB_CLOCK:-wall}" = cpu ]; then
        perf stat -x, -e task-clock -o "$WORK/task-clock" "$@" >/dev/null 2>&1
        awk -F, '$3 ~ /task-clock/ {printf "%.6f\n", $1 / 1000}' "$WORK/task-clock"
        return
    fi
    start=$(date +%s.%N)
    "$@" >/dev/null 2>&1
    end=$(date +%s.%N)
    echo "$end - $start" | bc -l
}

binary_of() { # binary_of TAG: the binary called old or new
    if [ "$1" = new ]; then echo "$NEW"; else echo "$OLD"; fi
}

# ab_rounds FIRST SECOND [CHECK]: ROUNDS alternated rounds; each runs the function FIRST
# (called as FIRST BINARY TAG) for both binaries, then CHECK (if given), then SECOND, the
# order swapped every round. The four times of a round go to "$WORK/rows".
ab_rounds() {
    local first=$1 second=$2 check=${3:-true} round order tag
    local -A first_s second_s
    : >"$WORK/rows"
    for round in $(seq 1 "$ROUNDS"); do
        if [ $((round % 2)) = 1 ]; then order="old new"; else order="new old"; fi
        for tag in $order; do first_s[$tag]=$("$first" "$(binary_of "$tag")" "$tag"); done
        "$check"
        for tag in $order; do second_s[$tag]=$("$second" "$(binary_of "$tag")" "$tag"); done
        printf 'round %s (%s): %s %.3f / %.3f s, %s %.3f / %.3f s (old / new)\n' "$round" "$order" \
            "$first" "${first_s[old]}" "${first_s[new]}" "$second" "${second_s[old]}" "${second_s[new]}"
        echo "${first_s[old]} ${first_s[new]} ${second_s[old]} ${second_s[new]}" >>"$WORK/rows"
    done
}

median() { sort -g | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }

ab_summary() { # ab_summary FIRST_NAME SECOND_NAME: medians and new/old ratios of the rows
    local name column=1
    for name in "$1" "$2"; do
        printf '%s: old %.3f s, new %.3f s, new/old ratio %.3f\n' "$name" \
            "$(awk -v c=$column '{print $c}' "$WORK/rows" | median)" \
            "$(awk -v c=$((column + 1)) '{print $c}' "$WORK/rows" | median)" \
            "$(awk -v c=$column '{print $(c+1)/$c}' "$WORK/rows" | median)"
        column=$((column + 2))
    done
}
