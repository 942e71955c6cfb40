#!/usr/bin/env python3
"""Exports carry their source's tokenizer, and AutoTokenizer.from_pretrained(export) loads it.

  export_check.py --moekit BIN --source SOURCE_DIR --work DIR --small SMALL_VOCAB_DIR --corpus C

With the tests' small vocabulary (small_vocab.py) as a Qwen v1 directory (qwen.tiktoken plus v1's
remote-code tokenizer_config.json and tokenization_qwen.py) and as a Qwen2 one (tokenizer.json +
tokenizer_config.json):
  - moekit upcycle from the v1 directory writes qwen.tiktoken and generated HF files, leaves the
    remote-code files behind, and AutoTokenizer loads the result as Qwen2TokenizerFast, encoding
    corpus documents exactly as tiktoken (after NFC) does;
  - moekit upcycle from the Qwen2 directory copies its files byte for byte;
  - moekit export of a run initialised from the v1 directory carries the tokenizer too
    (found through the run's config.resolved.yaml), --tokenizer overrides it, and a run without a
    tokenizer source exports none and says so.
Exit 77 without tiktoken/transformers or the small vocabulary.
"""
import argparse
import filecmp
import json
import os
import shutil
import sys
import unicodedata

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tokref as R  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--moekit", required=True)
    ap.add_argument("--source", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--small", required=True)
    ap.add_argument("--corpus", required=True)
    a = ap.parse_args()
    R.need("tiktoken", "tokenizers", "transformers")
    from transformers import AutoTokenizer
    if not os.path.isfile(os.path.join(a.small, "small.tiktoken")):
        print("SKIP: the small vocabulary was not trained (tokenizer.small_vocab skipped)")
        sys.exit(R.SKIP)
    shutil.rmtree(a.work, ignore_errors=True)
    os.makedirs(a.work)
    w = lambda *p: os.path.join(a.work, *p)  # noqa: E731
    c = R.Checks()
    texts = R.read_corpus(a.corpus)[::8]
    enc = R.tiktoken_encoding(os.path.join(a.small, "small.tiktoken"))
    moekit = a.moekit
    model_cfg = os.path.join(a.source, "configs", "models", "tiny-dense.yaml")
    recipe = os.path.join(a.source, "configs", "upcycle", "tiny.yaml")

    def must(cmd, what):
        rc, out, err = R.run(cmd, cwd=a.source)
        if rc != 0:
            c.check(what, False, err[-1500:])
            c.finish()
        return out

    # Dense sources: a Qwen v1 directory and a Qwen2 one, same weights.
    for name in ("dense_v1", "dense_hf"):
        must([moekit, "init", "--model", model_cfg, "--out", w(name), "--seed", "3"], f"init {name}")
    shutil.copy(os.path.join(a.small, "small.tiktoken"), w("dense_v1", "qwen.tiktoken"))
    json.dump({"tokenizer_class": "QWenTokenizer",
               "auto_map": {"AutoTokenizer": ["tokenization_qwen.QWenTokenizer", None]}},
              open(w("dense_v1", "tokenizer_config.json"), "w"))
    open(w("dense_v1", "tokenization_qwen.py"), "w").write("# Qwen v1 remote code (a stand-in)\n")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(a.small, "json", f), w("dense_hf", f))

    def loads_like(d, what, hf_source=None):
        """AutoTokenizer on the export encodes like the source: tiktoken for a v1 source, the
        source's own tokenizer.json (HF tokenizers) for a Qwen2 one."""
        tok = AutoTokenizer.from_pretrained(d)
        got = tok(texts)["input_ids"]
        if hf_source:
            from tokenizers import Tokenizer
            want = [e.ids for e in Tokenizer.from_file(hf_source).encode_batch(texts)]
        else:
            want = [R.tiktoken_ids(enc, t) for t in texts]
        c.check(f"{what}: AutoTokenizer loads {type(tok).__name__} and encodes {len(texts)} documents as "
                f"{'the source tokenizer.json' if hf_source else 'tiktoken'}",
                type(tok).__name__ == "Qwen2TokenizerFast" and got == want)

    # --- upcycle ----------------------------------------------------------------------------
    must([moekit, "upcycle", "--config", recipe, "--dense", w("dense_v1"), "--out", w("moe_v1")], "upcycle v1")
    files = sorted(os.listdir(w("moe_v1")))
    c.check(f"upcycle from Qwen v1: qwen.tiktoken + generated HF files, no remote code ({files})",
            {"qwen.tiktoken", "tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json"} <= set(files)
            and "tokenization_qwen.py" not in files and
            json.load(open(w("moe_v1", "tokenizer_config.json")))["tokenizer_class"] == "Qwen2Tokenizer")
    loads_like(w("moe_v1"), "upcycle from Qwen v1")
    must([moekit, "upcycle", "--config", recipe, "--dense", w("dense_hf"), "--out", w("moe_hf")], "upcycle hf")
    c.check("upcycle from Qwen2 files: tokenizer.json and tokenizer_config.json copied byte for byte",
            all(filecmp.cmp(w("dense_hf", f), w("moe_hf", f), shallow=False)
                for f in ("tokenizer.json", "tokenizer_config.json")))
    loads_like(w("moe_hf"), "upcycle from Qwen2 files", w("dense_hf", "tokenizer.json"))

    # --- export of a run initialised from the v1 directory ----------------------------------
    train = [moekit, "train", "--config", os.path.join(a.source, "configs", "train", "tiny-dense.yaml"),
             "--set", f"data.train=[{w('data', 'synth')}]", "--set", "data.synth_tokens=20000",
             "--set", "train.steps=1", "--set", "train.eval_every=0", "--set", "checkpoint.every=0"]
    must(train + ["--set", f"run_dir={w('run_v1')}", "--set", f"model={w('dense_v1')}",
                  "--set", f"init_from={w('dense_v1')}"], "train from v1")
    out = must([moekit, "export", "--checkpoint", w("run_v1"), "--out", w("export_v1")], "export v1")
    c.check("export finds the tokenizer through the run's init_from", "HF files generated" in out, out[-400:])
    loads_like(w("export_v1"), "export")
    must([moekit, "export", "--checkpoint", w("run_v1"), "--out", w("export_override"), "--tokenizer",
          os.path.join(a.small, "json")], "export --tokenizer")
    c.check("export --tokenizer DIR carries that directory's files",
            filecmp.cmp(os.path.join(a.small, "json", "tokenizer.json"), w("export_override", "tokenizer.json"),
                        shallow=False) and not os.path.exists(w("export_override", "qwen.tiktoken")))
    must(train + ["--set", f"run_dir={w('run_plain')}"], "train without a tokenizer")
    out = must([moekit, "export", "--checkpoint", w("run_plain"), "--out", w("export_plain")], "export plain")
    c.check("a run without a tokenizer source exports none and says so",
            "no tokenizer" in out and not os.path.exists(w("export_plain", "tokenizer.json")), out[-400:])
    c.finish()


if __name__ == "__main__":
    main()
