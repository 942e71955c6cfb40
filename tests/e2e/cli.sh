#!/usr/bin/env bash
# Command-line tests of the moekit binary: init -> eval round trip, eval against the
# transformers fixture, and bad input (every case must exit non-zero, print a message naming
# the file/field/value, and leave no partial output).
#   cli.sh MOEKIT_BINARY SOURCE_DIR
set -uo pipefail
moekit="$1"
src="$2"
st="python3 $src/tests/e2e/st_edit.py"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
source "$2/tests/e2e/lib/harness.bash"

# --- help ------------------------------------------------------------------------------
for sub in "" init eval; do
  if $moekit $sub --help >/dev/null 2>&1; then ok "help $sub"; else bad "help $sub"; fi
done
expect_fail "no subcommand" "subcommand" $moekit
expect_fail "unknown subcommand" "frobnicate" $moekit frobnicate

# --- init -> eval round trip -----------------------------------------------------------------
if $moekit init --model "$src/configs/models/tiny-moe.yaml" --out "$tmp/tiny" --seed 3 --dtype bf16 >/dev/null; then
  ok "init tiny-moe"
else
  bad "init tiny-moe"
fi
for f in config.json generation_config.json model.safetensors; do
  [ -f "$tmp/tiny/$f" ] && ok "init wrote $f" || bad "init wrote $f"
done
[ "$($st shape "$tmp/tiny/model.safetensors" model.layers.0.mlp.experts.7.down_proj.weight)" = "BF16 [64, 32]" ] &&
  ok "per-expert tensor name and shape" || bad "per-expert tensor name and shape"
toks=$(python3 -c "import random; r=random.Random(1); print(','.join(str(r.randrange(512)) for _ in range(40)))")
out="$($moekit eval --model "$tmp/tiny" --tokens "$toks" --logits-out "$tmp/logits.safetensors")"
last="$(tail -n 1 <<<"$out")"
# Random init with std 0.02: the loss is close to ln(512) = 6.238 and the aux loss close to k = 2.
if python3 - "$last" <<'PY'; then ok "eval json on random model"; else bad "eval json on random model: $last"; fi
import json, math, sys
r = json.loads(sys.argv[1])
assert r["tokens"] == 40, r
assert abs(r["loss"] - math.log(512)) < 0.1, r
assert abs(r["aux_loss"] - 2.0) < 0.2, r
PY
[ "$($st shape "$tmp/logits.safetensors" logits)" = "F32 [40, 512]" ] && ok "logits-out shape" || bad "logits-out shape"

# --- eval reproduces the transformers loss on a fixture ------------------------------------
fx="$src/tests/fixtures/dense_gqa_tied"
if [ -f "$fx/ref.safetensors" ]; then
  ids="$($st ids "$fx/ref.safetensors" input_ids)"
  last="$($moekit eval --model "$fx" --tokens "$ids" | tail -n 1)"
  want="$(python3 - "$fx/ref.safetensors" <<'PY'
import json, struct, sys
d = open(sys.argv[1], "rb").read(); n = struct.unpack("<Q", d[:8])[0]; h = json.loads(d[8:8+n]); m = h["loss"]
print(struct.unpack("<f", d[8+n+m["data_offsets"][0]:8+n+m["data_offsets"][1]])[0])
PY
)"
  if python3 -c "import json,sys; r=json.loads(sys.argv[1]); w=float(sys.argv[2]); assert abs(r['loss']-w) <= 1e-5*abs(w), (r, w); assert r['aux_loss'] is None" "$last" "$want"; then
    ok "eval matches transformers loss ($want)"
  else
    bad "eval matches transformers loss: got $last want $want"
  fi
else
  bad "fixture $fx missing"
fi

# --- bad input ---------------------------------------------------------------------------
expect_fail "eval missing dir" "$tmp/nope" $moekit eval --model "$tmp/nope" --tokens 1,2
expect_fail "eval token out of range" "out of range" $moekit eval --model "$tmp/tiny" --tokens 1,512
expect_fail "eval negative token" "out of range" $moekit eval --model "$tmp/tiny" --tokens -1,2
expect_fail "eval non-integer token" "'x' is not an integer" $moekit eval --model "$tmp/tiny" --tokens 1,x,3
expect_fail "eval one token" "at least 2" $moekit eval --model "$tmp/tiny" --tokens 5

cp -r "$tmp/tiny" "$tmp/badcfg"
python3 - "$tmp/badcfg/config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1])); c["num_experts_per_tok"] = 99; json.dump(c, open(sys.argv[1], "w"))
PY
expect_fail "config top-k > experts" "num_experts_per_tok" $moekit eval --model "$tmp/badcfg" --tokens 1,2

cp -r "$tmp/tiny" "$tmp/nocfg" && rm "$tmp/nocfg/config.json"
expect_fail "missing config.json" "config.json" $moekit eval --model "$tmp/nocfg" --tokens 1,2

cp -r "$tmp/tiny" "$tmp/missing"
$st drop "$tmp/missing/model.safetensors" model.layers.1.mlp.experts.3.up_proj.weight
expect_fail "missing tensor" "model.layers.1.mlp.experts.3.up_proj.weight" $moekit eval --model "$tmp/missing" --tokens 1,2

cp -r "$tmp/tiny" "$tmp/shape"
$st reshape "$tmp/shape/model.safetensors" model.norm.weight 32,2
expect_fail "misshapen tensor" "model.norm.weight" $moekit eval --model "$tmp/shape" --tokens 1,2

cp -r "$tmp/tiny" "$tmp/trunc"
$st truncate "$tmp/trunc/model.safetensors" 2
expect_fail "truncated safetensors" "model.safetensors" $moekit eval --model "$tmp/trunc" --tokens 1,2

mkdir -p "$tmp/taken" && touch "$tmp/taken/keep"
expect_fail "init into non-empty dir" "not empty" $moekit init --model "$src/configs/models/tiny-moe.yaml" --out "$tmp/taken"
[ "$(ls "$tmp/taken")" = "keep" ] && ok "non-empty dir untouched" || bad "non-empty dir untouched"
expect_fail "init bad --set key" "no_such_field" $moekit init --model "$src/configs/models/tiny-moe.yaml" --out "$tmp/x1" --set no_such_field=3
expect_fail "init bad --set value" "hidden_size" $moekit init --model "$src/configs/models/tiny-moe.yaml" --out "$tmp/x2" --set hidden_size=abc
expect_fail "init inconsistent config" "num_key_value_heads" $moekit init --model "$src/configs/models/tiny-moe.yaml" --out "$tmp/x3" --set num_key_value_heads=3
expect_fail "init bad dtype" "int3" $moekit init --model "$src/configs/models/tiny-moe.yaml" --out "$tmp/x4" --dtype int3
for d in x1 x2 x3 x4; do
  if ls "$tmp" | grep -q "^$d"; then bad "no partial output for $d"; else ok "no partial output for $d"; fi
done

finish
