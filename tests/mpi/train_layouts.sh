#!/usr/bin/env bash
# `moekit train` under mpirun: the same config and seed give the same per-step losses whatever
# the layout, and a run stopped in one layout resumes in another.
#  parity: W = 1 (reference), W = 2 with ep = 1 and 2, W = 4 with ep = 2 and 4, and ZeRO-1 with
#          W = 2 / ep = 1 and W = 4 / ep = 2 (dense state over 4 ranks, experts over edp = 2),
#          20 steps each.
#  resume: a run is preempted at step 10 (SIGTERM to every rank: it checkpoints and exits 143)
#          and continued with resume=auto in another layout: W=4/ep=4 -> W=2/ep=2; W=4/ep=2 with
#          ZeRO-1 (row-piece checkpoint) -> W=1; W=1 -> W=4/ep=4 with ZeRO-1. Steps 1..20 must
#          match the uninterrupted W=1 run; the W=4 checkpoint has one file per rank.
#  Both also run DeepSeek-V3-style routing (configs/models/tiny-moe-aux-free.yaml: sigmoid scores,
#  an aux-loss-free expert bias updated every step) with a capacity factor of 1.0 that drops
#  pairs: W = 2 / ep = 2 and W = 4 / ep = 4 against W = 1 (parity), and W=2/ep=2 -> W=1 across a
#  resume, where the bias comes back from the checkpoint.
# Tolerance: |loss - loss_W1| <= 1e-5 * loss_W1 at every step. The layouts add the same f32
# terms in different orders (micro-batch gradients summed on different ranks, then averaged),
# about 1e-7 relative per step; training amplifies that only slowly over 20 steps (measured
# <= 1e-7 here), while a real bug (a lost 1/W, a token at the wrong expert) moves step 2 by
# >= 1e-3. The aux loss is the per-micro-batch hf_pooled form: with a fixed micro-batch size
# it sees the same sequences in every layout (the global-batch form, by design, does not); it is
# held to the same tolerance while the expert counts agree (compare_losses.py says why).
#   train_layouts.sh parity|resume MPIEXEC MOEKIT SOURCE_DIR [mpiexec flags...]
set -uo pipefail
mode=$1; mpiexec=$2; moekit=$3; src=$4; shift 4
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
flags=("$@")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$src"
export OMP_NUM_THREADS=1
common=(--config configs/train/tiny-moe.yaml --set "data.train=[$tmp/data/synth]" --set data.synth_tokens=200000
        --set train.peak_flops=1e11 --set train.steps=20 --set train.seq_len=64 --set train.global_batch_size=8
        --set train.micro_batch_size=2 --set train.eval_every=0 --set checkpoint.every=10 --set checkpoint.keep=5
        --set train.log_every=10 --set loss.aux=hf_pooled --set loss.z_coef=0.001)
fail=0
run() {  # NAME RANKS EP [extra --set ...]; EXPECT_RC (default 0) is the exit status wanted
  local name=$1 np=$2 ep=$3 want=${EXPECT_RC:-0}
  shift 3
  if [ "$np" = 1 ]; then
    "$moekit" train "${common[@]}" --set run_dir="$tmp/$name" --set parallel.ep="$ep" "$@" >"$tmp/$name.log" 2>&1
  else
    timeout 120 "$mpiexec" -np "$np" "${flags[@]}" -x MOEKIT_DEBUG_SIGNAL_STEP "$moekit" train "${common[@]}" \
      --set run_dir="$tmp/$name" --set parallel.ep="$ep" "$@" >"$tmp/$name.log" 2>&1
  fi
  local rc=$?
  if [ $rc -ne "$want" ]; then echo "FAIL - $name exited $rc, expected $want:"; tail -5 "$tmp/$name.log"; fail=1; fi
}
stop_at_10() {  # NAME RANKS EP [extra]: preempted after step 10
  MOEKIT_DEBUG_SIGNAL_STEP=10 EXPECT_RC=143 run "$@"
}
export MOEKIT_DEBUG_SIGNAL_STEP=""
compare() {  # NAME FIRST_STEP [REF]: losses of NAME against REF (default w1) from FIRST_STEP on (CE and aux: compare_losses.py)
  python3 "$here/compare_losses.py" "$tmp/${3:-w1}" "$tmp/$1" "$1" --first "$2" --last 20 || fail=1
}

# DeepSeek-V3-style routing with a capacity factor that drops pairs: the expert bias moves after
# every step from the global load, so the layouts must agree on it step after step.
aux_free=(--set model=configs/models/tiny-moe-aux-free.yaml --set moe.capacity_factor=1.0
          --set moe.router_bias_update_rate=0.01 --set loss.z_coef=0)
run w1 1 1
run w1b 1 1 "${aux_free[@]}"
if [ "$mode" = parity ]; then
  run w2e1 2 1
  run w2e2 2 2
  run w4e2 4 2
  run w4e4 4 4
  run w2e1z 2 1 --set parallel.zero1=true
  run w4e2z 4 2 --set parallel.zero1=true
  run w2e2b 2 2 "${aux_free[@]}"
  run w4e4b 4 4 "${aux_free[@]}"
  for r in w2e1 w2e2 w4e2 w4e4 w2e1z w4e2z; do compare $r 1; done
  for r in w2e2b w4e4b; do compare $r 1 w1b; done
  exit $fail
fi

# resume: preempt at step 10 in one layout, continue in another (same run_dir, resume=auto).
stop_at_10 a 4 4
n=$(ls "$tmp/a/checkpoints/step_00000010"/rank_*.h5 2>/dev/null | wc -l)
if [ "$n" = 4 ]; then echo "ok   - W=4 checkpoint has 4 rank files"; else echo "FAIL - W=4 checkpoint has $n rank files"; fail=1; fi
python3 - "$tmp/a/checkpoints/step_00000010/meta.json" <<'PY' || fail=1
import json, sys
m = json.load(open(sys.argv[1]))
assert m["layout"] == {"world": 4, "ep": 4} and m["world_size"] == 4, m
print("ok   - meta.json records the layout", m["layout"])
PY
run a 2 2 --set resume=auto
compare a 1
stop_at_10 b 4 2 --set parallel.zero1=true
run b 1 1 --set resume=auto
compare b 1
stop_at_10 c 1 1
run c 4 4 --set parallel.zero1=true --set resume=auto
compare c 1
# The expert bias is state: it must come back from the checkpoint bit for bit.
stop_at_10 d 2 2 "${aux_free[@]}"
run d 1 1 "${aux_free[@]}" --set resume=auto
compare d 1 w1b
exit $fail
