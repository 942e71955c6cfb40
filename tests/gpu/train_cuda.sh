#!/usr/bin/env bash
# `moekit train` with train.device=cuda on the tiny MoE, against the CPU trainer:
#  - fp32: the first step's loss (same weights, same batch, before any update) equals the CPU
#    run's to 1e-5 relative, and the losses of 20 steps stay within 1e-3 of the CPU's (the
#    GPU sums in other orders, and its embedding gradient adds with atomics);
#  - bf16: the loss falls by at least 1 nat over 40 steps;
#  - preempted at step 10 (SIGTERM) and resumed, a run continues from its checkpoint: steps 11..20
#    within 1e-3 of the uninterrupted GPU run, and the checkpoint loads in `moekit eval`.
# Exits 77 (ctest: skipped) without a CUDA build or a device.
#   train_cuda.sh MOEKIT_BINARY SOURCE_DIR
set -uo pipefail
moekit="$1"
src="$2"
py=/usr/bin/python3
"$moekit" --version 2>/dev/null | grep -q CUDA || { echo "skip: moekit built without CUDA"; exit 77; }
[ "$(nvidia-smi -L 2>/dev/null | grep -c GPU)" -gt 0 ] || { echo "skip: no CUDA device"; exit 77; }
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cd "$src"
source "$src/tests/e2e/lib/harness.bash"
common=(--config configs/train/tiny-moe.yaml --set "data.train=[$tmp/data/synth]" --set data.synth_tokens=300000
        --set train.peak_flops=1e11 --set train.eval_every=0 --set checkpoint.every=10)
train() { "$moekit" train "${common[@]}" "$@" >"$tmp/$1.log" 2>&1; }

compare() {  # A B FIRST LAST TOL: relative loss difference of steps FIRST..LAST
  "$py" - "$tmp/$1/metrics.jsonl" "$tmp/$2/metrics.jsonl" "$3" "$4" "$5" <<'PY'
import json, sys
a = {r["step"]: r["loss"] for r in map(json.loads, open(sys.argv[1]))}
b = {r["step"]: r["loss"] for r in map(json.loads, open(sys.argv[2]))}
first, last, tol = int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
worst = max(abs(a[s] - b[s]) / b[s] for s in range(first, last + 1))
print(f"worst relative difference {worst:.2e} (tolerance {tol:g})")
sys.exit(0 if worst <= tol else 1)
PY
}

"$moekit" train "${common[@]}" --set run_dir="$tmp/cpu" --set train.steps=20 >"$tmp/cpu.log" 2>&1 || bad "cpu run"
"$moekit" train "${common[@]}" --set run_dir="$tmp/gpu" --set train.steps=20 --set train.device=cuda \
  >"$tmp/gpu.log" 2>&1 && ok "fp32 run on the GPU" || bad "fp32 run on the GPU: $(tail -3 "$tmp/gpu.log")"
compare gpu cpu 1 1 1e-5 && ok "first-step loss equals the CPU's" || bad "first-step loss differs from the CPU's"
compare gpu cpu 1 20 1e-3 && ok "20 losses track the CPU's" || bad "losses drift from the CPU's"

"$moekit" train "${common[@]}" --set run_dir="$tmp/bf16" --set train.steps=40 --set train.device=cuda \
  --set optim.precision=bf16 >"$tmp/bf16.log" 2>&1 || bad "bf16 run: $(tail -3 "$tmp/bf16.log")"
"$py" - "$tmp/bf16/metrics.jsonl" <<'PY' && ok "bf16 run learns" || bad "bf16 run does not learn"
import json, sys
r = [json.loads(l) for l in open(sys.argv[1])]
print("bf16 loss", r[0]["loss"], "->", r[-1]["loss"])
sys.exit(0 if r[-1]["loss"] < r[0]["loss"] - 1.0 else 1)
PY

MOEKIT_DEBUG_SIGNAL_STEP=10 "$moekit" train "${common[@]}" --set run_dir="$tmp/pre" --set train.steps=20 \
  --set train.device=cuda >"$tmp/pre.log" 2>&1
[ $? -eq 143 ] && ok "preempted run exits 143" || bad "preempted run: $(tail -3 "$tmp/pre.log")"
"$moekit" train "${common[@]}" --set run_dir="$tmp/pre" --set train.steps=20 --set train.device=cuda \
  --set resume=auto >"$tmp/pre2.log" 2>&1 || bad "resumed run: $(tail -3 "$tmp/pre2.log")"
compare pre gpu 11 20 1e-3 && ok "resumed steps track the uninterrupted run" || bad "resumed steps drift"
"$moekit" eval --model "$tmp/pre/checkpoints/step_00000020" --tokens 1,2,3,4,5 >"$tmp/eval.out" 2>&1 \
  && ok "checkpoint evaluates" || bad "eval of the GPU checkpoint: $(tail -2 "$tmp/eval.out")"
finish
