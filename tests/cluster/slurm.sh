#!/usr/bin/env bash
# The cluster recipes of docs/cluster.md, run by the schedulers they document.
#
# Slurm: a single-node cluster (munged, slurmctld, slurmd from Debian's slurm-wlm and munge,
# no cgroups) in a temporary folder; the docs' own ```sh blocks of the Slurm section run with
# only paths, the array size and the CPUs per task swapped; one task is cancelled before it
# runs, the final job must then be cancelled by --kill-on-invalid-dep=yes, the docs' recovery
# must finish the work, and the graph and labels must be byte-identical to a single-machine
# retrain. GNU parallel: the docs' one command, with local slots instead of ssh hosts.
#
# Installs slurm-wlm, munge and parallel with apt when missing; where that cannot be done
# (not root, no apt, no network) the checks are counted as skipped, with the reason printed.
# Stops every daemon it started by PID and removes its folder (FLOWERS_CLUSTER_KEEP=1 keeps
# the folder for a post-mortem). Ends with one line: `cluster: N passed, N failed, N skipped`.
#
# Usage: bash tests/cluster/slurm.sh   (from anywhere; builds target/release/flowers first)
set -uo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
docs=$repo/docs/cluster.md
started=$SECONDS
passed=0 failed=0 skipped=0
# Checks of each part, so a part that cannot run counts its checks as skipped.
slurm_checks=9 parallel_checks=3

pass() { passed=$((passed + 1)); echo "PASS $1"; }
fail() { failed=$((failed + 1)); echo "FAIL $1"; }
skip() { skipped=$((skipped + $1)); echo "SKIP $2"; }
say() { echo "== $*" >&2; }

# --- the binary -------------------------------------------------------------------------

# A no-op after `cargo test --release` (CI); run by hand, the binary matches the source.
(cd "$repo" && cargo build --release --quiet) || {
    echo "FAIL cannot build target/release/flowers"
    exit 1
}
export PATH="$repo/target/release:$PATH"

# --- installing what is missing -----------------------------------------------------------

install_seconds=0
# The packages of $@ that are not installed.
missing_packages() {
    local package
    for package in "$@"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' ||
            echo "$package"
    done
}

# Installs packages $@ where missing; sets `problem` to why they cannot be, or to nothing.
install_packages() {
    local missing
    problem=
    missing=$(missing_packages "$@" | tr '\n' ' ')
    missing=${missing% }
    [[ -n $missing ]] || return 0
    if [[ $(id -u) != 0 ]]; then
        problem="not root, so apt-get cannot install them"
        return 0
    fi
    if ! command -v apt-get >/dev/null; then
        problem="no apt-get on this machine"
        return 0
    fi
    say "installing $missing with apt-get"
    local begin=$SECONDS policy_added=0 log
    log=$(mktemp)
    # Packages start their services on install unless policy-rc.d says no: this script
    # starts its own daemons, and leaves none of the packages' running.
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d &&
            policy_added=1
    fi
    # shellcheck disable=SC2086 # $missing is a list of package names
    if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing; } \
        </dev/null >"$log" 2>&1; then
        problem="apt-get could not install them: $(grep -E '^(E|W):' "$log" | tail -n 1)"
    fi
    if ((policy_added)); then rm -f /usr/sbin/policy-rc.d; fi
    rm -f "$log"
    install_seconds=$((SECONDS - begin))
}

# One apt-get run for both parts; a part is skipped only where its own packages are missing.
install_packages slurm-wlm munge parallel
slurm_skip='' parallel_skip=''
if [[ -n $problem ]]; then
    missing=$(missing_packages slurm-wlm munge | tr '\n' ' ')
    [[ -n $missing ]] && slurm_skip="${missing}not installed and $problem"
    missing=$(missing_packages parallel | tr '\n' ' ')
    [[ -n $missing ]] && parallel_skip="${missing}not installed and $problem"
fi

# --- the work folder and cleanup ----------------------------------------------------------

work=$(mktemp -d /tmp/flowers-cluster.XXXXXX)
# munged wants every folder above its socket searchable by all.
chmod 755 "$work"
daemon_pids=()
# Stops the daemons this script started, by PID, after cancelling every job of its cluster.
stop_daemons() {
    if ((${#daemon_pids[@]})); then
        # Jobs first, so no slurmstepd outlives its slurmd.
        scancel --quiet --full --state=RUNNING,PENDING --user=root 2>/dev/null
        local pid tries
        for ((tries = 0; tries < 20; tries++)); do
            [[ -z $(squeue -h -t PENDING,RUNNING,COMPLETING 2>/dev/null) ]] && break
            sleep 0.5
        done
        # slurmd, then slurmctld, then munged: each needs the next to shut down cleanly.
        for ((i = ${#daemon_pids[@]} - 1; i >= 0; i--)); do
            pid=${daemon_pids[i]}
            kill -TERM "$pid" 2>/dev/null || continue
            for ((tries = 0; tries < 40; tries++)); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.25
            done
            kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
            wait "$pid" 2>/dev/null
        done
        daemon_pids=()
    fi
}
cleanup() {
    stop_daemons
    if [[ ${FLOWERS_CLUSTER_KEEP:-} == 1 ]]; then
        echo "kept $work" >&2
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the docs' blocks ---------------------------------------------------------------------

# The ```sh blocks of one `## ` section of docs/cluster.md, each ended by a line "%%END%%".
sh_blocks() {
    awk -v section="$1" '
        /^## / { inside = index($0, section) == 4 }
        inside && /^```sh$/ { block = 1; next }
        block && /^```$/ { block = 0; print "%%END%%"; next }
        block { print }
    ' "$docs"
}

# Block number $2 (from 1) of the blocks in $1.
nth_block() {
    awk -v want="$2" '/^%%END%%$/ { n++; next } n + 1 == want { print }' <<<"$1"
}

# Text $1 with every FROM replaced by TO for each pair "FROM" "TO" that follows; fails when
# the text has no FROM (the docs changed shape, and the test would no longer run them).
swap() {
    local text=$1
    shift
    while (($# >= 2)); do
        if [[ $text != *"$1"* ]]; then
            echo "docs/cluster.md changed: no '$1' left to substitute" >&2
            return 1
        fi
        text=${text//"$1"/$2}
        shift 2
    done
    printf '%s\n' "$text"
}

# The "Shard K/N: C computed, D cached, ..." summaries in files $@, as "C D" per line.
shard_counts() {
    sed -n 's/^Shard [^:]*: \([0-9]*\) computed, \([0-9]*\) cached.*/\1 \2/p' "$@"
}

photos=$work/shared/photos
mkdir -p "$photos"
for class in "$repo"/tests/data/flower_sample/*/; do
    cp -r "$class" "$photos/"
done
image_count=$(find "$photos" -type f -name '*.jpg' | wc -l)

# A single-machine retrain with the flags of the docs' final step $1 (a command line whose
# /shared/ paths were swapped already), from a fresh cache, in folder $2.
reference_retrain() {
    local command=${1//--require-cached /} folder=$2
    mkdir -p "$folder"
    command=${command//"$work/shared/bottlenecks"/$folder/bottlenecks}
    command=${command//"$work/shared/retrained_"/$folder/retrained_}
    command=${command//"$work/par/bottlenecks"/$folder/bottlenecks}
    (cd "$folder" && bash -euo pipefail -c "$command") >"$folder/log" 2>&1
}

# Compares $2/retrained_graph.onnx and labels with the reference in $3; $1 names the part.
same_outputs() {
    local part=$1 cluster=$2 single=$3 file
    for file in retrained_graph.onnx retrained_labels.txt; do
        if [[ -s $cluster/$file ]] && cmp -s "$cluster/$file" "$single/$file"; then
            pass "$part: $file byte-identical to a single-machine retrain"
        else
            fail "$part: $file differs from a single-machine retrain (or is missing)"
        fi
    done
}

# --- Slurm --------------------------------------------------------------------------------

slurm_version=
cpus=$(nproc)

start_slurm() {
    local conf=$work/slurm mem
    mkdir -p "$conf/state" "$conf/spool" "$work/munge"
    chmod 755 "$work/munge"
    head -c 1024 /dev/urandom >"$work/munge/munge.key"
    chmod 400 "$work/munge/munge.key"
    mem=$(awk '/^MemTotal:/ { print int($2 / 1024) }' /proc/meminfo)
    # No cgroups (containers, CI): processes tracked by parent id, no task binding. The
    # partition starts DOWN so jobs queue but none runs until the test has cancelled a task.
    cat >"$conf/slurm.conf" <<EOF
ClusterName=flowers-test
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$work/munge/munge.socket
StateSaveLocation=$conf/state
SlurmdSpoolDir=$conf/spool
SlurmctldPidFile=$conf/slurmctld.pid
SlurmdPidFile=$conf/slurmd.pid
SlurmctldLogFile=$conf/slurmctld.log
SlurmdLogFile=$conf/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SchedulerType=sched/backfill
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
MinJobAge=600
KillWait=5
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=test Nodes=localhost Default=YES MaxTime=INFINITE State=DOWN
EOF
    export SLURM_CONF=$conf/slurm.conf
    munged --foreground --key-file="$work/munge/munge.key" --socket="$work/munge/munge.socket" \
        --pid-file="$work/munge/munged.pid" --log-file="$work/munge/munged.log" \
        --seed-file="$work/munge/munged.seed" 2>>"$work/munge/munged.log" &
    daemon_pids+=($!)
    wait_for 10 "munged's socket" test -S "$work/munge/munge.socket" || return 1
    slurmctld -D -c -f "$SLURM_CONF" >>"$conf/slurmctld.log" 2>&1 &
    daemon_pids+=($!)
    wait_for 20 "slurmctld" bash -c 'scontrol ping 2>/dev/null | grep -q "is UP"' || return 1
    slurmd -D -N localhost -f "$SLURM_CONF" >>"$conf/slurmd.log" 2>&1 &
    daemon_pids+=($!)
    # shellcheck disable=SC2016 # expanded by the bash that wait_for runs
    wait_for 30 "slurmd to register" bash -c '[[ $(sinfo -h -N -o %t 2>/dev/null) == idle ]]' ||
        return 1
    slurm_version=$(sinfo --version | awk '{ print $2 }')
}

# Runs "$3..." every half second until it succeeds or $1 seconds passed; $2 says what for.
wait_for() {
    local seconds=$1 what=$2 tries
    shift 2
    for ((tries = 0; tries < seconds * 2; tries++)); do
        "$@" && return 0
        sleep 0.5
    done
    echo "timed out after ${seconds}s waiting for $what" >&2
    return 1
}

# "ID STATE REASON" for every task of jobs $@ (comma-joined), finished ones included.
job_states() {
    local IFS=,
    squeue -h -r -t all -j "$*" -o '%i %T %r' 2>/dev/null
}

# Waits until none of jobs $@ is pending, running or completing (at most $timeout seconds).
wait_jobs() {
    local IFS=,
    local ids="$*"
    wait_for "${timeout:-120}" "jobs $ids to finish" \
        bash -c "[[ -z \$(squeue -h -r -t PENDING,RUNNING,CONFIGURING,COMPLETING,SUSPENDED -j $ids) ]]"
}

# State of job (or task) $1.
state_of() { job_states "$1" | awk -v id="$1" '$1 == id { print $2 }'; }

# Runs the docs' Slurm section. Any step that cannot go on returns 1 (its checks failed).
run_slurm() {
    local blocks script submit recover final out
    blocks=$(sh_blocks "Slurm: an array job")
    script=$(nth_block "$blocks" 1)
    submit=$(nth_block "$blocks" 2)
    recover=$(nth_block "$blocks" 3)
    if [[ -z $script || -z $submit || -z $recover ]]; then
        fail "slurm: docs/cluster.md's Slurm section has its three sh blocks (script, submission, recovery)"
        return 1
    fi
    # The final step, for the recovery: the submission block from its `sbatch --dependency` on.
    final=$(awk '/^sbatch --dependency/ { on = 1 } on' <<<"$submit")
    local paths=("/shared/" "$work/shared/") size=("--cpus-per-task=4" "--cpus-per-task=$cpus")
    if ! script=$(swap "$script" "${paths[@]}" "${size[@]}" "--array=1-8" "--array=1-3") ||
        ! submit=$(swap "$submit" "${paths[@]}" "${size[@]}") ||
        ! final=$(swap "$final" "${paths[@]}" "${size[@]}"); then
        fail "slurm: the docs' blocks take the test's paths and sizes"
        return 1
    fi
    out=$work/submit
    mkdir -p "$out"
    printf '%s\n' "$script" >"$out/extract.sbatch"

    # 1. The docs' submission, as written. The partition is down: nothing runs yet.
    local array final_job
    # shellcheck disable=SC2016 # $jobid is the docs' variable, printed by the shell that runs them
    if ! (cd "$out" && printf '%s\necho "array job: $jobid"\n' "$submit" | bash -e) \
        >"$out/first.log" 2>&1; then
        fail "slurm: the docs' submission block runs: $(tail -n 1 "$out/first.log")"
        return 1
    fi
    array=$(sed -n 's/^array job: //p' "$out/first.log")
    final_job=$(sed -n 's/^Submitted batch job //p' "$out/first.log")
    pass "slurm: the docs' submission queues the array (job $array, 3 tasks) and the final step (job $final_job)"

    # 2. Task 3 is cancelled before it runs; the final step must then be cancelled, not
    #    wait for ever.
    scancel "${array}_3"
    scontrol update PartitionName=test State=UP
    wait_jobs "$array" "$final_job"
    # A pending task that is cancelled leaves the array: squeue no longer lists it.
    local tasks
    tasks="$(state_of "${array}_1") $(state_of "${array}_2") $(state_of "${array}_3")"
    if [[ $tasks == "COMPLETED COMPLETED " && ! -e $out/slurm-${array}_3.out ]]; then
        pass "slurm: tasks 1 and 2 completed, task 3 was cancelled before it ran"
    else
        fail "slurm: tasks 1, 2, 3 ended '$tasks', not 'COMPLETED COMPLETED ' with task 3 never run"
    fi
    local final_state
    final_state=$(job_states "$final_job")
    if [[ $final_state == "$final_job CANCELLED DependencyNeverSatisfied" ]]; then
        pass "slurm: the final step was cancelled (DependencyNeverSatisfied), as --kill-on-invalid-dep=yes promises"
    else
        fail "slurm: the final step ended '$final_state', not cancelled by --kill-on-invalid-dep=yes"
    fi

    # 3. The docs' recovery: the failed task as one range, then the final step again.
    local again final_again
    # shellcheck disable=SC2016 # as above
    if ! (cd "$out" && printf '%s\n%s\necho "array job: $jobid"\n' "$recover" "$final" | bash -e) \
        >"$out/recover.log" 2>&1; then
        fail "slurm: the docs' recovery block runs: $(tail -n 1 "$out/recover.log")"
        return 1
    fi
    again=$(sed -n 's/^array job: //p' "$out/recover.log")
    final_again=$(sed -n 's/^Submitted batch job //p' "$out/recover.log")
    timeout=150 wait_jobs "$again" "$final_again"
    tasks="$(state_of "${again}_3") $(state_of "$final_again")"
    if [[ $tasks == "COMPLETED COMPLETED" ]]; then
        pass "slurm: the docs' recovery (task 3 again, then the final step) completed"
    else
        fail "slurm: the recovery's task 3 and final step ended '$tasks', not COMPLETED COMPLETED"
        tail -n 5 "$out"/slurm-*.out >&2
    fi

    # Each image computed once: tasks 1 and 2 their shards, task 3 again only the rest.
    local first second third
    first=$(shard_counts "$out/slurm-${array}_1.out" "$out/slurm-${array}_2.out" |
        awk '{ c += $1 } END { print c + 0 }')
    third=$(shard_counts "$out/slurm-${again}_3.out")
    second="$((image_count - first)) $first"
    if [[ $third == "$second" ]]; then
        pass "slurm: tasks 1-2 computed $first images; the resubmitted task 3 computed the other $((image_count - first)) and found $first cached"
    else
        fail "slurm: the resubmitted task 3 computed/cached '$third', not '$second'"
    fi

    # 4. The graph and labels equal a single-machine retrain's with the same flags.
    local wrapped
    wrapped=$(tr '\n' ' ' <<<"${final//\\$'\n'/}" | sed -n 's/.*--wrap *"\(.*\)".*/\1/p')
    if reference_retrain "$wrapped" "$work/single"; then
        same_outputs slurm "$work/shared" "$work/single"
    else
        fail "slurm: the single-machine retrain ran: $(tail -n 1 "$work/single/log")"
        fail "slurm: labels (not compared)"
    fi

    # 5. A list array is refused before any work, with Slurm's own variables.
    local list
    list=$( (cd "$out" && sbatch --parsable --array=1,3 extract.sbatch) 2>&1)
    wait_jobs "$list"
    tasks="$(state_of "${list}_1") $(state_of "${list}_3")"
    if [[ $tasks == "FAILED FAILED" ]] &&
        grep -q "not one contiguous range" "$out/slurm-${list}_1.out" "$out/slurm-${list}_3.out" &&
        [[ -z $(shard_counts "$out/slurm-${list}_1.out" "$out/slurm-${list}_3.out") ]]; then
        pass "slurm: a list array (--array=1,3) fails before any work: $(grep -h -m1 -o 'error: [^(]*contiguous range' "$out/slurm-${list}_1.out") (...)"
    else
        fail "slurm: a list array (--array=1,3) ended '$tasks' without the one-range error"
        cat "$out/slurm-${list}"_*.out >&2
    fi
}

if [[ -n $slurm_skip ]]; then
    skip "$slurm_checks" "slurm: $slurm_skip"
elif ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    skip "$slurm_checks" "slurm: slurmctld or munged not on PATH after installing slurm-wlm and munge"
else
    before=$((passed + failed))
    if start_slurm; then
        say "slurm $slurm_version up (1 node, $cpus CPUs)"
        run_slurm
        cleanup_pids=("${daemon_pids[@]}")
        stop_daemons
        # A job step's slurmstepd outlives its slurmd by a moment: give it five seconds.
        if wait_for 5 "slurmstepd to exit" bash -c "! pgrep -x slurmstepd >/dev/null && ! ps -p ${cleanup_pids[*]// /,} >/dev/null"; then
            pass "slurm: munged, slurmctld, slurmd stopped (PIDs ${cleanup_pids[*]}), no slurmstepd left"
        else
            fail "slurm: still running after the stop: $(ps -o pid=,comm= -p "$(pgrep -d, -x slurmstepd),${cleanup_pids[*]// /,}" | tr -s '\n ' ' ')"
        fi
    else
        fail "slurm: munged, slurmctld and slurmd start"
        stop_daemons
        tail -n 5 "$work/munge/munged.log" "$work/slurm/slurmctld.log" "$work/slurm/slurmd.log" >&2
    fi
    # Checks that never ran because an earlier step failed count as failed.
    missing=$((slurm_checks - (passed + failed - before)))
    ((missing > 0)) && failed=$((failed + missing)) && echo "FAIL slurm: $missing checks not reached"
fi

# --- GNU parallel -------------------------------------------------------------------------

run_parallel() {
    local block command
    block=$(nth_block "$(sh_blocks "A few machines with GNU parallel")" 1)
    if ! command=$(swap "$block" "--sshlogin host1,host2,host3" "--sshlogin :" \
        "/mnt/shared/photos" "$photos" "/mnt/shared/bottlenecks" "$work/par/bottlenecks"); then
        fail "parallel: the docs' block takes the test's paths"
        return 1
    fi
    mkdir -p "$work/par"
    if ! (cd "$work/par" && bash -euo pipefail -c "$command") >"$work/par/out" 2>"$work/par/log"; then
        fail "parallel: the docs' command ran: $(tail -n 1 "$work/par/log")"
        return 1
    fi
    local counts
    counts=$(shard_counts "$work/par/out" | awk '{ c += $1; n++ } END { print n + 0, c + 0 }')
    if [[ $counts == "3 $image_count" ]]; then
        pass "parallel: 3 shards computed the $image_count images once between them"
    else
        fail "parallel: shards and images computed '$counts', not '3 $image_count'"
    fi
    # The final retrain of the block, as the single-machine reference.
    local final=${command#*&& }
    if reference_retrain "$final" "$work/par_single"; then
        same_outputs parallel "$work/par" "$work/par_single"
    else
        fail "parallel: the single-machine retrain ran: $(tail -n 1 "$work/par_single/log")"
        fail "parallel: labels (not compared)"
    fi
}

if [[ -n $parallel_skip ]]; then
    skip "$parallel_checks" "parallel: $parallel_skip"
else
    before=$((passed + failed))
    run_parallel
    missing=$((parallel_checks - (passed + failed - before)))
    ((missing > 0)) && failed=$((failed + missing)) && echo "FAIL parallel: $missing checks not reached"
fi

echo "cluster tests took $((SECONDS - started)) s, of which apt-get ${install_seconds} s (slurm ${slurm_version:-not run}, $cpus CPUs)"
echo "cluster: $passed passed, $failed failed, $skipped skipped"
((failed == 0))
