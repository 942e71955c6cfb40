#!/usr/bin/env python3
"""Megatron-Core reads what `moekit data tokenize` writes, and writes the same bytes.

  megatron_check.py --moekit BIN --corpus corpus.jsonl --work DIR

Two vocabularies made here (standard library only), so both token dtypes occur: 1,000 tokens
(uint16) and 70,000 tokens (int32, above Megatron's 65,500 threshold). For each, moekit tokenizes
the corpus; Megatron-Core's own IndexedDataset (PyPI megatron-core, megatron/core/datasets/
indexed_dataset.py) must open the files and return every document as an independent reader of the
format sees it, with the dtype Megatron's DType.optimal_dtype picks; Megatron-Core's
IndexedDatasetBuilder, given the same documents, must write byte-identical .bin and .idx files;
and moekit's own loader (data inspect) must agree on the counts. Exit 77 without megatron-core.

megatron-core 0.16 imports Megatron's training stack (torch >= 2.x) from megatron/core/__init__.py;
Debian's torch is older, so when that import fails the datasets package is loaded under stub
parent packages: the indexed_dataset module itself is Megatron's, unmodified.
"""
import argparse
import base64
import filecmp
import itertools
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tokref as R  # noqa: E402


def load_megatron():
    try:
        from megatron.core.datasets import indexed_dataset
        return indexed_dataset, "megatron.core"
    except Exception:  # noqa: BLE001 - fall back to the module alone
        pass
    # The module without megatron/core/__init__.py (it needs a newer PyTorch): the loader of
    # tests/e2e/megatron_io.py, which exits 77 (skip) without megatron-core.
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "e2e"))
    from megatron_io import load  # noqa: E402

    return load(), "its datasets module alone"


def write_vocab(path, size):
    """256 bytes, then byte pairs and triples of printable ASCII in a fixed order, ranks = order."""
    tokens = [bytes([b]) for b in range(256)]
    letters = [bytes([c]) for c in range(32, 127)]
    for n in itertools.count(2):
        for combo in itertools.product(letters, repeat=n):
            if len(tokens) >= size:
                break
            tokens.append(b"".join(combo))
        if len(tokens) >= size:
            break
    with open(path, "w") as f:
        for r, t in enumerate(tokens):
            f.write(base64.b64encode(t).decode() + f" {r}\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--moekit", required=True)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--work", required=True)
    a = ap.parse_args()
    R.need("numpy", "torch")
    import numpy
    import torch
    idx_mod, how = load_megatron()
    shutil.rmtree(a.work, ignore_errors=True)
    os.makedirs(a.work)
    c = R.Checks()
    print(f"Megatron-Core indexed_dataset from {idx_mod.__file__} (imported via {how})")
    for size, dtype in ((1000, "uint16"), (70000, "int32")):
        vocab = os.path.join(a.work, f"v{size}.tiktoken")
        write_vocab(vocab, size)
        prefix = os.path.join(a.work, f"corpus_v{size}")
        out = R.moekit_tokenize(a.moekit, vocab, [a.corpus], prefix)
        mine, mine_dtype = R.read_megatron(prefix)
        c.check(f"vocab {size}: moekit wrote {dtype} ({out['documents']} documents, {out['tokens']} tokens)",
                mine_dtype == dtype and out["dtype"] == dtype and len(mine) == out["documents"])
        want_dtype = idx_mod.DType.optimal_dtype(size + len(R.QWEN_SPECIALS))
        ds = idx_mod.IndexedDataset(prefix)
        c.check(f"vocab {size}: Megatron-Core opens it, dtype {ds.index.dtype.__name__} = DType.optimal_dtype",
                ds.index.dtype == want_dtype and len(ds) == len(mine) and
                ds.document_indices.tolist() == list(range(len(mine) + 1)))
        same = all(ds[i].tolist() == mine[i] for i in range(len(mine)))
        c.check(f"vocab {size}: every document read by Megatron-Core equals the independent reader's", same)
        c.check(f"vocab {size}: sequence_lengths", ds.sequence_lengths.tolist() == [len(d) for d in mine])
        # Megatron-Core's writer, fed the same documents, writes the same bytes.
        ref = os.path.join(a.work, f"megatron_v{size}")
        builder = idx_mod.IndexedDatasetBuilder(ref + ".bin", dtype=want_dtype)
        for d in mine:
            builder.add_document(torch.tensor(numpy.array(d, dtype=numpy.int64)), [len(d)])
        builder.finalize(ref + ".idx")
        c.check(f"vocab {size}: byte-identical to Megatron-Core's IndexedDatasetBuilder",
                filecmp.cmp(ref + ".bin", prefix + ".bin", shallow=False) and
                filecmp.cmp(ref + ".idx", prefix + ".idx", shallow=False))
        rc, ins, err = R.run([a.moekit, "data", "inspect", prefix, "--json", "--vocab", str(out["vocab_size"])])
        info = json.loads(ins.strip().split("\n")[-1]) if rc == 0 else {}
        c.check(f"vocab {size}: moekit's loader reads it back (data inspect)",
                info.get("documents") == len(mine) and info.get("tokens") == sum(map(len, mine)), err)
    c.finish()


if __name__ == "__main__":
    main()
