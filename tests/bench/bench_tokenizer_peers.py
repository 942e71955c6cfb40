#!/usr/bin/env python3
"""The peers of bench_tokenizer on the same corpus: tiktoken (Qwen's pattern and ranks) and HF
tokenizers (tokenizer.json), best of --repeat runs (wall and process CPU time), one JSON line per
(impl, threads).

tiktoken: encode(text, allowed_special="all") per document on one thread; with 2+ threads its
encode_batch (a thread pool; tiktoken releases the GIL). Its input is NFC-normalized before timing
(Qwen's tokenize() does that first; moekit's time includes its own NFC check).
HF tokenizers: encode_batch with RAYON_NUM_THREADS set per run (a fresh process per count, as
rayon reads it once), NFC included (it is in the tokenizer.json pipeline).
  bench_tokenizer_peers.py --tiktoken FILE --tokenizer-json FILE --corpus corpus.jsonl [--threads 1,2]
"""
import argparse
import json
import os
import subprocess
import sys
import time
import unicodedata

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tokenizer"))
import tokref as R  # noqa: E402


def best_of(repeat, f):
    """(best wall seconds, best process CPU seconds, the result)."""
    best, best_cpu, out = 1e30, 1e30, None
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        out = f()
        best = min(best, time.perf_counter() - t)
        best_cpu = min(best_cpu, time.process_time() - c)
    return best, best_cpu, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiktoken")
    ap.add_argument("--tokenizer-json")
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--hf-child", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    texts = R.read_corpus(a.corpus)
    nbytes = sum(len(t.encode()) for t in texts)
    threads = [int(t) for t in a.threads.split(",")]
    if a.hf_child:  # one HF thread count per process
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(a.tokenizer_json)
        s, cpu, out = best_of(a.repeat, lambda: tok.encode_batch(texts, add_special_tokens=False))
        n = sum(len(e.ids) for e in out)
        print(json.dumps({"impl": "HF tokenizers", "threads": a.hf_child, "tokens": n, "bytes": nbytes, "seconds": s,
                          "cpu_seconds": cpu, "tokens_per_s": n / s}))
        return
    if a.tiktoken:
        enc = R.tiktoken_encoding(a.tiktoken)
        nfc = [unicodedata.normalize("NFC", t) for t in texts]
        for th in threads:
            if th == 1:
                s, cpu, out = best_of(a.repeat, lambda: [enc.encode(t, allowed_special="all") for t in nfc])
            else:
                s, cpu, out = best_of(a.repeat, lambda: enc.encode_batch(nfc, num_threads=th, allowed_special="all"))
            n = sum(map(len, out))
            print(json.dumps({"impl": "tiktoken", "threads": th, "tokens": n, "bytes": nbytes, "seconds": s,
                              "cpu_seconds": cpu, "tokens_per_s": n / s}))
            sys.stdout.flush()
    if a.tokenizer_json:
        for th in threads:
            env = dict(os.environ, RAYON_NUM_THREADS=str(th), TOKENIZERS_PARALLELISM="true")
            out = subprocess.run([sys.executable, __file__, "--tokenizer-json", a.tokenizer_json, "--corpus", a.corpus,
                                  "--repeat", str(a.repeat), "--hf-child", str(th)], env=env, capture_output=True,
                                 text=True, check=True).stdout
            print(out.strip().split("\n")[-1])
            sys.stdout.flush()


if __name__ == "__main__":
    main()
