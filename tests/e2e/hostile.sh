#!/usr/bin/env bash
# Hostile configs and metadata (issue 14): each case once crashed, hung, overflowed or was
# silently accepted. Every one must now exit 1 with "moekit: error:" naming the file and the key,
# quickly, without a crash and without allocating from the untrusted size.
#   hostile.sh MOEKIT_BINARY SOURCE_DIR
set -uo pipefail
moekit="$1"
src="$2"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cd "$src"
source "$src/tests/e2e/lib/harness.bash"

# expect_clean NAME SUBSTRING... -- cmd...: exit code exactly 1 within 20 s (not a signal, not a
# hang), "moekit: error:" and every SUBSTRING in stderr.
expect_clean() {
  local name="$1"
  shift
  local want=()
  while [ "$1" != "--" ]; do want+=("$1"); shift; done
  shift
  local err rc
  err="$(timeout 20 "$@" 2>&1 >/dev/null)"
  rc=$?
  local miss=""
  for w in "moekit: error:" "${want[@]}"; do grep -qF -- "$w" <<<"$err" || miss="$miss '$w'"; done
  if [ $rc -eq 1 ] && [ -z "$miss" ]; then ok "$name"; else bad "$name (rc=$rc, missing:$miss; stderr: ${err:0:400})"; fi
}

# A config.json / YAML from the tiny dense model with one field changed (python edits the JSON).
tiny_json() {  # tiny_json OUT.json PY_EXPR_ON_c
  python3 - "$1" "$2" <<'PY'
import json, sys
c = dict(model_type="qwen2", vocab_size=512, hidden_size=64, intermediate_size=172, num_hidden_layers=2,
         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, torch_dtype="float32")
exec(sys.argv[2])
json.dump(c, open(sys.argv[1], "w"))
PY
}

# --- deep nesting: a value nested 100,000 levels once overflowed the stack (exit 139; 1,000,000
# in a release build); now the depth cap (and, for the larger file, the size cap) refuses it ---
python3 - "$tmp" <<'PY'
import sys
head = '{"model_type":"qwen2","vocab_size":512,"hidden_size":64,"intermediate_size":172,"num_hidden_layers":2,"num_attention_heads":4,"x":'
for n, name in ((100000, "deep"), (1000000, "deep1m")):
    open(f"{sys.argv[1]}/{name}.json", "w").write(head + "[" * n + "]" * n + "}")
    open(f"{sys.argv[1]}/{name}.yaml", "w").write("model_type: qwen2\nx: " + "[" * n + "]" * n + "\n")
PY
expect_clean "deep config.json" "$tmp/deep.json" "nests deeper than 32 levels" -- "$moekit" cost --model "$tmp/deep.json"
expect_clean "deep model YAML" "$tmp/deep.yaml" "nests deeper than 32 levels" -- "$moekit" cost --model "$tmp/deep.yaml"
expect_clean "1,000,000 levels in config.json" "$tmp/deep1m.json" -- "$moekit" cost --model "$tmp/deep1m.json"
expect_clean "1,000,000 levels in model YAML" "$tmp/deep1m.yaml" -- "$moekit" cost --model "$tmp/deep1m.yaml"

# --- huge sizes: a loop over 2^32 layers (hang), 2^58 vocab (negative parameter count) -----------
tiny_json "$tmp/layers.json" 'c["num_hidden_layers"] = 4294967296'
expect_clean "num_hidden_layers 2^32 in config.json (cost)" "$tmp/layers.json" "num_hidden_layers" \
  -- "$moekit" cost --model "$tmp/layers.json"
mkdir -p "$tmp/layers_hf" && cp "$tmp/layers.json" "$tmp/layers_hf/config.json"
expect_clean "num_hidden_layers 2^32 in config.json (eval)" "num_hidden_layers" \
  -- "$moekit" eval --model "$tmp/layers_hf" --tokens 1,2
sed 's/^num_hidden_layers: .*/num_hidden_layers: 4294967296/' configs/models/tiny-dense.yaml >"$tmp/layers.yaml"
expect_clean "num_hidden_layers 2^32 in model YAML" "$tmp/layers.yaml" "num_hidden_layers" \
  -- "$moekit" cost --model "$tmp/layers.yaml"
tiny_json "$tmp/vocab.json" 'c["vocab_size"] = 2**58'
expect_clean "vocab_size 2^58 (cost)" "$tmp/vocab.json" "vocab_size" -- "$moekit" cost --model "$tmp/vocab.json"
tiny_json "$tmp/u64.json" 'c["hidden_size"] = 2**64 - 1'
expect_clean "hidden_size 2^64-1 (unsigned JSON)" "$tmp/u64.json" "hidden_size" -- "$moekit" cost --model "$tmp/u64.json"
sed 's/^num_key_value_heads: .*/num_key_value_heads: 2\nhead_dim: 4611686018427387904/' configs/models/tiny-dense.yaml >"$tmp/hd.yaml"
expect_clean "head_dim 2^62 (init)" "$tmp/hd.yaml" "head_dim" -- "$moekit" init --model "$tmp/hd.yaml" --out "$tmp/hd_out"
if ls "$tmp" | grep -q "^hd_out"; then bad "init left $(ls "$tmp" | grep hd_out)"; else ok "init left no out dir"; fi
expect_clean "cost --seq-len 2^40" "seq" -- "$moekit" cost --model configs/models/tiny-moe.yaml --seq-len 1099511627776

# --- 1e400: out of range for a double; the error names the file and the key --------------------
tiny_json "$tmp/e400.json" 'pass'
sed -i 's/"torch_dtype"/"rope_theta": 1e400, "torch_dtype"/' "$tmp/e400.json"
expect_clean "1e400 in config.json" "$tmp/e400.json" "rope_theta" -- "$moekit" cost --model "$tmp/e400.json"
sed 's/^rope_theta: .*/rope_theta: 1e400/' configs/models/tiny-dense.yaml >"$tmp/e400.yaml"
expect_clean "1e400 in model YAML" "$tmp/e400.yaml" "rope_theta" -- "$moekit" cost --model "$tmp/e400.yaml"
expect_clean "1e400 in --set optim.lr" "optim.lr" -- "$moekit" train --config configs/train/tiny-dense.yaml \
  --set run_dir="$tmp/r_e400" --set optim.lr=1e400

# --- duplicate keys: refused everywhere (config.json kept the last, run YAML the first) -------
tiny_json "$tmp/dup.json" 'pass'
sed -i 's/"torch_dtype"/"num_attention_heads": 8, "torch_dtype"/' "$tmp/dup.json"
expect_clean "duplicate key in config.json" "$tmp/dup.json" "duplicate key 'num_attention_heads'" \
  -- "$moekit" cost --model "$tmp/dup.json"
{ cat configs/train/tiny-dense.yaml; printf 'seed: 7\n'; } >"$tmp/dup_run.yaml"
expect_clean "duplicate key in run YAML" "$tmp/dup_run.yaml" "duplicate key 'seed'" \
  -- "$moekit" train --config "$tmp/dup_run.yaml" --set run_dir="$tmp/r_dup"
sed 's/^  lr: .*/  lr: 1.0e-3\n  lr: 2.0e-3/' configs/train/tiny-dense.yaml >"$tmp/dup_optim.yaml"
expect_clean "duplicate key in run YAML optim section" "$tmp/dup_optim.yaml" "duplicate key 'lr'" \
  -- "$moekit" train --config "$tmp/dup_optim.yaml" --set run_dir="$tmp/r_dup2"
{ cat configs/upcycle/tiny.yaml; printf 'seed: 7\n'; } >"$tmp/dup_recipe.yaml"
expect_clean "duplicate key in recipe" "$tmp/dup_recipe.yaml" "seed" -- "$moekit" upcycle --config "$tmp/dup_recipe.yaml" \
  --dense "$tmp/none" --out "$tmp/up"
# Found by fuzzing: yaml-cpp hands back empty documents for a lone "," forever (a hang).
printf ',' >"$tmp/comma.yaml"
expect_clean "a run YAML of one comma" "$tmp/comma.yaml" "more than one YAML document" \
  -- "$moekit" train --config "$tmp/comma.yaml"
printf 'a: &x [1, 2]\nb: *x\n' >"$tmp/alias.yaml"
expect_clean "YAML alias" "$tmp/alias.yaml" "aliases (*name)" -- "$moekit" cost --model "$tmp/alias.yaml"
expect_clean "deep --set value" "--set" -- "$moekit" train --config configs/train/tiny-dense.yaml \
  --set run_dir="$tmp/r_set" --set "seed=$(printf '[%.0s' $(seq 1 200))"
[ ! -e "$tmp/r_e400" ] && [ ! -e "$tmp/r_dup" ] && [ ! -e "$tmp/r_set" ] && ok "no run dir left" || bad "run dir left"

# --- an HF checkpoint whose config.json promises far more than its 71 KB of tensors: the shape
# error comes before the model is allocated (it once reached 1.15 GB RSS first) ---------------
"$moekit" init --model configs/models/tiny-dense.yaml --out "$tmp/small" --set num_hidden_layers=1 --dtype bf16 \
  >/dev/null 2>&1 || bad "init small"
python3 -c "import json,sys; p=sys.argv[1]; c=json.load(open(p)); c['intermediate_size']=650000; json.dump(c,open(p,'w'))" \
  "$tmp/small/config.json"
# peak_rss OUT cmd...: runs cmd (stdout dropped), its stderr on ours, its peak RSS (KiB) in OUT.
peak_rss() {
  python3 - "$@" <<'PY'
import resource, subprocess, sys
r = subprocess.run(sys.argv[2:], stdout=subprocess.DEVNULL)
open(sys.argv[1], "w").write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(r.returncode if r.returncode >= 0 else 128 - r.returncode)
PY
}
# The same command on the same (healthy) model: what loading the binary costs (a CUDA build maps
# its libraries: 200+ MB before anything is allocated).
"$moekit" init --model configs/models/tiny-dense.yaml --out "$tmp/base" --set num_hidden_layers=1 --dtype bf16 \
  >/dev/null 2>&1
peak_rss "$tmp/rss0" "$moekit" eval --model "$tmp/base" --tokens 1,2 2>/dev/null
err="$(peak_rss "$tmp/rss" "$moekit" eval --model "$tmp/small" --tokens 1,2 2>&1)"
rc=$?
rss=$(($(cat "$tmp/rss") - $(cat "$tmp/rss0")))
if [ $rc -eq 1 ] && grep -q "mlp.gate_proj.weight" <<<"$err" && grep -q "650000" <<<"$err" && [ "$rss" -lt 100000 ]; then
  ok "intermediate_size 650000: shape error before allocating (peak RSS +$rss KiB over a healthy eval)"
else
  bad "intermediate_size 650000 (rc=$rc, peak RSS +$rss KiB over a healthy eval): ${err:0:300}"
fi

finish
