#!/usr/bin/env bash
# Command-line tests of `moekit data tokenize | decode | convert-tokenizer` with a tiny vocabulary
# made here (no reference tools needed): tokenize -> inspect -> decode round trip, jsonl and text
# inputs, globs, hand-checked ids, and every bad input (invalid UTF-8, a missing key, bad JSON,
# a missing file, a glob that matches nothing, an over-long line, a corrupt vocabulary): each
# must exit non-zero with a message naming the file and line, and leave no output (an earlier
# output under the same prefix stays as it was). Parity with tiktoken and transformers on a real
# corpus is tests/tokenizer.
#   tokenize.sh MOEKIT_BINARY SOURCE_DIR
set -uo pipefail
moekit="$1"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
source "$2/tests/e2e/lib/harness.bash"

for sub in "data tokenize" "data decode" "data convert-tokenizer"; do
  if $moekit $sub --help >/dev/null 2>&1; then ok "help $sub"; else bad "help $sub"; fi
done

# A vocabulary: the 256 bytes, then "he" "ll" "llo" "hello" " w" "or" " wor" "ld" " world"
# (ranks 256..264); Qwen's special tokens follow from 265 (<|endoftext|>).
python3 - "$tmp/v.tiktoken" <<'PY'
import base64, sys
toks = [bytes([b]) for b in range(256)] + [t.encode() for t in
        ["he", "ll", "llo", "hello", " w", "or", " wor", "ld", " world"]]
open(sys.argv[1], "w").write("".join(f"{base64.b64encode(t).decode()} {r}\n" for r, t in enumerate(toks)))
PY
v="$tmp/v.tiktoken"
mkdir -p "$tmp/in"
printf '{"text": "hello world", "id": 1}\n\n{"text": "hello<|endoftext|>h\\u00e9", "id": 2}\n' >"$tmp/in/a.jsonl"

# --- a good run ---------------------------------------------------------------------------
out="$($moekit data tokenize --tokenizer "$v" --input "$tmp/in/a.jsonl" --out "$tmp/out/a" --progress 0)"
[ $? -eq 0 ] && ok "tokenize jsonl" || bad "tokenize jsonl: $out"
if python3 - "$(tail -n 1 <<<"$out")" "$tmp/out/a" <<'PY'; then ok "ids and summary (hand-checked)"; else bad "ids and summary"; fi
import json, struct, sys
s = json.loads(sys.argv[1])
assert s["documents"] == 2 and s["tokens"] == 9 and s["dtype"] == "uint16" and s["eos_id"] == 265, s
idx = open(sys.argv[2] + ".idx", "rb").read()
assert idx[:9] == b"MMIDIDX\0\0" and idx[17] == 8, idx[:18]
tokens = list(struct.unpack("<9H", open(sys.argv[2] + ".bin", "rb").read()))
# "hello" " world" EOS | "hello" <|endoftext|> from the text, "hé" as bytes h, 0xC3, 0xA9 (no merges), EOS
assert tokens == [259, 264, 265, 259, 265, 104, 0xC3, 0xA9, 265], tokens
PY
ins="$($moekit data inspect "$tmp/out/a" --json)"
python3 -c "import json,sys; r=json.loads(sys.argv[1]); assert r['documents']==2 and r['tokens']==9, r" "$ins" &&
  ok "data inspect reads it" || bad "data inspect reads it: $ins"
dec="$($moekit data decode --tokenizer "$v" "$tmp/out/a")"
python3 -c "
import json,sys
d=[json.loads(l)['text'] for l in sys.argv[1].split('\n') if l]
assert d==['hello world<|endoftext|>', 'hello<|endoftext|>h\u00e9<|endoftext|>'], d" "$dec" &&
  ok "decode gives the text back" || bad "decode: $dec"

printf 'hello\nworld' >"$tmp/in/t1.txt"
printf '' >"$tmp/in/t2.txt"
out="$($moekit data tokenize --tokenizer "$v" --input "$tmp/in/t*.txt" --format text --out "$tmp/out/t" --no-eos)"
python3 -c "import json,sys; s=json.loads(sys.argv[1]); assert s['files']==2 and s['documents']==2, s" \
  "$(tail -n 1 <<<"$out")" && ok "text files by glob, one document each (an empty one too)" || bad "text glob: $out"
# Text files are cut inside documents at line starts; the ids must not depend on where.
python3 - "$tmp/in/long.txt" <<'PY'
import sys
starts = ["hello", " world", "  \t", "\u0301x", "\u4e2d\u6587", "<|endoftext|>", "'ll", "123", "\u3000y", "!!", "\r"]
lines = [starts[i % len(starts)] + (" hello world" * (i % 7)) + ("\n" * (1 + i % 3)) for i in range(6000)]
open(sys.argv[1], "w", encoding="utf-8").write("".join(lines))
PY
for kb in 4 64 4096; do
  $moekit data tokenize --tokenizer "$v" --input "$tmp/in/long.txt" --format text --chunk-kb $kb --out "$tmp/out/long$kb" \
    --progress 0 >/dev/null || bad "text chunks of $kb KB"
done
cmp -s "$tmp/out/long4.bin" "$tmp/out/long4096.bin" && cmp -s "$tmp/out/long64.bin" "$tmp/out/long4096.bin" &&
  cmp -s "$tmp/out/long4.idx" "$tmp/out/long4096.idx" && cmp -s "$tmp/out/long64.idx" "$tmp/out/long4096.idx" && ok "a text file cut into 4 KB or 64 KB chunks encodes as one" ||
  bad "text chunking changes the ids"
$moekit data convert-tokenizer --tokenizer "$v" --out "$tmp/hf" >/dev/null &&
  [ -f "$tmp/hf/tokenizer.json" ] && [ -f "$tmp/hf/merges.txt" ] && grep -q '"Qwen2Tokenizer"' "$tmp/hf/tokenizer_config.json" &&
  ok "convert-tokenizer writes HF files" || bad "convert-tokenizer"
$moekit data tokenize --tokenizer "$tmp/hf" --input "$tmp/in/a.jsonl" --out "$tmp/out/a_hf" --progress 0 >/dev/null &&
  cmp -s "$tmp/out/a.bin" "$tmp/out/a_hf.bin" && ok "the HF files encode the same" || bad "the HF files encode the same"

# --- bad input: named, non-zero, nothing written ------------------------------------------
cp "$tmp/out/a.bin" "$tmp/a.bin.before"
# expect_clean NAME SUBSTRING ARGS...: tokenize into $tmp/out/a (which exists) must fail with
# SUBSTRING and leave a.bin as it was and no temp files.
expect_clean() {
  local name="$1" want="$2"
  shift 2
  expect_fail "$name" "$want" $moekit data tokenize --tokenizer "$v" --out "$tmp/out/a" --progress 0 "$@"
  if cmp -s "$tmp/out/a.bin" "$tmp/a.bin.before" && ! ls "$tmp/out" | grep -q tmp; then ok "$name: no output"; else
    bad "$name: output changed or temp files left: $(ls "$tmp/out")"; fi
}
printf '{"text": "ok"}\n{"text": "bad \xff byte"}\n' >"$tmp/in/utf8.jsonl"
expect_clean "invalid UTF-8 in jsonl" "utf8.jsonl:2:15: invalid UTF-8 (byte 0xFF)" --input "$tmp/in/utf8.jsonl"
printf 'line one\nline two\nbad \xc3\x28 here\n' >"$tmp/in/utf8.txt"
expect_clean "invalid UTF-8 in text" "utf8.txt:3:5: invalid UTF-8 (byte 0xC3)" --input "$tmp/in/utf8.txt" --format text
printf '{"text": "ok"}\n{"content": "no text key"}\n' >"$tmp/in/key.jsonl"
expect_clean "missing key" 'key.jsonl:2: no key "text"' --input "$tmp/in/key.jsonl"
expect_clean "--json-key" 'a.jsonl:1: no key "body"' --input "$tmp/in/a.jsonl" --json-key body
printf '{"text": "ok"}\n{"text": "ok"}\n{"text": "unterminated}\n' >"$tmp/in/json.jsonl"
expect_clean "not JSON" "json.jsonl:3: line is not valid JSON" --input "$tmp/in/json.jsonl"
printf '{"text": "one", "text": "two"}\n' >"$tmp/in/dup.jsonl"
expect_clean "duplicate key" "dup.jsonl:1: line has duplicate key 'text'" --input "$tmp/in/dup.jsonl"
python3 -c "print('{\"text\": \"ok\", \"meta\": ' + '[' * 100000 + ']' * 100000 + '}')" >"$tmp/in/deep.jsonl"
expect_clean "nesting past the depth limit" "deep.jsonl:1: line nests deeper than 32 levels" --input "$tmp/in/deep.jsonl"
printf '{"text": 5}\n' >"$tmp/in/num.jsonl"
expect_clean "text not a string" 'num.jsonl:1: "text" is number, expected a string' --input "$tmp/in/num.jsonl"
printf '[1, 2]\n' >"$tmp/in/arr.jsonl"
expect_clean "not an object" "arr.jsonl:1: expected a JSON object" --input "$tmp/in/arr.jsonl"
expect_clean "missing file" "$tmp/in/nope.jsonl: no such file" --input "$tmp/in/a.jsonl" "$tmp/in/nope.jsonl"
expect_clean "a directory" "$tmp/in: no such file (or not a regular file)" --input "$tmp/in"
expect_clean "glob without a match" "matches no file" --input "$tmp/in/*.parquet"
python3 -c "print('{\"text\": \"' + 'x' * 1500000 + '\"}')" >"$tmp/in/long.jsonl"
expect_clean "line over --max-doc-mb" "long.jsonl:1: a line is longer than 1000000 bytes" --input "$tmp/in/long.jsonl" \
  --max-doc-mb 1 --chunk-kb 100
expect_clean "unknown --eos" "has no token <|nope|>" --input "$tmp/in/a.jsonl" --eos "<|nope|>"
{ head -n 3 "$v"; echo "not base64!! 3"; } >"$tmp/bad.tiktoken"
expect_fail "corrupt vocabulary" "bad.tiktoken:4: expected \"<base64 token> <rank>\"" \
  $moekit data tokenize --tokenizer "$tmp/bad.tiktoken" --input "$tmp/in/a.jsonl" --out "$tmp/out/c"
[ ! -e "$tmp/out/c.bin" ] && ok "corrupt vocabulary: no output" || bad "corrupt vocabulary: no output"
$moekit data synth --out "$tmp/out/s" --vocab 1000 --docs 3 >/dev/null
expect_fail "decode ids the tokenizer lacks" "is not in the tokenizer (473 ids)" \
  $moekit data decode --tokenizer "$v" "$tmp/out/s"
expect_fail "convert-tokenizer into a non-empty directory" "not an empty directory" \
  $moekit data convert-tokenizer --tokenizer "$v" --out "$tmp/hf"

# --- Ctrl-C: the job stops and removes its temp files -------------------------------------
python3 -c "
import json
line = json.dumps({'text': 'hello world, the quick brown fox jumps over the lazy dog. ' * 40}) + '\n'
open('$tmp/in/big.jsonl', 'w').write(line * 20000)"
$moekit data tokenize --tokenizer "$v" --input "$tmp/in/big.jsonl" --out "$tmp/out/big" --threads 1 --chunk-kb 64 \
  --progress 0 >"$tmp/int.out" 2>&1 &
pid=$!
sleep 0.3
kill -INT "$pid" 2>/dev/null
wait "$pid"
rc=$?
if [ $rc -ne 0 ] && grep -q "interrupted by signal 2" "$tmp/int.out"; then
  ! ls "$tmp/out" | grep -q "^big" && ok "SIGINT: stopped, nothing left" || bad "SIGINT left $(ls "$tmp/out" | grep big)"
elif [ $rc -eq 0 ]; then
  echo "note - the job finished before the signal; SIGINT not exercised"
else
  bad "SIGINT (rc=$rc): $(cat "$tmp/int.out")"
fi
finish
