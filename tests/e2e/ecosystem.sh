#!/usr/bin/env bash
# moekit's files in the tools around it (docs/ECOSYSTEM.md), each checked with the real tool where
# launch/setup-reference could install it, skipped with a message where not:
#  - train -> export keeps the HF source's generation_config.json byte for byte (eos list, pad id,
#    sampling defaults), config.json carries its pad id and the pinned transformers version, and
#    transformers reads them back;
#  - Megatron-Core's IndexedDatasetBuilder writes every integer token dtype and moekit reads the
#    same tokens; Megatron-Core reads moekit's files; data.eos_id auto takes the model's EOS;
#  - held-out documents too short for one window: a warning naming the numbers and the keys;
#  - SIGKILL right after a checkpoint, resume: TensorBoard holds every eval point exactly once;
#  - qkv_bias: false exports load right in transformers 4.45.2 (and 4.57.6 where its venv can run
#    models);
#  - llama.cpp's convert_hf_to_gguf.py turns an export into an f32 GGUF whose tensors equal the
#    export's, whose logits (llama-cpp-python runtime, when built) equal transformers' to 1e-5, and
#    refuses a model with dense layers, as `moekit export` warns.
#   ecosystem.sh MOEKIT_BINARY SOURCE_DIR
set -uo pipefail
moekit="$1"
src="$2"
py=/usr/bin/python3
cache="${MOEKIT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/moekit}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cd "$src"
source "$src/tests/e2e/lib/harness.bash"
has_tf=0
$py -c "import torch, transformers" 2>/dev/null && has_tf=1
[ $has_tf = 1 ] || echo "skip - torch/transformers not installed for $py (launch/setup-reference): transformers checks"

source "$src/tests/e2e/lib/train_env.bash"

# --- generation config: HF source -> training run -> export ---------------------------------
"$moekit" init --model configs/models/tiny-moe.yaml --out "$tmp/src" --dtype f32 >/dev/null 2>&1
cat >"$tmp/src/generation_config.json" <<'EOF'
{
  "bos_token_id": 1,
  "pad_token_id": 3,
  "do_sample": true,
  "eos_token_id": [2, 3],
  "repetition_penalty": 1.05,
  "top_p": 0.8,
  "transformers_version": "4.39.0.dev0"
}
EOF
train --config configs/train/tiny-moe.yaml --set run_dir="$tmp/gen" --set init_from="$tmp/src" --set train.steps=2 \
  >/dev/null 2>"$tmp/gen.log" || bad "train from an HF source: $(tail -3 "$tmp/gen.log")"
"$moekit" export --checkpoint "$tmp/gen" --out "$tmp/gen/hf" --dtype fp32 >"$tmp/gen_export.log" 2>&1
cmp -s "$tmp/src/generation_config.json" "$tmp/gen/hf/generation_config.json" &&
  grep -q "generation_config.json as the run's HF source had it" "$tmp/gen_export.log" &&
  ok "export keeps the source's generation_config.json byte for byte" || bad "generation_config.json carried"
if $py - "$tmp/gen/hf" "$has_tf" <<'PY'; then ok "config.json: pad id and transformers_version; transformers reads both files"; else bad "config.json / GenerationConfig"; fi
import json, sys
d, has_tf = sys.argv[1], sys.argv[2] == "1"
c = json.load(open(d + "/config.json"))
assert c["pad_token_id"] == 3 and c["transformers_version"] == "4.45.2", c
if has_tf:
    from transformers import AutoConfig, GenerationConfig
    g = GenerationConfig.from_pretrained(d)
    assert g.eos_token_id == [2, 3] and g.pad_token_id == 3 and g.top_p == 0.8 and g.do_sample, g
    assert AutoConfig.from_pretrained(d).pad_token_id == 3
PY

# --- Megatron-Core's indexed_dataset <-> moekit --------------------------------------------
mio="$src/tests/e2e/megatron_io.py"
$py "$mio" read /nonexistent >/dev/null 2>&1
if [ $? -eq 77 ]; then
  echo "skip - megatron-core not installed for $py (launch/setup-reference): Megatron-Core checks"
else
  # Megatron-Core writes one file per integer dtype (the largest id of each among the tokens) and
  # documents that already end with the model's EOS (Megatron's --append-eod; 7 here).
  $py - "$tmp" >"$tmp/jobs.json" <<'PY'
import json, random, sys
r, tmp = random.Random(5), sys.argv[1]
jobs = []
for dt, v in [("uint8", 256), ("int8", 128), ("int16", 32768), ("int32", 151936), ("int64", 151936), ("uint16", 65536)]:
    docs = [[r.randrange(v) for _ in range(r.randrange(1, 40))] + [v - 1] for _ in range(30)]
    jobs.append({"prefix": f"{tmp}/meg_{dt}", "dtype": dt, "vocab": v, "documents": docs})
jobs.append({"prefix": f"{tmp}/eod", "dtype": "int64", "vocab": 512,
             "documents": [[r.randrange(8, 512) for _ in range(r.randrange(50, 150))] + [7] for _ in range(80)]})
print(json.dumps(jobs))
PY
  $py "$mio" write "$tmp/jobs.json" || bad "Megatron-Core writes its files"
  for spec in uint8:256 int8:128 int16:32768 int32:151936 int64:151936 uint16:65536; do
    "$moekit" data inspect --json --vocab "${spec##*:}" --top 100000 "$tmp/meg_${spec%%:*}" \
      >"$tmp/meg_${spec%%:*}.json" 2>"$tmp/meg.log" || bad "moekit reads Megatron-Core's ${spec%%:*} file: $(tail -2 "$tmp/meg.log")"
  done
  "$moekit" data synth --out "$tmp/syn" --vocab 512 --tokens 20000 >/dev/null 2>&1
  "$moekit" data inspect --json --vocab 512 --top 100000 "$tmp/syn" >"$tmp/syn.json" 2>/dev/null
  $py "$mio" read "$tmp/syn" >"$tmp/syn_megatron.json"
  if $py - "$tmp" <<'PY'; then ok "Megatron-Core's uint8/int8/int16/int32/int64/uint16 files: moekit reads every token; Megatron-Core reads moekit's"; else bad "Megatron-Core <-> moekit tokens"; fi
import collections, json, sys
tmp = sys.argv[1]
def same(stats, dtype, docs):
    assert stats["files"][0]["dtype"] == dtype and stats["documents"] == len(docs), (dtype, stats["files"])
    assert stats["tokens"] == sum(map(len, docs)) and stats["doc_len"]["max"] == max(map(len, docs)), dtype
    assert {t["token"]: t["count"] for t in stats["top_tokens"]} == collections.Counter(t for d in docs for t in d), dtype
for job in json.load(open(tmp + "/jobs.json"))[:-1]:
    same(json.load(open(job["prefix"] + ".json")), job["dtype"], job["documents"])
m = json.load(open(tmp + "/syn_megatron.json"))
same(json.load(open(tmp + "/syn.json")), m["dtype"], m["documents"])
assert m["dtype"] == "uint16"
PY
  # data.eos_id auto takes the model's eos_token_id (7), which the documents already end with.
  sed 's/^eos_token_id: 0/eos_token_id: 7/' configs/models/tiny-moe.yaml >"$tmp/eos7.yaml"
  train --config configs/train/tiny-moe.yaml --set run_dir="$tmp/eod_run" --set model="$tmp/eos7.yaml" \
    --set "data.train=[$tmp/eod]" --set data.synth=false --set train.steps=2 >/dev/null 2>"$tmp/eod.log" &&
    grep -q "eos_id: 7" "$tmp/eod_run/config.resolved.yaml" && ok "train on Megatron-Core int64 data; eos_id auto = the model's 7" ||
    bad "train on Megatron-Core data: $(tail -3 "$tmp/eod.log")"
fi

# --- evaluation that cannot fill one window says so -----------------------------------------
out="$(train --config configs/train/tiny-dense.yaml --set run_dir="$tmp/noeval" --set train.steps=2 \
  --set train.seq_len=1000 --set train.micro_batch_size=1 --set train.global_batch_size=1 \
  --set data.valid_fraction=0.0001 2>"$tmp/noeval.log" | tail -n 1)"
grep -q "eval: off for this run: the 1 held-out document(s) hold" "$tmp/noeval.log" &&
  grep -q "fewer than one window of train.seq_len + 1 = 1001; raise data.valid_fraction (now 0.0001) or lower train.seq_len" \
    "$tmp/noeval.log" && grep -q '"eval_loss":null' <<<"$out" && ok "eval without a full held-out window: warned" ||
  bad "eval warning: $(grep -i eval "$tmp/noeval.log" | head -3) | $out"

# --- TensorBoard after SIGKILL right after a checkpoint -------------------------------------
tbrun="$tmp/tb"
tbset=(--config configs/train/tiny-moe.yaml --set run_dir="$tbrun" --set train.steps=20 --set train.eval_every=5
  --set checkpoint.every=5 --set train.log_every=5)
MOEKIT_DEBUG_KILL_STEP=10 train "${tbset[@]}" >/dev/null 2>&1
rc=$?
train "${tbset[@]}" --set resume=auto >/dev/null 2>"$tmp/tb.log" || bad "resume after SIGKILL: $(tail -3 "$tmp/tb.log")"
if [ $rc -ne 137 ]; then
  bad "SIGKILL after the step-10 checkpoint (rc=$rc)"
elif ! $py -c "import tensorboard" 2>/dev/null; then
  echo "skip - tensorboard not installed for $py (launch/setup-reference)"
elif $py - "$tbrun" <<'PY'; then ok "TensorBoard after SIGKILL + resume: every eval point exactly once"; else bad "TensorBoard after SIGKILL"; fi
import json, sys
import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
run = sys.argv[1]
ea = EventAccumulator(run + "/tb"); ea.Reload()
ev = ea.Scalars("eval/loss")
assert [e.step for e in ev] == [5, 10, 15, 20], [e.step for e in ev]
assert [e.step for e in ea.Scalars("train/loss")] == list(range(1, 21))
logged = [json.loads(l) for l in open(run + "/eval.jsonl")]
assert [r["step"] for r in logged] == [5, 10, 15, 20]
assert [e.value for e in ev] == [float(np.float32(r["loss"])) for r in logged]
PY

# --- qkv_bias: false exports in transformers ------------------------------------------------
toks=$($py -c "import random; r=random.Random(3); print(','.join(str(r.randrange(2, 512)) for _ in range(48)))")
venv_py="$cache/transformers-4.57.6/bin/python"
tf_new=0 has_new=0
if "$venv_py" -c "import transformers as t; assert t.__version__ == '4.57.6'" 2>/dev/null; then
  has_new=1
  "$venv_py" -c "import transformers.utils as u; assert u.is_torch_available()" 2>/dev/null && tf_new=1 ||
    echo "skip - transformers 4.57.6 models need PyTorch >= 2.1 (this Python has $($py -c 'import torch; print(torch.__version__)' 2>/dev/null)): its config classes only"
else
  echo "skip - no transformers 4.57.6 venv at $cache/transformers-4.57.6 (launch/setup-reference)"
fi
for kind in moe dense; do
  sed 's/^qkv_bias: true/qkv_bias: false/' "configs/models/tiny-$kind.yaml" >"$tmp/nobias-$kind.yaml"
  train --config "configs/train/tiny-$kind.yaml" --set run_dir="$tmp/nobias-$kind" --set model="$tmp/nobias-$kind.yaml" \
    --set train.steps=3 >/dev/null 2>"$tmp/nb.log" || bad "train qkv_bias false $kind: $(tail -2 "$tmp/nb.log")"
  "$moekit" export --checkpoint "$tmp/nobias-$kind" --out "$tmp/nobias-$kind/hf" --dtype fp32 >/dev/null 2>&1
  "$moekit" eval --model "$tmp/nobias-$kind/hf" --tokens "$toks" --logits-out "$tmp/nobias-$kind/logits.safetensors" \
    >/dev/null 2>&1 || bad "moekit eval of the qkv_bias false $kind export"
done
# Both exports in one transformers: it builds no weight at random (nothing missing) and its
# logits are moekit's; with only the config classes (4.57.6 on PyTorch 1.13), the config reads.
check='import sys, torch
from safetensors.torch import load_file
from transformers import AutoConfig, __version__
toks, full = sys.argv[1], sys.argv[2] == "1"
for hf in sys.argv[3:]:
    assert AutoConfig.from_pretrained(hf).qkv_bias is False
    if not full:
        continue
    from transformers import AutoModelForCausalLM
    m, info = AutoModelForCausalLM.from_pretrained(hf, torch_dtype=torch.float32, output_loading_info=True)
    assert info["missing_keys"] == [], (hf, info)
    with torch.no_grad():
        out = m.eval()(torch.tensor([[int(t) for t in toks.split(",")]])).logits[0]
    d = (out - load_file(hf + "/../logits.safetensors")["logits"]).abs().max().item()
    assert d < 1e-4, (hf, d)
    print(f"transformers {__version__}: {hf}: max |logit diff| {d:.2g}")'
nb=("$tmp/nobias-moe/hf" "$tmp/nobias-dense/hf")
if [ $has_tf = 1 ]; then
  $py -c "$check" "$toks" 1 "${nb[@]}" && ok "qkv_bias false MoE and dense exports: transformers 4.45.2 loads them, logits agree" ||
    bad "qkv_bias false exports in transformers 4.45.2"
fi
if [ $has_new = 1 ]; then
  "$venv_py" -c "$check" "$toks" $tf_new "${nb[@]}" 2>/dev/null &&
    ok "qkv_bias false MoE and dense exports: transformers 4.57.6 $([ $tf_new = 1 ] && echo "loads them, logits agree" || echo "reads the config")" ||
    bad "qkv_bias false exports in transformers 4.57.6"
fi

# --- llama.cpp: GGUF conversion, tensors, logits ----------------------------------------------
conv="$cache/llama.cpp-0.3.36"
gt="$src/tests/e2e/gguf_tools.py"
if [ ! -f "$conv/convert_hf_to_gguf.py" ] || [ $has_tf = 0 ]; then
  echo "skip - llama.cpp's converter not at $conv or no torch/transformers (launch/setup-reference): GGUF checks"
else
  hf="$tmp/tb/hf"
  "$moekit" export --checkpoint "$tbrun" --out "$hf" --dtype fp32 >/dev/null 2>&1
  $py "$gt" tokenizer "$hf" 512
  if $py "$gt" convert "$conv" "$hf" "$tmp/moe.gguf" >"$tmp/conv.log" 2>&1 &&
    $py "$gt" tensors "$conv" "$hf" "$tmp/moe.gguf" 2>>"$tmp/conv.log"; then
    ok "convert_hf_to_gguf.py: f32 GGUF tensors equal the export's"
  else
    bad "GGUF conversion: $(tail -3 "$tmp/conv.log")"
  fi
  llama_py="$cache/llama-cpp-python/bin/python"
  if "$llama_py" -c "import llama_cpp" 2>/dev/null; then
    "$llama_py" "$gt" logits "$hf" "$tmp/moe.gguf" "$toks" 1e-5 && ok "llama.cpp f32 GGUF logits = transformers' to 1e-5" ||
      bad "llama.cpp logits"
  else
    echo "skip - llama.cpp runtime not built at $cache/llama-cpp-python (launch/setup-reference builds it unless MOEKIT_REF_LLAMA_CPP=0): GGUF logits"
  fi
  # Dense layers: moekit export warns, and the converter indeed refuses them.
  sed 's/^mlp_only_layers: \[\]/mlp_only_layers: [1]/' configs/models/tiny-moe.yaml >"$tmp/mixed.yaml"
  train --config configs/train/tiny-moe.yaml --set run_dir="$tmp/mixed" --set model="$tmp/mixed.yaml" \
    --set train.steps=1 >/dev/null 2>&1
  "$moekit" export --checkpoint "$tmp/mixed" --out "$tmp/mixed/hf" --dtype fp32 >"$tmp/mixed.log" 2>&1
  $py "$gt" tokenizer "$tmp/mixed/hf" 512
  $py "$gt" convert "$conv" "$tmp/mixed/hf" "$tmp/mixed.gguf" >"$tmp/conv2.log" 2>&1
  rc=$?
  [ $rc -ne 0 ] && grep -q "Can not map tensor 'model.layers.1.mlp" "$tmp/conv2.log" &&
    grep -q "layer 1 is dense" "$tmp/mixed.log" && grep -q "cannot convert it to GGUF" "$tmp/mixed.log" &&
    ok "dense layers: export warns, llama.cpp's converter refuses" || bad "dense layers and GGUF (rc=$rc)"
fi

finish
