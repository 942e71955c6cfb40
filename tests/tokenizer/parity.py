#!/usr/bin/env python3
"""Id-for-id parity of `moekit data tokenize` with the reference tokenizers on the test corpus.

  parity.py --moekit BIN --corpus corpus.jsonl --work DIR --vocab small --small DIR
  parity.py --moekit BIN --corpus corpus.jsonl --work DIR --vocab qwen      (the real qwen.tiktoken)

For the vocabulary in each of its forms, moekit's output (read back with an independent
Megatron reader) must equal, document by document and with the EOS appended:
  - the .tiktoken file: tiktoken with Qwen's pattern and special tokens, after NFC (Qwen v1's
    tokenize()); with --normalize none, tiktoken on the raw text; with --special-tokens text,
    tiktoken's encode_ordinary; with --format text and small chunks (documents cut inside), the
    same ids per file;
  - tokenizer.json: transformers' Qwen2TokenizerFast (HF tokenizers' pipeline);
  - vocab.json + merges.txt: transformers' AutoTokenizer (slow files converted to fast).
Also: moekit data decode gives the (NFC) text back exactly, and the output bytes are the same for
1 and 2 threads and any chunk size. For the real vocabulary the HF files are the ones moekit
generates (data convert-tokenizer), so this also checks that AutoTokenizer loads them and encodes
like tiktoken, and the transformers docstring vectors ("Hello world" -> [9707, 1879]).
Exit 77 (skip) without tiktoken/tokenizers/transformers or, for --vocab qwen, without the file.
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
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--vocab", choices=["small", "qwen"], required=True)
    ap.add_argument("--small", help="directory written by small_vocab.py")
    a = ap.parse_args()
    R.need("tiktoken", "tokenizers", "transformers")
    from transformers import AutoTokenizer, Qwen2TokenizerFast

    shutil.rmtree(a.work, ignore_errors=True)
    os.makedirs(a.work)
    c = R.Checks()
    texts = R.read_corpus(a.corpus)
    print(f"corpus: {len(texts)} documents, {sum(len(t.encode()) for t in texts)} bytes")
    w = lambda *p: os.path.join(a.work, *p)  # noqa: E731

    if a.vocab == "qwen":
        tik_file = R.qwen_tiktoken_path()
        if tik_file is None:
            print("SKIP: no qwen.tiktoken (launch/setup-reference fetches it from the dashscope wheel)")
            sys.exit(R.SKIP)
        rc, _, err = R.run([a.moekit, "data", "convert-tokenizer", "--tokenizer", tik_file, "--out", w("hf")])
        c.check("data convert-tokenizer writes HF files from qwen.tiktoken", rc == 0, err)
        json_dir = w("hf")
        os.makedirs(w("vm"))
        for f in ("vocab.json", "merges.txt", "tokenizer_config.json"):
            shutil.copy(w("hf", f), w("vm", f))
        vm_dir = w("vm")
    else:
        if not a.small or not os.path.isfile(os.path.join(a.small, "small.tiktoken")):
            print("SKIP: the small vocabulary was not trained (tokenizer.small_vocab skipped)")
            sys.exit(R.SKIP)
        tik_file = os.path.join(a.small, "small.tiktoken")
        json_dir, vm_dir = os.path.join(a.small, "json"), os.path.join(a.small, "vm")

    enc = R.tiktoken_encoding(tik_file)
    eot = enc.encode_single_token("<|endoftext|>")
    show = lambda t: enc.decode_single_token_bytes(t) if t < enc.n_vocab else t  # noqa: E731

    # --- the .tiktoken file against tiktoken --------------------------------------------
    out = R.moekit_tokenize(a.moekit, tik_file, [a.corpus], w("tik"), "--threads", "2")
    got, dtype = R.read_megatron(w("tik"))
    ref = [R.tiktoken_ids(enc, t) + [eot] for t in texts]
    R.compare_docs(".tiktoken file vs tiktoken", got, ref, texts, c, show)
    c.check(f"dtype {dtype} for {enc.n_vocab} ids (Megatron: uint16 below 65500)",
            dtype == ("uint16" if enc.n_vocab < 65500 else "int32"))
    c.check("summary line counts documents and tokens",
            out["documents"] == len(texts) and out["tokens"] == sum(map(len, ref)) and out["eos_id"] == eot, out)
    small = a.vocab == "small"  # the options below do not depend on the vocabulary: checked once
    if small:
        R.moekit_tokenize(a.moekit, tik_file, [a.corpus], w("tik_raw"), "--normalize", "none")
        R.compare_docs("--normalize none vs tiktoken on the raw text", R.read_megatron(w("tik_raw"))[0],
                       [R.tiktoken_ids(enc, t, nfc=False) + [eot] for t in texts], texts, c, show)
        R.moekit_tokenize(a.moekit, tik_file, [a.corpus], w("tik_ord"), "--special-tokens", "text", "--no-eos")
        R.compare_docs("--special-tokens text --no-eos vs tiktoken encode_ordinary", R.read_megatron(w("tik_ord"))[0],
                       [R.tiktoken_ids(enc, t, special=False) for t in texts], texts, c, show)

    # --- one document per file, cut into 4 KB chunks inside documents ----------------------
    os.makedirs(w("txt"))
    for i, t in enumerate(texts):
        with open(w("txt", f"doc{i:04d}.txt"), "w", encoding="utf-8", newline="") as f:
            f.write(t)
    R.moekit_tokenize(a.moekit, tik_file, [w("txt", "doc*.txt")], w("tik_text"), "--format", "text",
                      "--chunk-kb", "4", "--threads", "2")
    R.compare_docs(f"--format text, 4 KB chunks ({sum(len(t.encode()) > 4000 for t in texts)} documents cut)",
                   R.read_megatron(w("tik_text"))[0], ref, texts, c, show)

    # --- round trip through moekit data decode -----------------------------------------
    rc, dec, err = R.run([a.moekit, "data", "decode", "--tokenizer", tik_file, w("tik")])
    decoded = [json.loads(line)["text"] for line in dec.split("\n") if line] if rc == 0 else []
    want = [unicodedata.normalize("NFC", t) + "<|endoftext|>" for t in texts]
    bad = [i for i in range(len(want)) if i >= len(decoded) or decoded[i] != want[i]]
    c.check(f"decode(encode(x)) == NFC(x) for all {len(want)} documents", rc == 0 and not bad,
            err + "".join(f"\n    doc {i}: {texts[i][:60]!r}" for i in bad[:3]))

    # --- tokenizer.json against HF tokenizers and transformers ---------------------------
    out = R.moekit_tokenize(a.moekit, json_dir, [a.corpus], w("json"))
    got = R.read_megatron(w("json"))[0]
    hf_eot = out["eos_id"]
    # transformers' Qwen2TokenizerFast runs HF tokenizers' Rust pipeline from tokenizer.json.
    fast = (Qwen2TokenizerFast(tokenizer_file=os.path.join(json_dir, "tokenizer.json")) if small
            else AutoTokenizer.from_pretrained(json_dir))
    c.check(f"transformers loads {json_dir}: {type(fast).__name__}, {len(fast)} ids, <|endoftext|> = {hf_eot}",
            type(fast).__name__ == "Qwen2TokenizerFast" and len(fast) == out["vocab_size"] and
            fast.convert_tokens_to_ids("<|endoftext|>") == hf_eot)
    R.compare_docs("tokenizer.json vs transformers Qwen2TokenizerFast (HF tokenizers)", got,
                   [ids + [hf_eot] for ids in fast(texts)["input_ids"]], texts, c, show)
    for threads, chunk in (("1", "32"), ("2", "32"), ("2", "200")) if small else ():
        R.moekit_tokenize(a.moekit, json_dir, [a.corpus], w(f"json_{threads}_{chunk}"), "--threads", threads,
                          "--chunk-kb", chunk)
        same = all(filecmp.cmp(w("json") + ext, w(f"json_{threads}_{chunk}") + ext, shallow=False)
                   for ext in (".bin", ".idx"))
        c.check(f"same bytes with --threads {threads} --chunk-kb {chunk}", same)

    # --- vocab.json + merges.txt against AutoTokenizer (slow files -> fast) --------------
    # (For Qwen's vocabulary every third document: these files back up tokenizer.json, which
    # transformers prefers, and the slow-to-fast conversion of 151k merges is the slow part.)
    sub = texts if small else texts[::3]
    with open(w("vm.jsonl"), "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in sub)
    auto = AutoTokenizer.from_pretrained(vm_dir)
    R.moekit_tokenize(a.moekit, os.path.join(vm_dir, "vocab.json"), [w("vm.jsonl")], w("vm"))
    R.compare_docs(f"vocab.json + merges.txt vs AutoTokenizer ({type(auto).__name__})", R.read_megatron(w("vm"))[0],
                   [ids + [auto.convert_tokens_to_ids("<|endoftext|>")] for ids in auto(sub)["input_ids"]],
                   sub, c, show)

    if not small:
        R.compare_docs("generated tokenizer.json (transformers) vs tiktoken", got, ref, texts, c, show)
        # transformers' Qwen2Tokenizer docstring vectors (reliability-ecosystem.md 2.6).
        with open(w("vectors.jsonl"), "w") as f:
            f.write(json.dumps({"text": "Hello world"}) + "\n" + json.dumps({"text": " Hello world"}) + "\n")
        R.moekit_tokenize(a.moekit, tik_file, [w("vectors.jsonl")], w("vectors"), "--no-eos")
        vec = R.read_megatron(w("vectors"))[0]
        c.check("\"Hello world\" -> [9707, 1879], \" Hello world\" -> [21927, 1879]",
                vec == [[9707, 1879], [21927, 1879]], vec)
    c.finish()


if __name__ == "__main__":
    main()
