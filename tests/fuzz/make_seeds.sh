#!/usr/bin/env bash
# Regenerates the seed corpora under tests/fuzz/corpus/ (committed; rerun when a format changes):
# small valid inputs of every kind each target reads, made by moekit's own writers and configs.
#   tests/fuzz/make_seeds.sh MOEKIT_BINARY CKPT_TOOL
set -euo pipefail
moekit="$1"
ckpt_tool="$2"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
out="$root/tests/fuzz/corpus"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cd "$root"
rm -rf "$out"
mkdir -p "$out"/{safetensors_header,index_json,config,indexed_dataset,llmc_shard,train_checkpoint}

# --- safetensors headers: files with several dtypes, an empty tensor, metadata; a tiny model ---
python3 - "$out/safetensors_header" <<'PY'
import json, struct, sys
def st(path, tensors, metadata=None):
    header, blobs, off = {}, [], 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, blob in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(blob)]}
        blobs.append(blob)
        off += len(blob)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    open(path, "wb").write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
d = sys.argv[1]
st(d + "/f32.safetensors", [("w", "F32", [2, 2], struct.pack("<4f", 1, 2, 3, 4))], {"format": "pt"})
st(d + "/mixed.safetensors", [("a", "BF16", [3], b"\x80\x3f" * 3), ("b", "I64", [1], struct.pack("<q", 7)),
                              ("c", "F16", [0], b""), ("d", "U8", [2, 1], b"\x01\x02")])
st(d + "/f8.safetensors", [("e", "F8_E4M3", [4], b"\x00\x38\x40\x48")], {"note": "x"})
st(d + "/empty.safetensors", [])
PY

# --- index json of the fuzzer's fixed shards (x in a.safetensors, y in b.safetensors) ----------
printf '{"metadata": {"total_size": 20}, "weight_map": {"x": "a.safetensors", "y": "b.safetensors"}}' \
  >"$out/index_json/valid.json"
printf '{"weight_map": {"y": "b.safetensors", "x": "a.safetensors"}}' >"$out/index_json/no_metadata.json"

# --- configs: selector byte then the text --------------------------------------------------------
n=0
seed() { printf "\\x$(printf %02x "$1")" >"$out/config/$2"; cat >>"$out/config/$2"; }
for f in tests/fixtures/*/config.json; do seed 0 "hf_$(basename "$(dirname "$f")").json" <"$f"; done
for f in configs/models/tiny-moe.yaml configs/models/tiny-dense.yaml configs/models/qwen1.5-moe-a2.7b.yaml; do
  seed 1 "model_$(basename "$f")" <"$f"
done
for f in configs/train/tiny-moe.yaml configs/train/tiny-dense.yaml; do seed 2 "run_$(basename "$f")" <"$f"; done
seed 3 recipe_tiny.yaml <configs/upcycle/tiny.yaml
for s in train.steps=5 optim.lr=1e-3 parallel.ep=2 data.train=[a,b] checkpoint.keep=0; do
  n=$((n + 1))
  printf '%s\n' "$s" | seed 4 "set_$n"
done

# --- a Megatron dataset: .idx, separator, .bin ---------------------------------------------------
"$moekit" data synth --out "$tmp/ds" --vocab 64 --tokens 300 --seed 3 >/dev/null 2>&1
{ cat "$tmp/ds.idx"; printf '\n--bin--\n'; cat "$tmp/ds.bin"; } >"$out/indexed_dataset/synth"

# --- llm.c shards: mode byte, then the shard (GPT-2: uint16 tokens; Llama-3: uint32) -------------
python3 - "$out/llmc_shard" <<'PY'
import struct, sys
def shard(path, mode, magic, version, fmt, tokens):
    header = struct.pack("<3i", magic, version, len(tokens)) + b"\0" * (256 * 4 - 12)
    open(path, "wb").write(bytes([mode]) + header + struct.pack("<%d%s" % (len(tokens), fmt), *tokens))
d = sys.argv[1]
shard(d + "/gpt2", 0, 20240520, 1, "H", [50256, 5, 6, 50256, 7, 8, 9])
shard(d + "/gpt2_whole", 1, 20240520, 1, "H", [1, 2, 3])
shard(d + "/llama3", 0, 20240801, 7, "I", [128000, 10, 11, 128000, 12])
PY

# --- a training checkpoint step: meta.json, config.resolved.yaml, manifest.json, rank_00000.h5 ---
"$ckpt_tool" sample "$tmp/ckpt"
step="$tmp/ckpt/step_00000004"
{ cat "$step/meta.json"; printf '\n--file--\n'; cat "$step/config.resolved.yaml"; printf '\n--file--\n'
  cat "$step/manifest.json"; printf '\n--file--\n'; cat "$step/rank_00000.h5"; } >"$out/train_checkpoint/sample"

du -sh "$out"/*
