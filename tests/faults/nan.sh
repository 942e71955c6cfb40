#!/usr/bin/env bash
# NaN injection, one case per rule of the NaN policy (docs/TRAINING.md):
#  - NaN in weights loaded with init_from: refused at load, naming the tensor;
#  - NaN in a checkpoint's master weights or optimizer state: resume=auto falls back to an older
#    checkpoint and says why; naming the checkpoint explicitly is an error; a failed resume leaves
#    the run directory as it was (config.resolved.yaml once was rewritten);
#  - NaN reaching the optimizer state in an update: the run stops at that step naming the tensor,
#    the last checkpoint (written before) stays the one to resume from;
#  - too many skipped steps (optim.max_skipped_fraction): the run exits non-zero;
#  - upcycle --verify with a NaN model, or one whose logits overflow: fails instead of reporting
#    KL 0 and top-1 agreement 1.
#   nan.sh MOEKIT_BINARY SOURCE_DIR CKPT_TOOL
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.bash" "$@"
st="python3 $src/tests/e2e/st_edit.py"

# --- init_from weights with a NaN --------------------------------------------------------------
"$moekit" init --model configs/models/tiny-moe.yaml --out "$tmp/init" --dtype f32 >/dev/null 2>&1 || bad "init"
$st fill "$tmp/init/model.safetensors" model.layers.1.mlp.experts.5.up_proj.weight nan
train --set run_dir="$tmp/r_init" --set init_from="$tmp/init" >/dev/null 2>"$tmp/init.log"
expect_exit1 "NaN in init_from weights: refused at load" "$tmp/init.log" $? "model.layers.1.mlp.experts.5.up_proj.weight" \
  "non-finite"

# --- NaN in a checkpoint ------------------------------------------------------------------------
for group in master exp_avg_sq; do
  run="$tmp/run_$group"
  train --set run_dir="$run" --set train.steps=4 >/dev/null 2>"$tmp/t1.log" || bad "run: $(tail -2 "$tmp/t1.log")"
  "$ckpt_tool" poison "$run/checkpoints/step_00000004" "$group" model.layers.0.self_attn.q_proj.weight || bad "poison"
  train --set run_dir="$run" --set resume=auto >"$tmp/r.log" 2>&1
  rc=$?
  if [ $rc -eq 0 ] && [ "$(resumed_from "$tmp/r.log")" = 2 ] &&
    grep -q "step_00000004 is unusable.*/$group/model.layers.0.self_attn.q_proj.weight.*not finite" "$tmp/r.log"; then
    ok "NaN in /$group of the newest checkpoint: auto-resume falls back to step 2, saying why"
  else
    bad "NaN in /$group: rc=$rc, resumed from '$(resumed_from "$tmp/r.log")': $(grep -m1 unusable "$tmp/r.log")"
  fi
done
run="$tmp/run"
ck="$run/checkpoints"
train --set run_dir="$run" --set train.steps=4 >/dev/null 2>&1 || bad "second run"
cp "$run/config.resolved.yaml" "$tmp/config.before"
"$ckpt_tool" poison "$ck/step_00000004" master model.norm.weight || bad "poison"
"$ckpt_tool" poison "$ck/step_00000002" exp_avg model.norm.weight || bad "poison"
train --set run_dir="$run" --set resume=auto --set seed=99 >/dev/null 2>"$tmp/r2.log"
expect_exit1 "no usable checkpoint: resume refuses to start over them" "$tmp/r2.log" $? "no checkpoint verifies" \
  "step_00000004" "step_00000002"
cmp -s "$run/config.resolved.yaml" "$tmp/config.before" && ok "failed resume: config.resolved.yaml untouched" ||
  bad "failed resume rewrote config.resolved.yaml"
train --set run_dir="$run" --set resume="$ck/step_00000004" >/dev/null 2>"$tmp/r3.log"
expect_exit1 "explicit resume from a NaN checkpoint: an error" "$tmp/r3.log" $? "/master/model.norm.weight" "not finite"
"$moekit" export --checkpoint "$ck/step_00000004" --out "$tmp/x" >/dev/null 2>"$tmp/x.log"
expect_exit1 "export of a NaN checkpoint: refused" "$tmp/x.log" $? "model.norm.weight" "non-finite"

# A checkpoint of another model (a tensor missing) is passed over like a corrupt one.
run="$tmp/other"
train --set run_dir="$run" --set train.steps=4 >/dev/null 2>&1 || bad "third run"
"$ckpt_tool" drop "$run/checkpoints/step_00000004" exp_avg model.layers.2.mlp.gate.weight || bad "drop"
train --set run_dir="$run" --set resume=auto >"$tmp/r4.log" 2>&1
rc=$?
[ $rc -eq 0 ] && [ "$(resumed_from "$tmp/r4.log")" = 2 ] && grep -q "has no tensor /exp_avg/model.layers.2.mlp.gate.weight" \
  "$tmp/r4.log" && ok "a tensor missing from the newest checkpoint: auto-resume falls back" ||
  bad "missing tensor: rc=$rc: $(grep -m1 unusable "$tmp/r4.log")"

# --- NaN reaching the optimizer state in an update -----------------------------------------------
MOEKIT_DEBUG_POISON_STEP=3 train --set run_dir="$tmp/poison" >/dev/null 2>"$tmp/p.log"
expect_exit1 "NaN in the optimizer state after an update: stopped at that step" "$tmp/p.log" $? "step 3:" \
  "exp_avg of tensor 'model.embed_tokens.weight'"
[ "$(cat "$tmp/poison/checkpoints/latest")" = step_00000002 ] && [ ! -e "$tmp/poison/checkpoints/step_00000004" ] &&
  ok "no checkpoint written after the NaN" || bad "checkpoints after the NaN: $(ls "$tmp/poison/checkpoints")"

# --- too many skipped steps ---------------------------------------------------------------------
MOEKIT_DEBUG_NAN_STEP=2 train --set run_dir="$tmp/skips" --set optim.max_skipped_fraction=0.1 >/dev/null \
  2>"$tmp/s.log"
expect_exit1 "1 of 6 steps skipped > max_skipped_fraction 0.1: exit 1" "$tmp/s.log" $? "1 of 6 steps" \
  "optim.max_skipped_fraction 0.1"
MOEKIT_DEBUG_NAN_STEP=2 train --set run_dir="$tmp/skips2" --set optim.max_skipped_fraction=0.2 >/dev/null 2>&1 &&
  ok "1 of 6 steps skipped <= 0.2: exit 0" || bad "max_skipped_fraction 0.2"

# --- upcycle --verify ---------------------------------------------------------------------------
"$moekit" init --model configs/models/tiny-dense.yaml --out "$tmp/dense" --dtype f32 >/dev/null 2>&1 || bad "init dense"
cp -r "$tmp/dense" "$tmp/dense_nan" && $st fill "$tmp/dense_nan/model.safetensors" model.layers.0.mlp.up_proj.weight nan
cp -r "$tmp/dense" "$tmp/dense_big" && $st fill "$tmp/dense_big/model.safetensors" lm_head.weight 3e38
for kind in nan big; do
  "$moekit" upcycle --config configs/upcycle/tiny.yaml --dense "$tmp/dense_$kind" --out "$tmp/moe_$kind" --verify \
    --threads 1 >/dev/null 2>"$tmp/v_$kind.log"
  rc=$?
  if [ $kind = nan ]; then want="model.layers.0.mlp.up_proj.weight"; else want="non-finite logit"; fi
  expect_exit1 "upcycle --verify on a $kind model fails" "$tmp/v_$kind.log" $rc "$want"
done

finish
