#!/usr/bin/env bash
# launch/mpirun: the command line it builds (ranks, threads per rank, binding, oversubscription
# only when asked, hosts, forwarded variables, keepalive), a real 2-rank, ep=2 run through it,
# and a SIGTERM to it: the ranks checkpoint and it exits 143.
#   launch_mpirun.sh MOEKIT SOURCE_DIR
set -uo pipefail
moekit=$1; src=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$src"
export MOEKIT_BIN="$moekit"
fail=0
check() {  # NAME PATTERN launch-args...
  local name=$1 pat=$2; shift 2
  local line; line=$(launch/mpirun --dry-run "$@" 2>&1)
  if grep -qE -- "$pat" <<<"$line"; then echo "ok   - $name"; else echo "FAIL - $name: $line"; fail=1; fi
}
cores=$(env -u OMP_NUM_THREADS nproc)
check "ranks and threads" "-np 2 .*-x OMP_NUM_THREADS=1 " -n 2 -t 1 train --config x
check "binding when the threads fit" "--map-by ppr:1:node:PE=1 --bind-to core" -n 1 -t 1 train --config x
if launch/mpirun --dry-run -n $((cores + 1)) -t 1 train >"$tmp/over" 2>&1; then
  echo "FAIL - more ranks than cores accepted without --oversubscribe"; fail=1
else
  grep -q "pass --oversubscribe" "$tmp/over" && echo "ok   - more ranks than cores refused" ||
    { echo "FAIL - oversubscription refused without the reason: $(cat "$tmp/over")"; fail=1; }
fi
check "oversubscribed when asked" "--bind-to none.*--oversubscribe" -n $((cores + 1)) -t 1 --oversubscribe train --config x
check "default threads = cores / ranks" "OMP_NUM_THREADS=$(( cores / 2 > 0 ? cores / 2 : 1 ))" -n 2 train --config x
check "extra mpirun arguments" "--report-bindings" -n 1 --mpi-arg --report-bindings train --config x
check "display map" "--display-map" -n 1 --display-map train --config x
check "keepalive" "--mca oob_tcp_keepalive_time 10 --mca oob_tcp_keepalive_intvl 5 --mca oob_tcp_keepalive_probes 3" -n 1 train
check "hosts: ranks per node from -N, no -np" "--hostfile hf --map-by ppr:2:node:PE=1 --bind-to core" \
  --hostfile hf -N 2 -t 1 train --config x
line=$(MOEKIT_TEST_A=1 NCCL_DEBUG=WARN HDF5_USE_FILE_LOCKING=FALSE OMP_PROC_BIND=close MY_VAR=1 \
  launch/mpirun --dry-run -n 1 --env MY_VAR,OTHER train 2>&1)
missing=""
for v in MOEKIT_TEST_A NCCL_DEBUG HDF5_USE_FILE_LOCKING OMP_PROC_BIND MY_VAR OTHER; do
  grep -q -- "-x $v " <<<"$line" || missing+=" $v"
done
if [ -z "$missing" ]; then echo "ok   - MOEKIT_*, NCCL_*, HDF5_*, OMP_* and --env variables forwarded"
else echo "FAIL - not forwarded:$missing: $line"; fail=1; fi
for bad in "-n 0" "-n 2 --grace x" "-n 2 --keepalive 5" "-n 2 --bind socket"; do
  if launch/mpirun --dry-run $bad train >/dev/null 2>&1; then echo "FAIL - '$bad' accepted"; fail=1; else echo "ok   - '$bad' refused"; fi
done
launch/mpirun -n 2 -t 1 train --config configs/train/tiny-moe.yaml --set "data.train=[$tmp/data/synth]" \
  --set data.synth_tokens=100000 --set train.peak_flops=1e11 --set train.steps=3 --set train.seq_len=32 \
  --set train.global_batch_size=4 --set train.micro_batch_size=2 --set parallel.ep=2 --set run_dir="$tmp/run" \
  >"$tmp/out" 2>&1
rc=$?
if [ $rc -eq 0 ] && [ "$(wc -l <"$tmp/run/metrics.jsonl")" = 3 ] && grep -q '"steps":3' "$tmp/out"; then
  echo "ok   - 2-rank ep=2 run through launch/mpirun"
else
  echo "FAIL - run through launch/mpirun (rc $rc)"; tail -5 "$tmp/out"; fail=1
fi
# Preemption: SIGTERM to launch/mpirun reaches the ranks (as SIGUSR2), they checkpoint, exit 143.
launch/mpirun -n 2 -t 1 train --config configs/train/tiny-moe.yaml --set "data.train=[$tmp/data/synth]" \
  --set data.synth_tokens=100000 --set train.peak_flops=1e11 --set train.steps=2000 --set train.seq_len=32 \
  --set train.global_batch_size=4 --set train.micro_batch_size=2 --set parallel.ep=2 --set run_dir="$tmp/term" \
  >"$tmp/term.log" 2>&1 &
pid=$!
for _ in $(seq 1 150); do [ "$(cat "$tmp/term/metrics.jsonl" 2>/dev/null | wc -l)" -ge 2 ] && break; sleep 0.2; done
kill -TERM $pid
for _ in $(seq 1 120); do kill -0 $pid 2>/dev/null || break; sleep 0.5; done
kill -0 $pid 2>/dev/null && { kill -KILL $pid; echo "FAIL - SIGTERM: still running after 60 s"; fail=1; }
wait $pid; rc=$?
step=$(cat "$tmp/term/checkpoints/latest" 2>/dev/null)
if [ $rc = 143 ] && [ -n "$step" ] && [ -f "$tmp/term/checkpoints/$step/meta.json" ] &&
   [ "$step" = "$(printf 'step_%08d' "$(wc -l <"$tmp/term/metrics.jsonl")")" ]; then
  echo "ok   - SIGTERM to launch/mpirun: checkpoint $step, exit 143"
else
  echo "FAIL - SIGTERM to launch/mpirun: exit $rc, latest '$step'"; tail -5 "$tmp/term.log"; fail=1
fi
exit $fail
