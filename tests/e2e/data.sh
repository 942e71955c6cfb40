#!/usr/bin/env bash
# Command-line tests of `moekit data`: synth -> inspect round trip (JSON sanity, determinism),
# llm.c shards, and bad input (every case must exit non-zero with a message naming the file,
# field or value, and leave no partial output).
#   data.sh MOEKIT_BINARY SOURCE_DIR
set -uo pipefail
moekit="$1"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
source "$2/tests/e2e/lib/harness.bash"

for sub in "data" "data synth" "data inspect"; do
  if $moekit $sub --help >/dev/null 2>&1; then ok "help $sub"; else bad "help $sub"; fi
done
expect_fail "data without a subcommand" "subcommand" $moekit data

# --- synth -> inspect ------------------------------------------------------------------------
out="$($moekit data synth --out "$tmp/a" --vocab 512 --tokens 50000 --seed 3)"
rc=$?
[ $rc -eq 0 ] && ok "synth" || bad "synth (rc=$rc)"
for f in a.bin a.idx a.synth.json; do
  [ -f "$tmp/$f" ] && ok "synth wrote $f" || bad "synth wrote $f"
done
synth_json="$(tail -n 1 <<<"$out")"
if python3 - "$synth_json" <<'PY'; then ok "synth json: counts and entropy ordering"; else bad "synth json: $synth_json"; fi
import json, math, sys
s = json.loads(sys.argv[1])
assert s["tokens"] >= 50000 and s["documents"] > 10, s
assert abs(s["log_vocab_nats"] - math.log(512)) < 1e-9, s
assert 0.5 < s["entropy_bound_nats"] < s["bigram_entropy_nats"] < s["unigram_entropy_nats"] < s["log_vocab_nats"], s
PY

$moekit data synth --out "$tmp/b" --vocab 512 --tokens 50000 --seed 3 >/dev/null
cmp -s "$tmp/a.bin" "$tmp/b.bin" && cmp -s "$tmp/a.idx" "$tmp/b.idx" && ok "same seed, same bytes" || bad "same seed, same bytes"
$moekit data synth --out "$tmp/c" --vocab 512 --tokens 50000 --seed 4 >/dev/null
cmp -s "$tmp/a.bin" "$tmp/c.bin" && bad "other seed, other bytes" || ok "other seed, other bytes"

ins="$($moekit data inspect "$tmp/a" --json)"
if python3 - "$ins" "$synth_json" <<'PY'; then ok "inspect json"; else bad "inspect json: $ins"; fi
import json, sys
r = json.loads(sys.argv[1]); s = json.loads(sys.argv[2])
assert r["documents"] == s["documents"] and r["tokens"] == s["tokens"], (r, s)
assert r["doc_len"]["min"] == s["min_doc_len"] and r["doc_len"]["max"] == s["max_doc_len"], r
assert r["doc_len"]["min"] <= r["doc_len"]["mean"] <= r["doc_len"]["max"], r
assert sum(b["count"] for b in r["length_histogram"]) + r["empty_documents"] == r["documents"], r
assert len(r["top_tokens"]) == 10 and r["top_tokens"][0]["count"] >= r["top_tokens"][-1]["count"], r
assert r["vocab_size"] == 512 and 0 < r["vocab_coverage"] <= 1 and r["max_token_id"] < 512, r
assert r["files"][0]["format"] == "megatron" and r["files"][0]["dtype"] == "uint16", r
assert r["synth"]["stats"]["entropy_bound_nats"] == s["entropy_bound_nats"], r
PY
txt="$($moekit data inspect "$tmp/a.idx")"
grep -q "^documents: " <<<"$txt" && grep -q "entropy bound" <<<"$txt" && ok "inspect text" || bad "inspect text: $txt"
# A sidecar whose fields have other types than moekit writes: reported around, never a type error
# naming no file (nlohmann's value() threw one), and out-of-range numbers name the file and key.
cp "$tmp/a.idx" "$tmp/b.idx" && cp "$tmp/a.bin" "$tmp/b.bin"
printf '{"config": {"vocab_size": 1000000}, "stats": {"entropy_bound_nats": "low", "log_vocab_nats": null}}' >"$tmp/b.synth.json"
$moekit data inspect "$tmp/b" >/dev/null 2>"$tmp/b.err" && ok "inspect: sidecar with odd field types" ||
  bad "inspect: sidecar with odd field types: $(cat "$tmp/b.err")"
printf '{"config": {"vocab_size": 1e400}}' >"$tmp/b.synth.json"
expect_fail "inspect: sidecar with 1e400" "b.synth.json" $moekit data inspect "$tmp/b"
printf '{"config": {"vocab_size": 18446744073709551615}}' >"$tmp/b.synth.json"
expect_fail "inspect: sidecar with a vocab past 2^31" "config.vocab_size" $moekit data inspect "$tmp/b"
two="$($moekit data inspect "$tmp/a" "$tmp/c" --json)"
python3 -c "import json,sys; r=json.loads(sys.argv[1]); assert len(r['files'])==2 and r['vocab_size'] is None" "$two" &&
  ok "inspect two prefixes" || bad "inspect two prefixes: $two"

# --- llm.c shards --------------------------------------------------------------------------
python3 - "$tmp" <<'PY'
import struct, sys
d = sys.argv[1]
def shard(path, magic, version, toks, fmt, count=None):
    h = [0] * 256
    h[0], h[1], h[2] = magic, version, len(toks) if count is None else count
    open(path, "wb").write(struct.pack("<256i", *h) + struct.pack("<%d%s" % (len(toks), fmt), *toks))
shard(d + "/gpt2.bin", 20240520, 1, [50256, 1, 2, 3, 50256, 4, 5], "H")
shard(d + "/llama.bin", 20240801, 7, [128000, 100000, 128000, 7], "I")
shard(d + "/short.bin", 20240520, 1, [50256, 1, 2], "H", count=5)
shard(d + "/ver.bin", 20240520, 3, [1], "H")
PY
r="$($moekit data inspect "$tmp/gpt2.bin" --json)"
python3 -c "import json,sys; r=json.loads(sys.argv[1]); assert r['documents']==2 and r['tokens']==7 and r['files'][0]['format']=='llmc', r" "$r" &&
  ok "inspect llm.c gpt2 shard" || bad "inspect llm.c gpt2 shard: $r"
r="$($moekit data inspect "$tmp/llama.bin" --json)"
python3 -c "import json,sys; r=json.loads(sys.argv[1]); assert r['documents']==2 and r['max_token_id']==128000 and r['files'][0]['dtype']=='uint32', r" "$r" &&
  ok "inspect llm.c uint32 shard" || bad "inspect llm.c uint32 shard: $r"
expect_fail "llm.c size mismatch" "$tmp/short.bin: size 1030 bytes" $moekit data inspect "$tmp/short.bin"
expect_fail "llm.c bad version" "version 3, expected 1" $moekit data inspect "$tmp/ver.bin"

# --- bad input ---------------------------------------------------------------------------
expect_fail "inspect missing dataset" "$tmp/nope: no such dataset" $moekit data inspect "$tmp/nope"
cp "$tmp/a.idx" "$tmp/m.idx" && cp "$tmp/a.bin" "$tmp/m.bin"
printf 'X' | dd of="$tmp/m.idx" bs=1 seek=0 conv=notrunc status=none
expect_fail "corrupted idx magic" "$tmp/m.idx: bad magic" $moekit data inspect "$tmp/m"
cp "$tmp/a.idx" "$tmp/t.idx" && cp "$tmp/a.bin" "$tmp/t.bin" && truncate -s 20 "$tmp/t.idx"
expect_fail "truncated idx" "$tmp/t.idx: truncated" $moekit data inspect "$tmp/t"
cp "$tmp/a.idx" "$tmp/s.idx" && cp "$tmp/a.bin" "$tmp/s.bin" && truncate -s -1 "$tmp/s.idx"
expect_fail "idx size mismatch" "does not match the header" $moekit data inspect "$tmp/s"
cp "$tmp/a.idx" "$tmp/v.idx" && cp "$tmp/a.bin" "$tmp/v.bin" && printf '\x09' | dd of="$tmp/v.idx" bs=1 seek=9 conv=notrunc status=none
expect_fail "idx bad version" "version is 9" $moekit data inspect "$tmp/v"
cp "$tmp/a.idx" "$tmp/d.idx" && cp "$tmp/a.bin" "$tmp/d.bin" && printf '\x06' | dd of="$tmp/d.idx" bs=1 seek=17 conv=notrunc status=none
expect_fail "idx float dtype" "dtype code 6" $moekit data inspect "$tmp/d"
cp "$tmp/a.idx" "$tmp/g.idx" && cp "$tmp/a.bin" "$tmp/g.bin" && printf '\0\0' >>"$tmp/g.bin"
expect_fail "bin size mismatch" "$tmp/g.bin: size" $moekit data inspect "$tmp/g"
cp "$tmp/a.idx" "$tmp/nobin.idx"
expect_fail "bin missing" "$tmp/nobin.bin: no such file" $moekit data inspect "$tmp/nobin"
expect_fail "token >= --vocab" "out of range [0, vocab_size = 100)" $moekit data inspect "$tmp/a" --vocab 100
expect_fail "synth vocab too small" "vocab_size 2" $moekit data synth --out "$tmp/x1" --vocab 2 --tokens 100
expect_fail "synth neither tokens nor docs" "exactly one of tokens" $moekit data synth --out "$tmp/x2" --vocab 64
expect_fail "synth copy id = eos id" "copy_id 0" $moekit data synth --out "$tmp/x3" --vocab 64 --docs 3 --copy-id 0
# The prefix's directory is created, as `moekit train` does for its synthetic corpus.
$moekit data synth --out "$tmp/nodir/x4" --vocab 64 --docs 3 >/dev/null 2>&1 && [ -f "$tmp/nodir/x4.idx" ] \
  && ok "synth creates a missing directory" || bad "synth into a missing directory"
: >"$tmp/afile"
expect_fail "synth under a file" "$tmp/afile" $moekit data synth --out "$tmp/afile/x5" --vocab 64 --docs 3
for d in x1 x2 x3; do
  if ls "$tmp" | grep -q "^$d"; then bad "no partial output for $d"; else ok "no partial output for $d"; fi
done
if ls "$tmp" | grep -q "\.tmp\."; then bad "no temp files left"; else ok "no temp files left"; fi

finish
