#!/usr/bin/env bash
# `moekit train` under mpirun: the same config and seed give the same per-step losses whatever
# the layout, and a checkpoint written by one layout resumes in another.
#  - W = 1 (reference), W = 2 with ep = 1 and 2, W = 4 with ep = 2 and 4: 20 steps each;
#  - resume: the W=4, ep=4 checkpoint of step 10 continues under W=2, ep=2 and under W=1;
#  - every rank file of the W=4 checkpoint exists and the experts are split over them.
# Tolerance: |loss - loss_W1| <= 1e-5 * loss_W1 at every step. The layouts add the same f32
# terms in different orders (micro-batch gradients summed on different ranks, then averaged),
# about 1e-7 relative per step; training amplifies that only slowly over 20 steps (measured
# <= 1e-7 here), while a real bug (a lost 1/W, a token at the wrong expert) moves step 2 by
# >= 1e-3. The aux loss is the per-micro-batch hf_pooled form: with a fixed micro-batch size
# it sees the same sequences in every layout (the global-batch form, by design, does not).
#   train_layouts.sh MPIEXEC MOEKIT SOURCE_DIR [mpiexec flags...]
set -uo pipefail
mpiexec=$1; moekit=$2; src=$3; shift 3
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
run() {  # NAME RANKS EP [extra --set ...]
  local name=$1 np=$2 ep=$3
  shift 3
  if [ "$np" = 1 ]; then
    "$moekit" train "${common[@]}" --set run_dir="$tmp/$name" --set parallel.ep="$ep" "$@" >"$tmp/$name.log" 2>&1
  else
    timeout 120 "$mpiexec" -np "$np" "${flags[@]}" "$moekit" train "${common[@]}" --set run_dir="$tmp/$name" \
      --set parallel.ep="$ep" "$@" >"$tmp/$name.log" 2>&1
  fi
  local rc=$?
  if [ $rc -ne 0 ]; then echo "FAIL - $name exited $rc:"; tail -5 "$tmp/$name.log"; fail=1; fi
}
compare() {  # NAME FIRST_STEP: losses of NAME against w1 from FIRST_STEP on
  python3 - "$tmp/w1/metrics.jsonl" "$tmp/$1/metrics.jsonl" "$2" "$1" <<'PY' || fail=1
import json, sys
ref = {r["step"]: r["loss"] for r in map(json.loads, open(sys.argv[1]))}
got = {r["step"]: r["loss"] for r in map(json.loads, open(sys.argv[2]))}
first, name = int(sys.argv[3]), sys.argv[4]
steps = [s for s in sorted(got) if s >= first]
assert steps == list(range(first, 21)), (name, sorted(got))
worst = max(abs(got[s] - ref[s]) / ref[s] for s in steps)
status = "ok  " if worst <= 1e-5 else "FAIL"
print(f"{status} - {name}: steps {first}..20, worst relative loss difference {worst:.2e} (tolerance 1e-5)")
sys.exit(0 if worst <= 1e-5 else 1)
PY
}

run w1 1 1
run w2e1 2 1
run w2e2 2 2
run w4e2 4 2
run w4e4 4 4
for r in w2e1 w2e2 w4e2 w4e4; do compare $r 1; done

# The W=4 checkpoint: four rank files; the experts of a layer spread over them.
ck="$tmp/w4e4/checkpoints/step_00000010"
n=$(ls "$ck"/rank_*.h5 2>/dev/null | wc -l)
if [ "$n" = 4 ]; then echo "ok   - W=4 checkpoint has 4 rank files"; else echo "FAIL - W=4 checkpoint has $n rank files"; fail=1; fi
python3 - "$ck/meta.json" <<'PY' || fail=1
import json, sys
m = json.load(open(sys.argv[1]))
assert m["layout"] == {"world": 4, "ep": 4} and m["world_size"] == 4, m
print("ok   - meta.json records the layout", m["layout"])
PY

# Resume the W=4/ep=4 step-10 checkpoint in other layouts; steps 11..20 must match W=1.
run r_w2e2 2 2 --set resume="$ck"
compare r_w2e2 11
run r_w1 1 1 --set resume="$ck"
compare r_w1 11
exit $fail
