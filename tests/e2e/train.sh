#!/usr/bin/env bash
# End-to-end tests of `moekit train` and `moekit export` on the tiny configs:
#  - a dense and an MoE run learn (loss falls well below ln(vocab)), write every log file;
#  - resume is exact: 2N steps == N steps + SIGTERM + resume N (losses and weights bit for bit),
#    and the same after a SIGKILL between checkpoints (the lost steps are redone identically);
#  - the NaN policy (skip logs and goes on, stop exits non-zero);
#  - export -> eval gives the training checkpoint's loss; transformers loads the export and
#    agrees (when /usr/bin/python3 has torch + transformers); TensorBoard reads the events;
#  - bad configs and data exit non-zero naming the key or file, leaving no run behind.
#   train.sh MOEKIT_BINARY SOURCE_DIR
set -uo pipefail
moekit="$1"
src="$2"
py=/usr/bin/python3
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cd "$src"
source "$src/tests/e2e/lib/harness.bash"
source "$src/tests/e2e/lib/train_env.bash"

# --- a dense and an MoE run learn and write their logs --------------------------------------
for kind in dense moe; do
  run="$tmp/$kind"
  out="$(train --config configs/train/tiny-$kind.yaml --set run_dir="$run" --set train.steps=40 2>"$tmp/$kind.log")"
  rc=$?
  printf '%s\n' "$out" >"$tmp/$kind.out"
  if [ $rc -ne 0 ]; then bad "train tiny-$kind (rc=$rc): $(tail -5 "$tmp/$kind.log")"; continue; fi
  if $py - "$run" "$kind" "$(tail -n 1 <<<"$out")" <<'PY'; then ok "tiny-$kind learns and logs"; else bad "tiny-$kind logs"; fi
import json, math, os, sys
run, kind, last = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
rows = [json.loads(l) for l in open(os.path.join(run, "metrics.jsonl"))]
assert [r["step"] for r in rows] == list(range(1, 41)), [r["step"] for r in rows]
for k in ("loss", "aux_loss", "lr", "grad_norm", "tokens", "tokens_per_s", "mfu"):
    assert all(k in r for r in rows), k
assert rows[-1]["tokens"] == 40 * 16 * 128
first, final = rows[0]["loss"], rows[-1]["loss"]
assert abs(first - math.log(512)) < 0.3, first          # a fresh model guesses uniformly
assert final < first - 1.0, (first, final)               # and learns
assert (rows[0]["aux_loss"] is None) == (kind == "dense")
assert last["steps"] == 40 and not last["interrupted"], last
evals = [json.loads(l) for l in open(os.path.join(run, "eval.jsonl"))]
assert [e["step"] for e in evals] == [30, 40] and evals[-1]["loss"] < first, evals
assert os.path.exists(os.path.join(run, "config.resolved.yaml"))
assert os.path.isdir(os.path.join(run, "checkpoints", "step_00000040"))
if kind == "moe":
    load = [json.loads(l) for l in open(os.path.join(run, "expert_load.jsonl"))]
    assert len(load) == 40 and len(load[0]["layers"]) == 4
    f = load[-1]["layers"][0]["fractions"]
    assert len(f) == 8 and abs(sum(f) - 1) < 1e-9, f
s = json.load(open(os.path.join(run, "summary.json")))
assert s["tokens"] == 40 * 16 * 128 and s["train_flops"] > 0
PY
done
grep -q "step 40/40 | loss" "$tmp/moe.out" && grep -q "ETA" "$tmp/moe.out" && ok "progress line" || bad "progress line"

# --- TensorBoard reads the event files -----------------------------------------------------
if $py -c "import tensorboard" 2>/dev/null; then
  if $py - "$tmp/moe/tb" <<'PY'; then ok "tensorboard reads the scalars"; else bad "tensorboard reads the scalars"; fi
import sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
ea = EventAccumulator(sys.argv[1]); ea.Reload()
tags = ea.Tags()["scalars"]
for t in ("train/loss", "train/aux_loss", "train/lr", "train/grad_norm", "perf/tokens_per_s", "perf/mfu", "eval/loss"):
    assert t in tags, (t, tags)
assert [e.step for e in ea.Scalars("train/loss")] == list(range(1, 41))
PY
else
  echo "skip - tensorboard not installed for $py (launch/setup-reference)"
fi

# --- exact resume: SIGTERM at step 20, resume to 40 == 40 straight --------------------------
run="$tmp/resume"
MOEKIT_DEBUG_SIGNAL_STEP=20 train --config configs/train/tiny-moe.yaml --set run_dir="$run" --set train.steps=40 \
  --set checkpoint.every=0 >/dev/null 2>"$tmp/r1.log"
rc=$?
[ $rc -eq 143 ] && grep -q "resume with --set resume=auto" "$tmp/r1.log" && ok "SIGTERM: checkpoint and exit 143" ||
  bad "SIGTERM exit (rc=$rc): $(tail -3 "$tmp/r1.log")"
train --config configs/train/tiny-moe.yaml --set run_dir="$run" --set train.steps=40 --set checkpoint.every=0 \
  --set resume=auto >/dev/null 2>"$tmp/r2.log" || bad "resume run: $(tail -3 "$tmp/r2.log")"
# SIGKILL after step 35 with checkpoints every 10: steps 31..35 after the last checkpoint are lost
# and redone.
run2="$tmp/crash"
MOEKIT_DEBUG_KILL_STEP=35 train --config configs/train/tiny-moe.yaml --set run_dir="$run2" --set train.steps=40 \
  --set checkpoint.every=10 >/dev/null 2>&1
rc=$?
[ $rc -eq 137 ] && ok "SIGKILL mid-run" || bad "SIGKILL mid-run (rc=$rc)"
train --config configs/train/tiny-moe.yaml --set run_dir="$run2" --set train.steps=40 --set checkpoint.every=10 \
  --set resume=auto >/dev/null 2>"$tmp/r3.log" || bad "resume after SIGKILL: $(tail -3 "$tmp/r3.log")"
for r in "$run" "$run2"; do
  "$moekit" export --checkpoint "$r" --out "$r/hf" --dtype fp32 2>/dev/null || bad "export $r"
done
if $py - "$tmp/moe" "$run" "$run2" <<'PY'; then ok "resume is bit-exact (losses and weights)"; else bad "resume is bit-exact"; fi
import json, sys
def losses(run):
    return [(r["step"], r["loss"], r["grad_norm"]) for r in map(json.loads, open(run + "/metrics.jsonl"))]
ref = losses(sys.argv[1])
for run in sys.argv[2:]:
    got = losses(run)
    assert got == ref, [(a, b) for a, b in zip(got, ref) if a != b][:3]
PY
"$moekit" export --checkpoint "$tmp/moe" --out "$tmp/moe/hf" --dtype fp32 2>/dev/null || bad "export moe"
cmp -s "$tmp/moe/hf/model.safetensors" "$run/hf/model.safetensors" && cmp -s "$tmp/moe/hf/model.safetensors" \
  "$run2/hf/model.safetensors" && ok "final weights identical after resume" || bad "final weights identical after resume"

# --- export -> eval gives the checkpoint's loss; transformers agrees -----------------------
toks=$($py -c "import random; r=random.Random(3); print(','.join(str(r.randrange(2, 512)) for _ in range(64)))")
a="$("$moekit" eval --model "$tmp/moe/checkpoints/step_00000040" --tokens "$toks" 2>/dev/null | tail -n 1)"
b="$("$moekit" eval --model "$tmp/moe/hf" --tokens "$toks" --logits-out "$tmp/logits.safetensors" 2>/dev/null | tail -n 1)"
"$moekit" export --checkpoint "$tmp/moe/checkpoints/step_00000040" --out "$tmp/moe/hf16" 2>/dev/null
c="$("$moekit" eval --model "$tmp/moe/hf16" --tokens "$toks" 2>/dev/null | tail -n 1)"
if $py - "$a" "$b" "$c" <<'PY'; then ok "export fp32 = checkpoint loss, bf16 close ($a / $c)"; else bad "export eval: $a | $b | $c"; fi
import json, sys
a, b, c = (json.loads(x) for x in sys.argv[1:])
assert a["loss"] == b["loss"], (a, b)
assert abs(c["loss"] - a["loss"]) < 0.02 * a["loss"], (a, c)
PY
if $py -c "import torch, transformers" 2>/dev/null; then
  if $py - "$tmp/moe/hf" "$toks" "$tmp/logits.safetensors" "$b" <<'PY'; then ok "transformers loads the export and agrees"; else bad "transformers on the export"; fi
import json, sys, torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
m = AutoModelForCausalLM.from_pretrained(sys.argv[1], torch_dtype=torch.float32).eval()
ids = torch.tensor([[int(t) for t in sys.argv[2].split(",")]])
with torch.no_grad():
    out = m(ids, labels=ids)
ours = load_file(sys.argv[3])["logits"]
assert torch.allclose(out.logits[0], ours, atol=1e-4, rtol=1e-4), (out.logits[0] - ours).abs().max()
loss = json.loads(sys.argv[4])["loss"]
assert abs(out.loss.item() - loss) < 1e-5 * abs(loss), (out.loss.item(), loss)
PY
else
  echo "skip - torch/transformers not installed for $py (launch/setup-reference)"
fi

# --- NaN policy ----------------------------------------------------------------------------
MOEKIT_DEBUG_NAN_STEP=3 train --config configs/train/tiny-dense.yaml --set run_dir="$tmp/nan" --set train.steps=10 \
  >/dev/null 2>"$tmp/nan.log"
rc=$?
if [ $rc -eq 0 ] && grep -q "step 4: skipped" "$tmp/nan.log" &&
  $py -c "import json; r=[json.loads(l) for l in open('$tmp/nan/metrics.jsonl')]; assert [x['skipped'] for x in r]==[False]*3+[True]+[False]*6" ; then
  ok "nan_policy skip: logged, run goes on"
else bad "nan_policy skip (rc=$rc): $(tail -3 "$tmp/nan.log")"; fi
MOEKIT_DEBUG_NAN_STEP=3 expect_fail "nan_policy stop" "optim.nan_policy is 'stop'" \
  train --config configs/train/tiny-dense.yaml --set run_dir="$tmp/nan2" --set train.steps=6 --set optim.nan_policy=stop

# --- mixed precision: bf16 weights learn like fp32; fp16 runs the dynamic loss scaler ---------
for prec in bf16 fp16; do
  train --config configs/train/tiny-moe.yaml --set run_dir="$tmp/$prec" --set train.steps=12 \
    --set optim.precision=$prec --set optim.loss_scale_init=1e6 >/dev/null 2>&1 || bad "precision $prec run"
done
if $py - "$tmp/bf16" "$tmp/fp16" "$tmp/moe" <<'PY'; then ok "bf16 tracks fp32; fp16 backs off an overflowing scale"; else bad "mixed precision"; fi
import json, sys
bf, fp, ref = ([json.loads(l) for l in open(d + "/metrics.jsonl")] for d in sys.argv[1:])
# Same data and init: bf16-rounded weights change the losses only slightly.
for a, b in zip(bf, ref[:12]):
    assert abs(a["loss"] - b["loss"]) < 0.05 * b["loss"], (a["step"], a["loss"], b["loss"])
assert bf[-1]["loss"] < bf[0]["loss"] - 0.3
# loss_scale_init 1e6 overflows fp16 (max 65504): the first steps are skipped and the scale halves
# until the scaled gradients fit in fp16, then training proceeds.
skipped = [r["skipped"] for r in fp]
assert skipped[0] and not skipped[-1], skipped
assert fp[0]["loss_scale"] == 0.5e6 and fp[-1]["loss_scale"] <= 2.5e5 and not any(skipped[5:]), [r["loss_scale"] for r in fp]
PY

# --- bad input ----------------------------------------------------------------------------
cfg=configs/train/tiny-dense.yaml
expect_fail "unknown key" "unknown key 'train.stepz'" train --config $cfg --set run_dir="$tmp/b1" --set train.stepz=3
expect_fail "unknown optim key" "optim.lrr" train --config $cfg --set run_dir="$tmp/b2" --set optim.lrr=3
expect_fail "batch not divisible" "global_batch_size 12" train --config $cfg --set run_dir="$tmp/b3" \
  --set train.global_batch_size=12
expect_fail "missing config" "does not exist" "$moekit" train --config "$tmp/nope.yaml"
expect_fail "missing model" "nope.yaml" train --config $cfg --set run_dir="$tmp/b4" --set model="$tmp/nope.yaml"
expect_fail "existing run without resume" "already holds a run" train --config $cfg --set run_dir="$tmp/dense"
mkdir -p "$tmp/big"
"$moekit" data synth --out "$tmp/big/v1000" --vocab 1000 --tokens 20000 >/dev/null 2>&1
expect_fail "token out of vocabulary" "v1000" train --config $cfg --set run_dir="$tmp/b5" \
  --set "data.train=[$tmp/big/v1000]"
expect_fail "bad train.device" "train.device 'tpu' must be cpu or cuda" train --config $cfg --set run_dir="$tmp/b6" \
  --set train.device=tpu
expect_fail "cuda with fp16" "optim.precision fp16 with train.device cuda" train --config configs/train/tiny-moe.yaml \
  --set run_dir="$tmp/b7" --set train.device=cuda --set optim.precision=fp16
expect_fail "negative watchdog timeout" "parallel.timeout must be >= 0 seconds" train --config $cfg \
  --set run_dir="$tmp/b9" --set parallel.timeout=-1
expect_fail "zero step timeout" "parallel.step_timeout must be > 0 seconds, got 0" train --config $cfg \
  --set run_dir="$tmp/b9" --set parallel.step_timeout=0
expect_fail "timeout_steps below 1" "parallel.timeout_steps must be >= 1, got 0.5" train --config $cfg \
  --set run_dir="$tmp/b9" --set parallel.timeout_steps=0.5
if [ "$(nvidia-smi -L 2>/dev/null | grep -c GPU)" = 0 ]; then  # here the device check itself must refuse
  expect_fail "cuda without a GPU" "train.device is 'cuda' but" train --config $cfg --set run_dir="$tmp/b8" \
    --set train.device=cuda
fi
[ ! -e "$tmp/b1" ] && [ ! -e "$tmp/b3" ] && [ ! -e "$tmp/b6" ] && [ ! -e "$tmp/b9" ] && [ ! -e "$tmp/b7" ] && [ ! -e "$tmp/b8" ] && ok "no run dir left by config errors" || bad "run dir left by config errors"
expect_fail "export of a non-checkpoint" "neither a checkpoint" "$moekit" export --checkpoint "$tmp" --out "$tmp/x"
expect_fail "export over an existing dir" "$tmp/moe/hf" "$moekit" export --checkpoint "$tmp/moe" --out "$tmp/moe/hf"

finish
