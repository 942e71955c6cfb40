"""llama.cpp side of tests/e2e/ecosystem.sh: its HF -> GGUF converter on a moekit export, and the
GGUF read back (tensors) or run (logits, with llama-cpp-python's runtime).

  gguf_tools.py tokenizer HF_DIR VOCAB          a byte-level BPE tokenizer of VOCAB ids for HF_DIR
  gguf_tools.py convert CONV_DIR HF_DIR OUT     convert_hf_to_gguf.py --outtype f32
  gguf_tools.py tensors CONV_DIR HF_DIR GGUF    every GGUF tensor equals the export's, bit for bit
  gguf_tools.py logits HF_DIR GGUF TOKENS TOL   llama.cpp's logits against transformers'

The tokenizer is trained here on a Debian licence text: the GGUF converter needs one, moekit's
exports of the tiny test models have none, and the logits below are of given token ids, so its
contents do not matter. Its pre-tokenizer is not one of the converter's known hashes (those are
of real vocabularies), so the converter is told it is Qwen2's.
"""
import json
import os
import runpy
import sys


def tokenizer(hf_dir, vocab):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab - 1, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    with open("/usr/share/common-licenses/GPL-3") as f:
        tok.train_from_iterator(f.read().splitlines(), trainer)
    tok.add_special_tokens(["<|endoftext|>"])
    assert tok.get_vocab_size() == vocab, tok.get_vocab_size()
    tok.save(os.path.join(hf_dir, "tokenizer.json"))
    with open(os.path.join(hf_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>",
                   "pad_token": "<|endoftext|>"}, f)


def converter_path(conv_dir):
    import torch

    # Debian bookworm's torch 1.13 predates the float8 and wide unsigned dtypes that the
    # converter's dtype table names; exports are f32/bf16/f16, so stand-ins for the missing names
    # are never looked up.
    for name in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "uint16", "uint32", "uint64"):
        if not hasattr(torch, name):
            setattr(torch, name, type(name, (), {})())
    sys.path.insert(0, conv_dir)
    sys.path.insert(1, os.path.join(conv_dir, "gguf-py"))


def convert(conv_dir, hf_dir, out):
    converter_path(conv_dir)
    import conversion.base as base

    base.TextModel.get_vocab_base_pre = lambda self, tok: "qwen2"
    script = os.path.join(conv_dir, "convert_hf_to_gguf.py")
    sys.argv = [script, hf_dir, "--outtype", "f32", "--outfile", out]
    runpy.run_path(script, run_name="__main__")


def tensors(conv_dir, hf_dir, path):
    converter_path(conv_dir)
    import re

    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    cfg = json.load(open(os.path.join(hf_dir, "config.json")))
    hf = load_file(os.path.join(hf_dir, "model.safetensors"))
    # Per-expert tensors are stacked into one 3-D tensor per layer and projection, as the
    # converter does.
    merged = {}
    for name, t in hf.items():
        m = re.match(r"(model\.layers\.\d+\.mlp\.experts)\.(\d+)\.(\w+)\.weight$", name)
        if m:
            merged.setdefault(f"{m.group(1)}.{m.group(3)}.weight", {})[int(m.group(2))] = t
        else:
            merged[name] = t
    for name, parts in list(merged.items()):
        if isinstance(parts, dict):
            merged[name] = np.stack([parts[e] for e in range(cfg["num_experts"])])
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2MOE, cfg["num_hidden_layers"])
    want = {names.get_name(n, try_suffixes=(".weight", ".bias")): t for n, t in merged.items()}
    assert None not in want, [n for n in merged if names.get_name(n, try_suffixes=(".weight", ".bias")) is None]
    reader = gguf.GGUFReader(path)
    got = {t.name: t for t in reader.tensors}
    assert set(got) == set(want), (sorted(set(got) ^ set(want)))
    for name, t in got.items():
        assert t.tensor_type == gguf.GGMLQuantizationType.F32, (name, t.tensor_type)
        a, b = np.asarray(t.data).reshape(-1), want[name].astype(np.float32).reshape(-1)
        assert a.shape == b.shape and np.array_equal(a, b), name
    kv = {f.name: f for f in reader.fields.values()}
    assert int(kv["qwen2moe.expert_count"].parts[-1][0]) == cfg["num_experts"]
    assert int(kv["qwen2moe.expert_used_count"].parts[-1][0]) == cfg["num_experts_per_tok"]
    print(f"{len(got)} GGUF tensors equal the export's bit for bit")


def logits(hf_dir, path, tokens, tol):
    import numpy as np
    import torch
    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM

    ids = [int(t) for t in tokens.split(",")]
    # An f32 KV cache (llama.cpp's default is f16, which alone moves logits by ~1e-4) and no flash
    # attention: the whole forward in f32, as transformers runs it.
    f32 = 0  # GGML_TYPE_F32
    llm = Llama(model_path=path, n_ctx=len(ids), n_batch=len(ids), n_threads=2, logits_all=True, verbose=False,
                type_k=f32, type_v=f32, flash_attn=False)
    llm.eval(ids)
    ours = np.asarray(llm.scores[: len(ids)], dtype=np.float64)
    m = AutoModelForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        ref = m(torch.tensor([ids])).logits[0].double().numpy()
    diff = float(np.abs(ours - ref).max())
    print(f"max |llama.cpp - transformers| logit difference {diff:.3g} over {len(ids)} tokens")
    assert diff <= float(tol), diff


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"tokenizer": lambda: tokenizer(args[0], int(args[1])),
     "convert": lambda: convert(*args),
     "tensors": lambda: tensors(*args),
     "logits": lambda: logits(*args)}[cmd]()
