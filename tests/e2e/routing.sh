#!/usr/bin/env bash
# End-to-end tests of the routing options on the tiny MoE (split from train.sh so the two run
# side by side):
#  - aux-loss-free balancing: with the expert bias updated the load evens out against the same
#    model with it frozen, the bias is stored in the checkpoint, and the run learns;
#  - export refuses a sigmoid-routed, expert-bias model (transformers' Qwen2MoE cannot run it);
#  - a capacity factor of 0.5 drops (token, slot) pairs every step and the run still learns.
#   routing.sh MOEKIT_BINARY SOURCE_DIR
set -uo pipefail
moekit="$1"
src="$2"
py=/usr/bin/python3
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cd "$src"
source "$src/tests/e2e/lib/harness.bash"
source "$src/tests/e2e/lib/train_env.bash"

# --- aux-loss-free balancing and a capacity factor ------------------------------------------
# The same DeepSeek-V3-style model (sigmoid scores, no aux loss) with the expert bias frozen and
# with it updated: the update must even out the load (max/mean over the last steps), store the
# bias in the checkpoint, and keep learning; a capacity factor of 0.5 drops pairs and learns.
for rate in 0 0.01; do
  train --config configs/train/tiny-moe.yaml --set model=configs/models/tiny-moe-aux-free.yaml \
    --set loss.z_coef=0 --set moe.router_bias_update_rate=$rate --set run_dir="$tmp/free$rate" --set train.steps=30 \
    --set train.eval_every=0 >/dev/null 2>"$tmp/free$rate.log" || bad "aux-loss-free run (rate $rate): $(tail -3 "$tmp/free$rate.log")"
done
if $py - "$tmp/free0" "$tmp/free0.01" <<'PY'; then ok "the expert-bias update balances the load"; else bad "expert-bias balancing"; fi
import json, os, sys
def tail_imbalance(run):
    rows = [json.loads(l) for l in open(os.path.join(run, "expert_load.jsonl"))][-10:]
    return sum(max(l["max_over_mean"] for l in r["layers"]) for r in rows) / len(rows)
frozen, updated = tail_imbalance(sys.argv[1]), tail_imbalance(sys.argv[2])
print(f"max/mean expert load over the last 10 steps: frozen bias {frozen:.3f}, updated {updated:.3f}")
assert updated < frozen, (frozen, updated)
meta = json.load(open(os.path.join(sys.argv[2], "checkpoints", "step_00000030", "meta.json")))
bias = meta["expert_bias"]["model.layers.0.mlp.gate.e_score_correction_bias"]
assert len(bias) == 8 and any(b != 0 for b in bias), bias
meta0 = json.load(open(os.path.join(sys.argv[1], "checkpoints", "step_00000030", "meta.json")))
assert all(b == 0 for b in meta0["expert_bias"]["model.layers.0.mlp.gate.e_score_correction_bias"])
rows = [json.loads(l) for l in open(os.path.join(sys.argv[2], "metrics.jsonl"))]
assert rows[-1]["loss"] < rows[0]["loss"] - 0.5, (rows[0]["loss"], rows[-1]["loss"])
PY
expect_fail "export of a sigmoid-routed, expert-bias model" "Qwen2MoeForCausalLM routes" "$moekit" export \
  --checkpoint "$tmp/free0.01" --out "$tmp/free-hf"
train --config configs/train/tiny-moe.yaml --set moe.capacity_factor=0.5 --set run_dir="$tmp/cap" --set train.steps=20 \
  --set train.eval_every=0 >/dev/null 2>"$tmp/cap.log" || bad "capacity-factor run: $(tail -3 "$tmp/cap.log")"
if $py - "$tmp/cap" <<'PY'; then ok "a capacity factor drops pairs and the run learns"; else bad "capacity factor run"; fi
import json, os, sys
rows = [json.loads(l) for l in open(os.path.join(sys.argv[1], "metrics.jsonl"))]
# Per step: 2 micro-batches x 1024 tokens x top-2 x 4 layers = 16384 (token, slot) pairs. Each of
# the 8 experts keeps at most ceil(0.5 x 1024 x 2 / 8) = 128 per micro-batch and layer, i.e. half
# of them: at least 8192 are dropped, and never all.
total = 16 * 128 * 2 * 4
assert all(total // 2 <= r["dropped"] < total for r in rows), [r["dropped"] for r in rows]
assert rows[-1]["loss"] < rows[0]["loss"] - 0.5, (rows[0]["loss"], rows[-1]["loss"])
print("dropped (token, slot) pairs per step:", rows[0]["dropped"], "->", rows[-1]["dropped"])
PY

finish
