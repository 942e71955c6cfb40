"""Shared helpers of the tokenizer tests (run with /usr/bin/python3, which has the reference tools).

Reference tokenizers built independently of moekit: tiktoken with Qwen's pattern and special
tokens (as tokenization_qwen.py builds it), HF tokenizers/transformers from the files; a reader of
Megatron .bin/.idx written from the format description (reliability-ecosystem.md 2.1), not from
moekit's code; a small byte-level BPE vocabulary trained with the `tokenizers` package; and a
test harness that counts checks and skips (exit 77) when a tool is missing.
"""
import base64
import json
import os
import struct
import subprocess
import sys
import time
import unicodedata

PAT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [f"<|extra_{i}|>" for i in range(205)]
SKIP = 77


class Checks:
    """ok/FAIL lines with the seconds each step took, then the tally (exit 1 on a failure)."""

    def __init__(self):
        self.passed = self.failed = 0
        self.t = time.time()

    def check(self, name, cond, detail=""):
        now = time.time()
        took = f"({now - self.t:.1f} s)"
        self.t = now
        if cond:
            self.passed += 1
            print(f"ok   - {name} {took}")
        else:
            self.failed += 1
            print(f"FAIL - {name} {took} {detail}")
        sys.stdout.flush()

    def finish(self):
        print(f"{self.passed} passed, {self.failed} failed")
        sys.exit(1 if self.failed else 0)


def need(*modules):
    """Import the reference modules or exit 77 (skip) naming the missing one."""
    out = []
    for m in modules:
        try:
            out.append(__import__(m))
        except Exception as e:  # noqa: BLE001 - any import failure means the tool is unusable
            print(f"SKIP: /usr/bin/python3 lacks {m} ({e}); launch/setup-reference installs it")
            sys.exit(SKIP)
    return out


def qwen_tiktoken_path():
    """The real vocabulary that launch/setup-reference fetches, or None."""
    p = os.environ.get("MOEKIT_QWEN_TIKTOKEN") or os.path.join(
        os.environ.get("MOEKIT_CACHE_DIR") or os.path.join(os.environ.get("XDG_CACHE_HOME") or
                                                           os.path.expanduser("~/.cache"), "moekit"), "qwen.tiktoken")
    return p if os.path.isfile(p) else None


def tiktoken_encoding(path):
    """tiktoken.Encoding for a .tiktoken file, specials numbered from the number of ranks."""
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe
    ranks = load_tiktoken_bpe(path)
    specials = {s: len(ranks) + i for i, s in enumerate(QWEN_SPECIALS)}
    return tiktoken.Encoding("moekit-ref", pat_str=PAT, mergeable_ranks=ranks, special_tokens=specials)


def tiktoken_ids(enc, text, nfc=True, special=True):
    """Qwen v1's tokenize(): NFC on the whole text, then tiktoken with every special allowed."""
    if nfc:
        text = unicodedata.normalize("NFC", text)
    return enc.encode(text, allowed_special="all") if special else enc.encode_ordinary(text)


def read_megatron(prefix):
    """Documents of a Megatron indexed dataset, parsed from the format description."""
    idx = open(prefix + ".idx", "rb").read()
    assert idx[:9] == b"MMIDIDX\x00\x00", "bad magic"
    version, = struct.unpack("<Q", idx[9:17])
    code = idx[17]
    s, d = struct.unpack("<QQ", idx[18:34])
    assert version == 1 and code in (4, 8), (version, code)
    item, fmt = (4, "i") if code == 4 else (2, "H")
    lengths = struct.unpack(f"<{s}i", idx[34:34 + 4 * s])
    pointers = struct.unpack(f"<{s}q", idx[34 + 4 * s:34 + 12 * s])
    doc_idx = struct.unpack(f"<{d}q", idx[34 + 12 * s:34 + 12 * s + 8 * d])
    assert len(idx) == 34 + 12 * s + 8 * d and list(doc_idx) == list(range(s + 1))
    binary = open(prefix + ".bin", "rb").read()
    docs = [list(struct.unpack(f"<{n}{fmt}", binary[p:p + n * item])) for p, n in zip(pointers, lengths)]
    assert sum(lengths) * item == len(binary)
    return docs, ("int32" if code == 4 else "uint16")


def read_corpus(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


def run(cmd, **kw):
    """Run a command; return (exit code, stdout, stderr)."""
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    return p.returncode, p.stdout, p.stderr


def moekit_tokenize(moekit, tokenizer, inputs, out, *extra):
    rc, out_text, err = run([moekit, "data", "tokenize", "--tokenizer", tokenizer, "--input", *inputs,
                             "--out", out, "--progress", "0", *extra])
    if rc != 0:
        raise RuntimeError(f"moekit data tokenize failed ({rc}): {err.strip()[-2000:]}")
    return json.loads(out_text.strip().split("\n")[-1])


def first_difference(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b)) if len(a) != len(b) else -1


def compare_docs(name, got, want, texts, checks, decode=None):
    """got/want: lists of id lists. One check; the first differing documents are printed."""
    bad = [i for i in range(max(len(got), len(want))) if i >= len(got) or i >= len(want) or got[i] != want[i]]
    detail = ""
    for i in bad[:3]:
        g = got[i] if i < len(got) else None
        w = want[i] if i < len(want) else None
        k = first_difference(g or [], w or [])
        show = (lambda ids: [decode(t) for t in ids]) if decode else (lambda ids: ids)
        detail += (f"\n    doc {i} {texts[i][:60]!r}: first difference at token {k}: "
                   f"moekit {show((g or [])[max(0, k - 2):k + 4])} reference {show((w or [])[max(0, k - 2):k + 4])}")
    n_tok = sum(len(w) for w in want)
    checks.check(f"{name}: {len(want)} documents, {n_tok} tokens id for id" if not bad else
                 f"{name}: {len(bad)} of {len(want)} documents differ", not bad and len(got) == len(want), detail)


def train_small_vocab(texts, out_dir, vocab_size=3000):
    """A Qwen2-style byte-level BPE (NFC, Qwen's pattern, ByteLevel) trained by `tokenizers` on
    `texts`, written in the three forms moekit reads: OUT/json/tokenizer.json (+ a
    tokenizer_config.json), OUT/vm/{vocab.json, merges.txt, tokenizer_config.json} and
    OUT/small.tiktoken (ranks = ids). Specials <|endoftext|>, <|im_start|>, <|im_end|> follow the
    regular ids, as in Qwen's files."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PAT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False, special_tokens=[])
    tok.train_from_iterator(texts, trainer)
    n = tok.get_vocab_size()
    tok.add_special_tokens(QWEN_SPECIALS[:3])
    for sub in ("json", "vm"):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    tok.save(os.path.join(out_dir, "json", "tokenizer.json"))
    model = json.load(open(os.path.join(out_dir, "json", "tokenizer.json"), encoding="utf-8"))["model"]
    vocab = model["vocab"]
    assert sorted(vocab.values()) == list(range(n)), "trained ids are not 0..n-1"
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    config = {"tokenizer_class": "Qwen2Tokenizer", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
              "unk_token": None, "bos_token": None, "errors": "replace", "clean_up_tokenization_spaces": False,
              "added_tokens_decoder": {str(n + i): {"content": s, "special": True, "lstrip": False, "rstrip": False,
                                                     "normalized": False, "single_word": False}
                                       for i, s in enumerate(QWEN_SPECIALS[:3])}}
    for sub in ("json", "vm"):
        json.dump(config, open(os.path.join(out_dir, sub, "tokenizer_config.json"), "w"), indent=1)
    json.dump(vocab, open(os.path.join(out_dir, "vm", "vocab.json"), "w", encoding="utf-8"), ensure_ascii=False)
    with open(os.path.join(out_dir, "vm", "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(m + "\n" for m in merges))
    # tiktoken form: the byte strings of the same tokens, rank = id.
    byte_of = byte_decoder()
    with open(os.path.join(out_dir, "small.tiktoken"), "w") as f:
        for token, i in sorted(vocab.items(), key=lambda kv: kv[1]):
            f.write(base64.b64encode(bytes(byte_of[c] for c in token)).decode() + f" {i}\n")
    return n


def byte_decoder():
    """GPT-2's bytes_to_unicode, inverted (unicode character -> byte)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}
