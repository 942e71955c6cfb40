#!/usr/bin/env bash
# Slurm for real on this machine: start MUNGE, slurmctld and slurmd on localhost from a private
# directory (own ports, state, logs; nothing system-wide is touched), submit launch/slurm.sbatch
# with 2 tasks (srun --mpi=pmix, ep=2) through sbatch, and check that the job trains and gives
# the losses of a single-process run (tolerance 1e-5 relative, as tests/mpi/train_layouts.sh),
# with srun (PMIx) and with launch/mpirun inside the allocation, submitted from another
# directory; the same job submitted again resumes (resume=auto by default); SIGTERM to the tasks
# leaves a checkpoint and exit 143; then a rank that
# throws under srun must end the job step quickly with a non-zero status and a message naming
# the rank.
# Skips (exit 77) when Slurm or MUNGE is not installed (launch/setup-slurm installs them) or
# the daemons cannot start here (e.g. no permission to run them).
#   slurm_local.sh MOEKIT SOURCE_DIR FAIL_RANK_BINARY
set -uo pipefail
moekit=$1; src=$2; fail_bin=$3
skip() { echo "SKIP: $*"; exit 77; }
for b in slurmctld slurmd munged mungekey sbatch srun scontrol; do
  command -v "$b" >/dev/null || skip "$b not found (install Slurm and MUNGE with launch/setup-slurm)"
done
tmp=$(mktemp -d /tmp/moekit_slurm.XXXXXX)
chmod 700 "$tmp"
pids=()
cleanup() {
  # Let the job steps end (their slurmstepd processes report to our slurmd) before the daemons.
  if [ -n "${SLURM_CONF:-}" ]; then
    scancel --user="$(id -un)" 2>/dev/null
    for _ in $(seq 1 15); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 1; done
    sleep 1
  fi
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  sleep 0.5
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done
  rm -rf "$tmp"
}
trap cleanup EXIT
host=$(hostname -s)
cpus=$(nproc)
port=$(( 20000 + RANDOM % 20000 ))

# ---- MUNGE with its own key and socket ------------------------------------------------------
mkdir -p "$tmp/munge" && chmod 700 "$tmp/munge"
mungekey --create --keyfile="$tmp/munge/munge.key" >/dev/null 2>&1 || skip "mungekey failed"
chmod 600 "$tmp/munge/munge.key"
munged --force --socket="$tmp/munge/munge.socket" --key-file="$tmp/munge/munge.key" \
  --pid-file="$tmp/munge/munged.pid" --log-file="$tmp/munge/munged.log" --seed-file="$tmp/munge/munged.seed" \
  >"$tmp/munge/start.log" 2>&1 || skip "munged does not start: $(cat "$tmp/munge/start.log" "$tmp/munge/munged.log" 2>/dev/null | tail -2)"
sleep 0.5
[ -f "$tmp/munge/munged.pid" ] && pids+=("$(cat "$tmp/munge/munged.pid")")

# ---- slurm.conf: one node (this machine), one partition ------------------------------------
mkdir -p "$tmp/state" "$tmp/spool"
cat >"$tmp/slurm.conf" <<CONF
ClusterName=moekittest
SlurmctldHost=$host
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=$(id -un)
SlurmdUser=$(id -un)
AuthType=auth/munge
AuthInfo=socket=$tmp/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$tmp/state
SlurmdSpoolDir=$tmp/spool
SlurmctldPidFile=$tmp/slurmctld.pid
SlurmdPidFile=$tmp/slurmd.pid
SlurmctldLogFile=$tmp/slurmctld.log
SlurmdLogFile=$tmp/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
MpiDefault=none
ReturnToService=2
InactiveLimit=0
KillWait=5
NodeName=$host CPUs=$(( cpus > 2 ? cpus : 2 )) State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE
CONF
export SLURM_CONF="$tmp/slurm.conf"
slurmctld -f "$SLURM_CONF" >"$tmp/slurmctld.out" 2>&1 || skip "slurmctld does not start: $(tail -2 "$tmp/slurmctld.log" 2>/dev/null)"
sleep 1
[ -f "$tmp/slurmctld.pid" ] && pids+=("$(cat "$tmp/slurmctld.pid")")
slurmd -f "$SLURM_CONF" >"$tmp/slurmd.out" 2>&1 || skip "slurmd does not start: $(tail -2 "$tmp/slurmd.log" 2>/dev/null)"
sleep 1
[ -f "$tmp/slurmd.pid" ] && pids+=("$(cat "$tmp/slurmd.pid")")
ready=0
for _ in $(seq 1 30); do
  state=$(scontrol show node "$host" 2>/dev/null | grep -o 'State=[A-Z+_]*' | head -1)
  case "$state" in State=IDLE*) ready=1; break ;; esac
  sleep 1
done
[ $ready = 1 ] || skip "the node did not become idle ($state): $(tail -3 "$tmp/slurmctld.log" "$tmp/slurmd.log" 2>/dev/null)"
echo "ok   - slurmctld and slurmd up on $host (port $port), node idle"

# ---- a 2-rank training job through sbatch -> srun ------------------------------------------
cd "$src"
common=(--config "$src/configs/train/tiny-moe.yaml" --set "data.train=[$tmp/data/synth]" --set data.synth_tokens=200000
        --set train.peak_flops=1e11 --set train.steps=10 --set train.seq_len=64 --set train.global_batch_size=8
        --set train.micro_batch_size=2 --set train.eval_every=0 --set checkpoint.every=0 --set train.log_every=5
        --set loss.aux=hf_pooled)
OMP_NUM_THREADS=1 "$moekit" train "${common[@]}" --set run_dir="$tmp/w1" >"$tmp/w1.log" 2>&1 ||
  { echo "FAIL - reference run"; tail -5 "$tmp/w1.log"; exit 1; }
fail=0
for launcher in srun mpirun; do
  # Submitted from another directory: the script finds the moekit tree from its own path (the
  # job runs in the source tree, --chdir, as the configs name the model by a relative path).
  (cd "$tmp" && MOEKIT_BIN="$moekit" MOEKIT_LAUNCHER=$launcher timeout 300 sbatch --wait --parsable -N1 -n2 \
    --chdir="$src" --cpus-per-task=1 -o "$tmp/job_$launcher.out" "$src/launch/slurm.sbatch" "${common[@]}" \
    --set run_dir="$tmp/s_$launcher" --set parallel.ep=2 \
    >"$tmp/sbatch_$launcher.log" 2>&1)
  rc=$?
  if [ $rc -ne 0 ]; then
    echo "FAIL - sbatch ($launcher) exited $rc"; tail -8 "$tmp/sbatch_$launcher.log" "$tmp/job_$launcher.out"; fail=1; continue
  fi
  grep -q "rank 0/2" "$tmp/job_$launcher.out" || { echo "FAIL - $launcher job did not run 2 ranks"; tail -5 "$tmp/job_$launcher.out"; fail=1; }
  grep -q "moekit tree $src\$" "$tmp/job_$launcher.out" ||
    { echo "FAIL - the job did not find the moekit tree from the script's path: $(grep 'moekit: job' "$tmp/job_$launcher.out")"; fail=1; }
  python3 "$src/tests/mpi/compare_losses.py" "$tmp/w1" "$tmp/s_$launcher" \
    "sbatch launch/slurm.sbatch with $launcher: 2 ranks, ep=2" --last 10 || fail=1
done

# The same job again (a requeue or a resubmission) with 12 steps: resume=auto is the default, so
# it goes on from step 10 instead of refusing the run directory.
(cd "$tmp" && MOEKIT_BIN="$moekit" timeout 300 sbatch --wait --parsable -N1 -n2 --chdir="$src" --cpus-per-task=1 \
  -o "$tmp/job_again.out" "$src/launch/slurm.sbatch" "${common[@]}" \
  --set run_dir="$tmp/s_srun" --set parallel.ep=2 --set train.steps=12 >"$tmp/sbatch_again.log" 2>&1)
rc=$?
if [ $rc -eq 0 ] && grep -q "resume: step 10" "$tmp/job_again.out" && [ "$(wc -l <"$tmp/s_srun/metrics.jsonl")" = 12 ]; then
  echo "ok   - the job submitted again resumes from step 10 (resume=auto by default) and ends at step 12"
else
  echo "FAIL - second submission: exit $rc"; tail -5 "$tmp/job_again.out"; fail=1
fi

# Preemption under srun: SIGTERM to the job's tasks (scancel --signal=TERM, what a preemption or
# the time limit sends first): the ranks checkpoint after the current step and the job exits 143.
(cd "$tmp" && MOEKIT_BIN="$moekit" timeout 120 sbatch --wait --parsable -N1 -n2 --chdir="$src" --cpus-per-task=1 \
  -o "$tmp/job_term.out" "$src/launch/slurm.sbatch" "${common[@]}" --set run_dir="$tmp/s_term" \
  --set parallel.ep=2 --set train.steps=2000 >"$tmp/sbatch_term.log" 2>&1) &
waiter=$!
for _ in $(seq 1 300); do [ "$(cat "$tmp/s_term/metrics.jsonl" 2>/dev/null | wc -l)" -ge 3 ] && break; sleep 0.2; done
scancel --signal=TERM "$(squeue -h -o %i | head -1)"
wait $waiter
rc=$?
step=$(cat "$tmp/s_term/checkpoints/latest" 2>/dev/null)
if [ $rc -eq 143 ] && [ -n "$step" ] && [ -f "$tmp/s_term/checkpoints/$step/meta.json" ] &&
   [ "$step" = "$(printf 'step_%08d' "$(wc -l <"$tmp/s_term/metrics.jsonl")")" ]; then
  echo "ok   - SIGTERM to the srun tasks: checkpoint $step, job exit 143"
else
  echo "FAIL - SIGTERM under srun: sbatch exit $rc, latest '$step'"; tail -5 "$tmp/job_term.out"; fail=1
fi

# A rank that throws: MPI_Abort through PMIx ends the whole step.
start=$(date +%s)
OMP_NUM_THREADS=1 timeout 60 srun --mpi=pmix -n 3 --overcommit --kill-on-bad-exit=1 "$fail_bin" throw \
  >"$tmp/fail.log" 2>&1
rc=$?
elapsed=$(( $(date +%s) - start ))
if [ $rc -ne 0 ] && [ $rc -ne 124 ] && [ $elapsed -le 20 ] && grep -q "rank 1 of 3" "$tmp/fail.log"; then
  echo "ok   - a throwing rank ends the srun step: exit $rc after ${elapsed}s, message names rank 1"
else
  echo "FAIL - failing rank under srun: exit $rc after ${elapsed}s"; tail -5 "$tmp/fail.log"; fail=1
fi
exit $fail
