#!/usr/bin/env bash
# Command-line tests of `moekit upcycle`: a tiny upcycle and its files, --verify in a
# function-preserving setting, byte-identical output for any --threads, --overwrite, every bad
# input of the issue (non-zero exit, a message naming the thing, no output or staging
# directory left), and the PyTorch/transformers check of tests/reference/check_upcycle.py
# (skipped when /usr/bin/python3 lacks torch or transformers).
#   upcycle.sh MOEKIT_BINARY SOURCE_DIR
set -uo pipefail
moekit="$1"
src="$2"
st="python3 $src/tests/e2e/st_edit.py"
recipe="$src/configs/upcycle/tiny.yaml"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
source "$src/tests/e2e/lib/harness.bash"
# no_leftovers NAME: nothing in $tmp/out* (staging directories are hidden .NAME.upcycle-tmp.*).
no_leftovers() {
  if ls -A "$tmp/outs" | grep -q .; then bad "$1: left $(ls -A "$tmp/outs" | tr '\n' ' ')"; else ok "$1: nothing left behind"; fi
}

$moekit upcycle --help >/dev/null 2>&1 && ok "upcycle --help" || bad "upcycle --help"

# A dense model whose MLPs matter (std 0.2), with tokenizer files to carry over.
$moekit init --model "$src/configs/models/tiny-dense.yaml" --out "$tmp/dense" --seed 5 --std 0.2 --dtype bf16 >/dev/null 2>&1 ||
  bad "init dense"
echo '{"model": "fake tokenizer"}' >"$tmp/dense/tokenizer.json"
echo '{}' >"$tmp/dense/tokenizer_config.json"
mkdir -p "$tmp/outs"

# --- the tiny qwen-mode upcycle ----------------------------------------------------------
out="$($moekit upcycle --config "$recipe" --dense "$tmp/dense" --out "$tmp/moe" --threads 2 2>"$tmp/log")"
if [ $? -eq 0 ]; then ok "upcycle tiny"; else bad "upcycle tiny: $(cat "$tmp/log")"; fi
for f in config.json generation_config.json model.safetensors tokenizer.json tokenizer_config.json \
  upcycle/plan.json upcycle/plan.safetensors upcycle/recipe.yaml; do
  [ -f "$tmp/moe/$f" ] && ok "wrote $f" || bad "wrote $f"
done
[ "$($st shape "$tmp/moe/model.safetensors" model.layers.3.mlp.experts.7.down_proj.weight)" = "F32 [64, 48]" ] &&
  ok "per-expert name and shape" || bad "per-expert name and shape"
[ "$($st shape "$tmp/moe/model.safetensors" model.layers.0.mlp.shared_expert.up_proj.weight)" = "F32 [96, 64]" ] &&
  ok "shared expert of 2 x 48" || bad "shared expert of 2 x 48"
if python3 - "$tmp/moe/config.json" "$(tail -n 1 <<<"$out")" <<'PY'; then ok "config.json and summary json"; else bad "config.json and summary json: $out"; fi
import json, sys
c = json.load(open(sys.argv[1]))
assert c["model_type"] == "qwen2_moe" and c["architectures"] == ["Qwen2MoeForCausalLM"], c
want = {"num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 48, "shared_expert_intermediate_size": 96,
        "norm_topk_prob": False, "decoder_sparse_step": 1, "mlp_only_layers": [], "router_aux_loss_coef": 0.001,
        "output_router_logits": False, "torch_dtype": "float32", "intermediate_size": 172}
for k, v in want.items():
    assert c[k] == v, (k, c[k], v)
s = json.loads(sys.argv[2])
assert s["mode"] == "qwen" and s["tensors"] > 100 and abs(s["reinit_fraction"] - 0.5) < 0.01, s
PY

# --- transformers / numpy reference check -------------------------------------------------
toks=$(python3 -c "import random; r=random.Random(2); print(','.join(str(r.randrange(512)) for _ in range(32)))")
$moekit eval --model "$tmp/moe" --tokens "$toks" --logits-out "$tmp/logits.safetensors" >/dev/null 2>&1 || bad "eval of the upcycled model"
if [ -x /usr/bin/python3 ]; then
  /usr/bin/python3 "$src/tests/reference/check_upcycle.py" --moe "$tmp/moe" --dense "$tmp/dense" --tokens "$toks" \
    --logits "$tmp/logits.safetensors" >"$tmp/check.log" 2>&1
  rc=$?
  if [ $rc -eq 0 ]; then
    ok "check_upcycle.py: transformers logits and independent plan checks ($(grep -c '^ok' "$tmp/check.log") checks)"
  elif [ $rc -eq 77 ]; then
    echo "skip - check_upcycle.py: $(head -n 1 "$tmp/check.log")"
  else
    bad "check_upcycle.py: $(grep FAIL "$tmp/check.log" | head -n 3)"
  fi
else
  echo "skip - check_upcycle.py: no /usr/bin/python3"
fi

# --- --verify in a function-preserving setting ------------------------------------------------
out="$($moekit upcycle --config "$recipe" --dense "$tmp/dense" --out "$tmp/copy" --verify --verify-tokens 64 \
  --set mode=copy --set expert_intermediate_size=0 --set num_shared_experts=0 --set reinit_ratio=0 \
  --set output_scaling=auto --set router_init=zero 2>/dev/null | tail -n 1)"
if python3 - "$out" <<'PY'; then ok "copy mode --verify: MoE reproduces the dense logits"; else bad "copy mode --verify: $out"; fi
import json, sys
s = json.loads(sys.argv[1]); v = s["verify"]
assert s["function_preserving"] is True, s
assert v["tokens"] == 64 and v["kl"] < 1e-9 and v["max_abs_logit_diff"] < 1e-4 and v["top1_agreement"] == 1.0, v
assert abs(v["dense_loss"] - v["moe_loss"]) < 1e-5, v
PY
out="$($moekit upcycle --config "$recipe" --dense "$tmp/dense" --out "$tmp/qv" --verify 2>/dev/null | tail -n 1)"
if python3 - "$out" <<'PY'; then ok "qwen mode --verify reports a positive KL"; else bad "qwen mode --verify: $out"; fi
import json, sys
v = json.loads(sys.argv[1])["verify"]
assert v["kl"] > 1e-4 and v["dense_loss"] > 0 and v["moe_loss"] > 0, v
PY

# --- determinism ---------------------------------------------------------------------------------
for t in 1 3; do
  $moekit upcycle --config "$recipe" --dense "$tmp/dense" --out "$tmp/t$t" --threads $t --set dtype=bf16 \
    --set max_shard_size=200KB >/dev/null 2>&1 || bad "upcycle --threads $t"
done
if diff -r "$tmp/t1" "$tmp/t3" >/dev/null && [ -f "$tmp/t1/model.safetensors.index.json" ]; then
  ok "byte-identical sharded output for --threads 1 and 3"
else
  bad "byte-identical output for --threads 1 and 3"
fi

# --- --overwrite ----------------------------------------------------------------------------------
expect_fail "existing output refused" "already exists" $moekit upcycle --config "$recipe" --dense "$tmp/dense" --out "$tmp/moe"
[ -f "$tmp/moe/tokenizer.json" ] && ok "existing output untouched" || bad "existing output untouched"
$moekit upcycle --config "$recipe" --dense "$tmp/dense" --out "$tmp/moe" --overwrite --set seed=9 >/dev/null 2>&1 &&
  grep -q "^seed: 9$" "$tmp/moe/upcycle/recipe.yaml" && ok "--overwrite replaces it" || bad "--overwrite replaces it"

# --- bad input: each names the problem, exits non-zero, leaves nothing --------------------------
o="$tmp/outs/x"
expect_fail "missing recipe" "no-such.yaml" $moekit upcycle --config "$tmp/no-such.yaml" --dense "$tmp/dense" --out "$o"
printf 'num_experts: 8\nnum_expertz: 2\n' >"$tmp/typo.yaml"
expect_fail "unknown recipe key" "unknown recipe key 'num_expertz'" $moekit upcycle --config "$tmp/typo.yaml" --dense "$tmp/dense" --out "$o"
expect_fail "bad --set value" "reinit_ratio" $moekit upcycle --config "$recipe" --dense "$tmp/dense" --out "$o" --set reinit_ratio=2
expect_fail "bad --set key" "no_such_key" $moekit upcycle --config "$recipe" --dense "$tmp/dense" --out "$o" --set no_such_key=1
expect_fail "inconsistent recipe" "num_experts_per_tok (9)" $moekit upcycle --config "$recipe" --dense "$tmp/dense" --out "$o" --set num_experts_per_tok=9
expect_fail "virtual_group width must divide" "must divide" $moekit upcycle --config "$recipe" --dense "$tmp/dense" --out "$o" --set mode=virtual_group
expect_fail "missing dense dir" "$tmp/nodense" $moekit upcycle --config "$recipe" --dense "$tmp/nodense" --out "$o"
cp -r "$tmp/dense" "$tmp/missing" && $st drop "$tmp/missing/model.safetensors" model.layers.1.mlp.down_proj.weight
expect_fail "missing tensor" "model.layers.1.mlp.down_proj.weight" $moekit upcycle --config "$recipe" --dense "$tmp/missing" --out "$o"
cp -r "$tmp/dense" "$tmp/shape" && $st reshape "$tmp/shape/model.safetensors" model.layers.0.mlp.gate_proj.weight 86,128
expect_fail "misshapen tensor" "model.layers.0.mlp.gate_proj.weight" $moekit upcycle --config "$recipe" --dense "$tmp/shape" --out "$o"
cp -r "$tmp/dense" "$tmp/trunc" && $st truncate "$tmp/trunc/model.safetensors" 3
expect_fail "truncated safetensors" "model.safetensors" $moekit upcycle --config "$recipe" --dense "$tmp/trunc" --out "$o"
cp -r "$tmp/dense" "$tmp/llama" && python3 - "$tmp/llama/config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1])); c["model_type"] = "llama"; c["architectures"] = ["LlamaForCausalLM"]; json.dump(c, open(sys.argv[1], "w"))
PY
expect_fail "not a Qwen architecture" "model_type 'llama' is not supported" $moekit upcycle --config "$recipe" --dense "$tmp/llama" --out "$o"
expect_fail "already an MoE" "already a mixture of experts" $moekit upcycle --config "$recipe" --dense "$tmp/t1" --out "$o"
expect_fail "output inside the input" "would replace the dense checkpoint" $moekit upcycle --config "$recipe" --dense "$tmp/dense" --out "$tmp/dense" --overwrite
expect_fail "bad --threads" "threads" $moekit upcycle --config "$recipe" --dense "$tmp/dense" --out "$o" --threads -1
# A full disk: a file-size limit makes the up-front reservation fail as ENOSPC would.
expect_fail "full disk" "disk full or file size limit" bash -c "ulimit -f 100; exec $moekit upcycle --config $recipe --dense $tmp/dense --out $o"
no_leftovers "after every failure"

finish
