#!/usr/bin/env bash
# Tokenizer throughput of moekit against tiktoken and HF tokenizers, in the same run on the same
# corpus (tests/tokenizer/build_corpus.py), with Qwen's real vocabulary (qwen.tiktoken from
# launch/setup-reference; the HF side uses the tokenizer.json that `moekit data convert-tokenizer`
# generates from it, which transformers loads as Qwen2TokenizerFast). Then `moekit data tokenize`
# end to end on the corpus 8 times over (JSON lines in, Megatron .bin/.idx out; its CPU time
# includes loading the vocabulary).
# Wall time and tokens per CPU-second are both printed: on a machine whose cores other work
# shares, the second is what a core does. docs/PERF.md records the table.
#   tests/bench/run_tokenizer_bench.sh [BUILD_DIR] [--mb 4] [--threads 1,2] [--repeat 3]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
build="$root/build"
if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then build="$1"; shift; fi
mb=4 threads="1,2" repeat=3
while [ $# -gt 0 ]; do
  case "$1" in
    --mb) mb="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --repeat) repeat="$2"; shift 2 ;;
    *) echo "run_tokenizer_bench: unknown argument $1" >&2; exit 2 ;;
  esac
done
py=/usr/bin/python3
bench="$build/tests/bench_tokenizer"
[ -x "$bench" ] || { echo "run_tokenizer_bench: $bench not built (run launch/setup)" >&2; exit 1; }
vocab="$($py -c "import sys; sys.path.insert(0, '$root/tests/tokenizer'); import tokref; print(tokref.qwen_tiktoken_path() or '')")"
[ -n "$vocab" ] || { echo "run_tokenizer_bench: no qwen.tiktoken (run launch/setup-reference)" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 "$root/tests/tokenizer/build_corpus.py" "$work/corpus.jsonl" --mb "$mb" >"$work/corpus.json"
"$build/moekit" data convert-tokenizer --tokenizer "$vocab" --out "$work/hf" >/dev/null

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "corpus: $(cat "$work/corpus.json")"
{
  "$bench" --tokenizer "$vocab" --corpus "$work/corpus.jsonl" --threads "$threads" --repeat "$repeat" --json
  "$bench" --tokenizer "$work/hf" --corpus "$work/corpus.jsonl" --threads "$threads" --repeat "$repeat" --json |
    sed 's/"impl":"moekit"/"impl":"moekit (tokenizer.json)"/'
  $py "$root/tests/bench/bench_tokenizer_peers.py" --tiktoken "$vocab" --tokenizer-json "$work/hf/tokenizer.json" \
    --corpus "$work/corpus.jsonl" --threads "$threads" --repeat "$repeat"
  # End to end, the corpus given 8 times (28 MB, so that loading the vocabulary, 0.3 s, is a small
  # part), CPU time of the whole process from rusage.
  $py - "$build/moekit" "$vocab" "$work" "$threads" <<'PY'
import json, resource, subprocess, sys
moekit, vocab, work, threads = sys.argv[1:5]
for t in threads.split(","):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run([moekit, "data", "tokenize", "--tokenizer", vocab, "--input", *[f"{work}/corpus.jsonl"] * 8,
                          "--out", f"{work}/out{t}", "--threads", t, "--chunk-kb", "256", "--progress", "0"],
                         capture_output=True, text=True, check=True).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    s = json.loads(out.strip().split("\n")[-1])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(json.dumps({"impl": "moekit data tokenize (end to end)", "threads": s["threads"], "tokens": s["tokens"],
                      "bytes": s["bytes"], "seconds": s["seconds"], "cpu_seconds": cpu,
                      "tokens_per_s": s["tokens_per_s"]}))
PY
} >"$work/rows.jsonl"
$py - "$work/rows.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
tik = next(r for r in rows if r["impl"] == "tiktoken" and r["threads"] == 1)
base, base_cpu = tik["tokens_per_s"], tik["tokens"] / tik["cpu_seconds"]
print("wall: M tokens/s over the run; CPU: M tokens per CPU-second of the process (what one core does)")
print(f"| {'implementation':<36} | threads | wall M tok/s | MB/s | speed-up vs 1 thread | CPU M tok/s per core | "
      f"vs tiktoken per core |")
print(f"|{'-' * 38}|---------|--------------|------|----------------------|----------------------|"
      f"----------------------|")
one = {}
for r in rows:
    t = r["tokens_per_s"]
    one.setdefault(r["impl"], t)
    per_core = r["tokens"] / r["cpu_seconds"] if r.get("cpu_seconds") else None
    pc = f"{per_core / 1e6:>20.2f}" if per_core else f"{'':>20}"
    vs = f"{per_core / base_cpu:>19.2f}x" if per_core else f"{'':>20}"
    print(f"| {r['impl']:<36} | {r['threads']:>7} | {t / 1e6:>12.2f} | {r['bytes'] / r['seconds'] / 1e6:>4.1f} | "
          f"{t / one[r['impl']]:>19.2f}x | {pc} | {vs} |")
PY
