#!/usr/bin/env bash
# launch/mpirun: the command line it builds (ranks, threads per rank, binding, oversubscription)
# and a real 2-rank, ep=2 run through it.
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
cores=$(nproc)
check "ranks and threads" "-np 2 -x OMP_NUM_THREADS=1 " -n 2 -t 1 train --config x
check "binding when the threads fit" "--map-by slot:PE=1 --bind-to core" -n 1 -t 1 train --config x
check "oversubscribed past the cores" "--bind-to none.*--oversubscribe" -n $((cores + 1)) -t 1 train --config x
check "default threads = cores / ranks" "OMP_NUM_THREADS=$(( cores / 2 > 0 ? cores / 2 : 1 ))" -n 2 train --config x
check "extra mpirun arguments" "--report-bindings" -n 1 --mpi-arg --report-bindings train --config x
if launch/mpirun -n 0 train >/dev/null 2>&1; then echo "FAIL - -n 0 accepted"; fail=1; else echo "ok   - -n 0 refused"; fi
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
exit $fail
