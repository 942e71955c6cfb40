# Shared setup of the fault-injection tests, sourced with the script's arguments
# (MOEKIT_BINARY SOURCE_DIR CKPT_TOOL): sets moekit, src, ckpt_tool and a temp directory tmp
# (removed on exit), works in the source directory, and defines a tiny, fast MoE run (6 steps of
# 4 x 32 tokens, a checkpoint every 2: train, make_ref) and a bit-exact comparison of a finished
# run with the reference (same_as_ref, resumed_from).
moekit="$1"
src="$2"
ckpt_tool="$3"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cd "$src"
source "$src/tests/e2e/lib/harness.bash"
# One thread: these runs are tiny (a second each), and OpenMP threads waiting on each other on a
# busy machine would take most of the test's time.
export OMP_NUM_THREADS=1

small=(--config configs/train/tiny-moe.yaml --set "data.train=[$tmp/data/synth]" --set data.synth_tokens=100000
  --set train.peak_flops=1e11 --set train.steps=6 --set checkpoint.every=2 --set checkpoint.keep=0
  --set train.seq_len=32 --set train.micro_batch_size=2 --set train.global_batch_size=4 --set train.eval_batches=1
  --set train.log_every=100)
train() { "$moekit" train "${small[@]}" "$@"; }

# expect_exit1 NAME LOG RC SUBSTRING...: exit code 1 (an error, not a signal) and every SUBSTRING
# in LOG.
expect_exit1() {
  local name="$1" log="$2" rc="$3" miss=""
  shift 3
  for w in "$@"; do grep -qF -- "$w" "$log" || miss="$miss '$w'"; done
  if [ "$rc" -eq 1 ] && [ -z "$miss" ]; then ok "$name"; else bad "$name (rc=$rc, missing:$miss): $(tail -c 400 "$log")"; fi
}

# make_ref: the uninterrupted run every interrupted one must equal ($tmp/ref).
make_ref() {
  train --set run_dir="$tmp/ref" >/dev/null 2>"$tmp/ref.log" || bad "reference run: $(tail -3 "$tmp/ref.log")"
  # checkpoint.keep: 0 keeps every checkpoint (it was once refused).
  [ "$(ls -d "$tmp/ref/checkpoints"/step_* | wc -l)" = 3 ] && ok "checkpoint.keep 0 keeps all 3 checkpoints" ||
    bad "checkpoint.keep 0: $(ls "$tmp/ref/checkpoints")"
  "$ckpt_tool" crcs "$tmp/ref/checkpoints/step_00000006" >"$tmp/ref.crcs" || bad "reference checkpoint"
}

# same_as_ref NAME RUN: the finished RUN has the reference's metrics (step, loss, grad norm: bit
# for bit) and its final checkpoint the reference's tensors (every dataset's CRC-32C).
same_as_ref() {
  local name="$1" run="$2"
  if python3 - "$tmp/ref/metrics.jsonl" "$run/metrics.jsonl" <<'PY' &&
import json, sys
a, b = ([(r["step"], r["loss"], r["grad_norm"]) for r in map(json.loads, open(p))] for p in sys.argv[1:])
assert a == b, [x for x in zip(a, b) if x[0] != x[1]][:2]
PY
    "$ckpt_tool" crcs "$run/checkpoints/step_00000006" | cmp -s - "$tmp/ref.crcs"; then
    ok "$name: finished run is bit-exact"
  else
    bad "$name: finished run differs from the uninterrupted one"
  fi
}

# resumed_from LOG: the step a resume started from ("" when it started afresh).
resumed_from() { sed -n 's/.*resume: step \([0-9]*\),.*/\1/p' "$1" | head -n 1; }
