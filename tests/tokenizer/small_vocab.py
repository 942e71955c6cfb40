#!/usr/bin/env python3
"""Train the tests' own small vocabulary (3000 tokens, Qwen2-style pipeline) with the `tokenizers`
package on every other document of the test corpus, up to ~1.5 MB, and write it as tokenizer.json, vocab.json +
merges.txt and a .tiktoken file (tokref.train_small_vocab). Exit 77 without `tokenizers`.
  small_vocab.py CORPUS.jsonl OUT_DIR
"""
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tokref as R  # noqa: E402

corpus, out = sys.argv[1], sys.argv[2]
R.need("tokenizers")
texts, size = [], 0
for t in R.read_corpus(corpus)[::2]:
    if size > 1_500_000:
        break
    texts.append(t)
    size += len(t.encode())
shutil.rmtree(out, ignore_errors=True)
n = R.train_small_vocab(texts, out)
print(f"small vocabulary: {n} tokens + 3 specials, trained on {len(texts)} documents ({size} bytes) -> {out}")
