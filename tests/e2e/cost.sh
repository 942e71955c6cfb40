#!/usr/bin/env bash
# Command-line tests of `moekit cost`: the published parameter table through --json, --vs
# ratios, HF config.json input, the 8 x 80 GB memory plan of Qwen1.5-MoE-A2.7B, the cpu plan
# against a measured step, and bad input (non-zero exit, a message naming the problem).
#   cost.sh MOEKIT_BINARY SOURCE_DIR
set -uo pipefail
moekit="$1"
src="$2"
models="$src/configs/models"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
source "$2/tests/e2e/lib/harness.bash"

# check NAME JSON_LINE PYTHON: run PYTHON with `r` = the parsed line.
check() {
  local name="$1" line="$2" code="$3"
  if python3 -c "import json, sys; r = json.loads(sys.argv[1]); $code" "$line" 2>"$tmp/py.err"; then
    ok "$name"
  else
    bad "$name: $(tail -n 1 "$tmp/py.err") | $line"
  fi
}

# --- help states the formulas -----------------------------------------------------------------
help="$($moekit cost --help 2>&1)"
grep -qF "6 * N_matmul + 12 * L * S * q_dim" <<<"$help" && ok "help states the FLOP formula" || bad "help formula"
grep -qF "zero1" <<<"$help" && ok "help lists --zero1" || bad "help --zero1"

# --- the published table (Qwen1.5-MoE blog; issue #7), to the digits shown ---------------------
# A published figure may be the count rounded or truncated to its digits (the tables do both).
pub='
def shows(x, want, digits=1):
    b = x / 1e9; s = 10 ** digits
    assert abs(round(b * s) / s - want) < 1e-9 or abs(int(b * s) / s - want) < 1e-9, (b, want)
for k in ("total_params", "activated_params", "activated_non_embedding_params", "train_flops_per_token"):
    assert k in r and r[k] > 0, k
'
while read -r name total active nonemb; do
  out="$($moekit cost --model "$models/$name.yaml" --json)" || { bad "$name: exit $?"; continue; }
  last="$(tail -n 1 <<<"$out")"
  check "$name: $total / $active / $nonemb B" "$last" "$pub
shows(r['total_params'], $total); shows(r['activated_params'], $active)
shows(r['activated_non_embedding_params'], $nonemb)"
  grep -qF "total parameters" <<<"$out" && ok "$name: table on stdout" || bad "$name: table on stdout"
done <<'EOF'
qwen1.5-7b 7.7 7.7 6.5
qwen1.5-moe-a2.7b 14.3 2.7 2.0
deepseek-moe-16b 16.4 2.8 2.4
qwen1.5-1.8b 1.8 1.8 1.2
EOF
last="$($moekit cost --model "$models/qwen1.5-1.8b.yaml" --json | tail -n 1)"
check "qwen1.5-1.8b: 1.84 B, 10.4 GFLOP/token at 2K" "$last" "$pub
shows(r['total_params'], 1.84, 2); assert abs(r['train_flops_per_token'] / 1e9 - 10.4) < 0.05, r"

# --- --vs: MoE over dense ratios (performance-anchors section 0: 0.34x the 7B's FLOPs) ----------
last="$($moekit cost --model "$models/qwen1.5-moe-a2.7b.yaml" --vs "$models/qwen1.5-7b.yaml" --json | tail -n 1)"
check "--vs ratios" "$last" "
q = r['ratio']
assert abs(q['train_flops_per_token'] - 0.34) < 0.005, q
assert abs(q['activated_params'] - r['activated_params'] / r['vs']['activated_params']) < 1e-12, q
assert abs(q['total_params'] - 14.316 / 7.721) < 0.01, q
assert r['vs']['memory']['ep'] == 1, r['vs']['memory']"
out="$($moekit cost --model "$models/qwen1.5-moe-a2.7b.yaml" --vs "$models/qwen1.5-7b.yaml")"
grep -q "ratio" <<<"$out" && ok "--vs table has a ratio column" || bad "--vs table: $out"

# --- HF config.json (file and directory) gives the same counts as the YAML ---------------------
mkdir -p "$tmp/hf"
python3 - "$tmp/hf/config.json" <<'PY'
import json, sys
json.dump({"architectures": ["Qwen2MoeForCausalLM"], "model_type": "qwen2_moe", "vocab_size": 151936,
           "hidden_size": 2048, "num_hidden_layers": 24, "num_attention_heads": 16, "num_key_value_heads": 16,
           "intermediate_size": 5632, "num_experts": 60, "num_experts_per_tok": 4, "moe_intermediate_size": 1408,
           "shared_expert_intermediate_size": 5632, "max_position_embeddings": 8192, "rope_theta": 1000000.0,
           "tie_word_embeddings": False, "torch_dtype": "bfloat16"}, open(sys.argv[1], "w"))
PY
want="$($moekit cost --model "$models/qwen1.5-moe-a2.7b.yaml" --json | tail -n 1)"
for path in "$tmp/hf" "$tmp/hf/config.json"; do
  got="$($moekit cost --model "$path" --json | tail -n 1)"
  if python3 -c "import json,sys; a=json.loads(sys.argv[1]); b=json.loads(sys.argv[2]); assert a['total_params']==b['total_params'] and a['train_flops_per_token']==b['train_flops_per_token'] and a['memory']['total_bytes']==b['memory']['total_bytes']" "$got" "$want"; then
    ok "HF $(basename "$path") = YAML"
  else
    bad "HF $(basename "$path") = YAML: $got"
  fi
done

# --- Qwen1.5-MoE-A2.7B on 8 x 80 GB -------------------------------------------------------------
a27="$models/qwen1.5-moe-a2.7b.yaml"
expect_fail "ep 8 does not divide 60 experts" "ep (8) must divide num_experts (60)" \
  $moekit cost --model "$a27" --ep 8 --zero1 --device-memory 80
last="$($moekit cost --model "$a27" --ep 4 --dp 2 --zero1 --device-memory 80 --json | tail -n 1)"
check "A2.7B ep 4 x dp 2 + ZeRO-1 fits 80 GB" "$last" "
m = r['memory']
assert m['world'] == 8 and m['experts_per_rank'] == 15 and m['zero1'] is True, m
assert m['fits'] is True and m['total_bytes'] < 80e9, m
parts = sum(m[k] for k in ('weights_bytes', 'master_bytes', 'grad_bytes', 'moment_bytes', 'activation_bytes',
                           'workspace_bytes', 'comm_bytes'))
assert parts == m['total_bytes'], (parts, m)
assert m['comm_bytes'] > 0 and m['moment_bytes'] == 8 * m['params_optimizer_shard'], m"
last="$($moekit cost --model "$a27" --ep 4 --dp 2 --device-memory 80 --json | tail -n 1)"
check "A2.7B without ZeRO-1 does not fit 80 GB" "$last" "assert r['memory']['fits'] is False, r['memory']"
last="$($moekit cost --model "$models/deepseek-moe-16b.yaml" --ep 8 --zero1 --json | tail -n 1)"
check "DeepSeekMoE 16B ep 8 + ZeRO-1 fits 80 GB" "$last" "assert r['memory']['fits'] is True and r['memory']['experts_per_rank'] == 8"

# --- cpu plan against a measured step -----------------------------------------------------------
last="$($moekit cost --model "$models/tiny-moe.yaml" --device cpu --precision fp32 --seq-len 256 --micro-batch 4 \
  --measure-rss --json | tail -n 1)"
check "cpu plan within 20% of measured peak RSS" "$last" "
m = r['measured']; assert 0.8 <= m['plan_over_measured'] <= 1.2, m
assert r['memory']['mode'] == 'cpu' and r['memory']['master_bytes'] == 0, r['memory']"

# --- bad input ----------------------------------------------------------------------------------
expect_fail "missing config" "$tmp/nope.yaml" $moekit cost --model "$tmp/nope.yaml"
printf 'model_type: qwen2\nhidden_size: [64\n' >"$tmp/broken.yaml"
expect_fail "malformed YAML" "broken.yaml: invalid YAML" $moekit cost --model "$tmp/broken.yaml"
printf 'model_type: qwen2\nhidden_sise: 64\n' >"$tmp/typo.yaml"
expect_fail "unknown key" "hidden_sise" $moekit cost --model "$tmp/typo.yaml"
expect_fail "missing --vs config" "$tmp/gone.yaml" $moekit cost --model "$a27" --vs "$tmp/gone.yaml"
expect_fail "ep on a dense model" "dense" $moekit cost --model "$models/qwen1.5-7b.yaml" --ep 2
expect_fail "tiny-moe ep 3" "ep (3) must divide num_experts (8)" $moekit cost --model "$models/tiny-moe.yaml" --ep 3
expect_fail "zero dp" "dp (0)" $moekit cost --model "$a27" --dp 0
expect_fail "bad precision" "int8" $moekit cost --model "$a27" --precision int8
expect_fail "bad device" "unknown memory mode 'tpu'" $moekit cost --model "$a27" --device tpu
expect_fail "measure needs cpu" "--measure-rss needs --device cpu" $moekit cost --model "$a27" --measure-rss
expect_fail "negative device memory" "--device-memory" $moekit cost --model "$a27" --device-memory -5
expect_fail "no --model" "--model" $moekit cost

finish
