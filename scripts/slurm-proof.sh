#!/bin/bash
# Proof of `engram sweep emit --slurm` on a real Slurm: starts a single-node cluster on this
# machine (munge, slurmctld, slurmd, configured in a temporary folder), runs a 3-run sweep
# through `sbatch --wait`, checks every run finished, submits it again to check that nothing
# runs twice, and stops the daemons it started.
#
#   scripts/slurm-proof.sh [ENGRAM_BINARY]     (default: $ENGRAM_BIN, else target/debug/engram)
#
# Needs root (it installs slurm-wlm and munge with apt-get when missing, and runs the daemons
# as root). Exits 0 only when Slurm ran every run; otherwise it says why (with the daemons'
# last log lines) and exits non-zero: where Slurm cannot run, this script fails loudly rather
# than pass without proof.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
ENGRAM=${1:-${ENGRAM_BIN:-$ROOT/target/debug/engram}}
fail() {
    echo "slurm-proof: FAILED: $*" >&2
    exit 1
}
[ -x "$ENGRAM" ] || fail "no engram binary at $ENGRAM (build it: cargo build -p engram-cli)"
ENGRAM=$(cd "$(dirname "$ENGRAM")" && pwd)/$(basename "$ENGRAM")
[ "$(id -u)" = 0 ] || fail "not root: this script installs packages and starts slurmctld, slurmd and munged as root"

if ! command -v slurmctld > /dev/null || ! command -v slurmd > /dev/null || ! command -v munged > /dev/null; then
    echo "slurm-proof: installing slurm-wlm and munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q slurm-wlm munge > /tmp/slurm-proof-apt.log 2>&1 ||
        { apt-get update -q > /dev/null 2>&1 && apt-get install -y -q slurm-wlm munge > /tmp/slurm-proof-apt.log 2>&1; } ||
        { tail -20 /tmp/slurm-proof-apt.log >&2; fail "apt-get install slurm-wlm munge failed"; }
fi

D=$(mktemp -d /tmp/slurm-proof.XXXXXX)
export SLURM_CONF=$D/slurm.conf
NODE=$(hostname -s)
CPUS=$(nproc)
STARTED_MUNGE=
logs() {
    for f in "$D"/slurmctld.log "$D"/slurmd.log /var/log/munge/munged.log "$D"/munged.out; do
        [ -s "$f" ] && { echo "--- last lines of $f:"; tail -n 15 "$f"; }
    done
    for f in "$D"/runs/slurm-*.out; do
        [ -s "$f" ] && { echo "--- $f:"; tail -n 15 "$f"; }
    done
    true
}
stop() {
    local rc=$?
    [ $rc = 0 ] || logs >&2
    local pids=
    for f in "$D/slurmd.pid" "$D/slurmctld.pid"; do
        [ -s "$f" ] && pids+=" $(cat "$f")"
    done
    [ -n "$STARTED_MUNGE" ] && [ -s /run/munge/munged.pid ] && pids+=" $(cat /run/munge/munged.pid)"
    for p in $pids; do kill "$p" 2> /dev/null || true; done
    for _ in $(seq 20); do
        alive=
        for p in $pids; do kill -0 "$p" 2> /dev/null && alive=1; done
        [ -z "$alive" ] && break
        sleep 0.5
    done
    if [ $rc = 0 ]; then rm -rf "$D"; else echo "slurm-proof: files kept in $D" >&2; fi
    exit $rc
}
trap stop EXIT

# munge: the key the package made; the daemon as the munge user, unless one answers already.
if ! munge -n 2> /dev/null | unmunge > /dev/null 2>&1; then
    [ -s /etc/munge/munge.key ] || { mungekey --create 2> /dev/null || /usr/sbin/create-munge-key -f; }
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    runuser -u munge -- /usr/sbin/munged > "$D/munged.out" 2>&1 || fail "munged did not start"
    STARTED_MUNGE=1
    for _ in $(seq 20); do munge -n 2> /dev/null | unmunge > /dev/null 2>&1 && break; sleep 0.5; done
    munge -n | unmunge > /dev/null 2>&1 || fail "munge does not answer"
fi

mkdir -p "$D/state" "$D/spool"
cat > "$SLURM_CONF" << EOF
ClusterName=engramproof
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SlurmctldPort=26817
SlurmdPort=26818
SlurmctldPidFile=$D/slurmctld.pid
SlurmdPidFile=$D/slurmd.pid
SlurmctldLogFile=$D/slurmctld.log
SlurmdLogFile=$D/slurmd.log
SlurmdSpoolDir=$D/spool
StateSaveLocation=$D/state
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS State=UNKNOWN
PartitionName=proof Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF

slurmctld -c -f "$SLURM_CONF" || fail "slurmctld did not start"
slurmd -f "$SLURM_CONF" -N "$NODE" || fail "slurmd did not start"
state=
for _ in $(seq 60); do
    state=$(sinfo -h -N -o %T 2> /dev/null | head -1 || true)
    [ "$state" = idle ] && break
    sleep 1
done
[ "$state" = idle ] || fail "the node did not become idle within 60 s (state: '${state:-none}'; sinfo: $(sinfo 2>&1 | tail -3 | tr '\n' ' '))"
echo "slurm-proof: node $NODE idle ($CPUS CPUs), Slurm $(sinfo --version)"

# A 3-run sweep of tiny blob runs.
cat > "$D/run.toml" << 'EOF'
seed = 1
[scenario]
kind = "class-incremental"
dataset = "blobs"
tasks = 2
classes-per-task = 2
[scenario.blobs]
train-per-class = 10
test-per-class = 5
[model]
kind = "mlp"
hidden = [8]
[strategy]
name = "naive"
[train]
iterations = 2
batch-size = 8
EOF
printf 'name = "proof"\nbase = "run.toml"\nseeds = [0, 1, 2]\n' > "$D/sweep.toml"
"$ENGRAM" sweep plan -q "$D/sweep.toml" -o "$D/runs" || fail "$ENGRAM sweep plan failed"
"$ENGRAM" sweep emit "$D/runs" --slurm --array-limit 2 --time 00:05:00 || fail "$ENGRAM sweep emit failed"
grep -q '^#SBATCH --array=0-2%2$' "$D/runs/sweep.slurm" || fail "unexpected array line in sweep.slurm"

timeout 150 sbatch --wait "$D/runs/sweep.slurm" || fail "sbatch --wait failed (exit $?)"
mtimes=
while read -r id; do
    [ -s "$D/runs/$id/results.json" ] || fail "run $id has no results.json after sbatch"
    mtimes+="$(stat -c %y "$D/runs/$id/results.json") "
done < "$D/runs/ids.txt"
"$ENGRAM" sweep status "$D/runs" | head -1 | grep -q '^3 runs: 3 done' || fail "sweep status does not say 3 done"
echo "slurm-proof: sbatch --wait ran all 3 runs"

# Submitted again: every array task skips its done run.
timeout 90 sbatch --wait "$D/runs/sweep.slurm" || fail "second sbatch --wait failed (exit $?)"
again=
while read -r id; do again+="$(stat -c %y "$D/runs/$id/results.json") "; done < "$D/runs/ids.txt"
[ "$again" = "$mtimes" ] || fail "a run ran again on the second submission"
echo "slurm-proof: OK (second submission ran nothing)"
