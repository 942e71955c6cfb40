#!/usr/bin/env bash
# Training-step speed and memory of `moekit train` against a PyTorch eager training loop of the
# same model (forward, backward, clip, AdamW) in the same run, for the tiny MoE and the bench
# MoE. moekit's tokens/s is the median over the logged steps after the first two (data loading
# and logging included); peak RSS is compared with `moekit cost --device cpu`'s plan.
#   tests/bench/run_train_bench.sh [BUILD_DIR]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
build="${1:-$root/build}"
moekit="$build/moekit"
py=/usr/bin/python3
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cd "$root"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), load $(cut -d' ' -f1-3 /proc/loadavg)"
printf "%-10s %6s %6s %12s %12s %8s %9s %12s %11s %6s\n" model batch seq "moekit tok/s" "torch tok/s" ratio "MFU" "RSS-base MiB" "plan MiB" "RSS/plan"
for spec in "tiny-moe 16 128 configs/models/tiny-moe.yaml" "bench-moe 4 256 configs/models/bench-moe.yaml"; do
  read -r name batch seq model <<<"$spec"
  "$moekit" train --config configs/train/tiny-moe.yaml --set run_dir="$tmp/$name" --set model="$model" \
    --set "data.train=[$tmp/data-$name]" --set data.synth_tokens=400000 --set train.steps=14 \
    --set train.seq_len="$seq" --set train.micro_batch_size="$batch" --set train.global_batch_size="$batch" \
    --set train.eval_every=0 --set train.eval_batches=1 --set checkpoint.every=0 >/dev/null
  plan="$("$moekit" cost --model "$model" --device cpu --seq-len "$seq" --micro-batch "$batch" --precision fp32 --json | tail -n 1)"
  torch_json="null"
  if $py -c "import torch" 2>/dev/null; then
    torch_json="$($py tests/bench/bench_moe_torch.py --model "$model" --batch "$batch" --seq "$seq" --steps 10 --warmup 2 --train --json | tail -n 1)"
  fi
  $py - "$tmp/$name" "$plan" "$torch_json" "$name" "$batch" "$seq" <<'PY'
import json, statistics, sys
run, plan, torch_r, name, batch, seq = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), *sys.argv[4:]
rows = [json.loads(l) for l in open(run + "/metrics.jsonl")][2:]
tps = statistics.median(r["tokens_per_s"] for r in rows)
mfu = statistics.median(r["mfu"] for r in rows)
s = json.load(open(run + "/summary.json"))
plan_mib = plan["memory"]["total_bytes"] / 2**20
used = s["peak_rss_mib"] - s["base_rss_mib"]  # above the process baseline, like the plan
tt = torch_r["tokens_per_s"] if torch_r else float("nan")
if torch_r and name == "tiny-moe":
    print(f"(PyTorch {torch_r['torch']} BLAS: {', '.join(torch_r.get('blas', [])) or 'none mapped'})")
print(f"{name:<10} {batch:>6} {seq:>6} {tps:>12.0f} {tt:>12.0f} {tps / tt:>7.2f}x {100 * mfu:>8.1f}% "
      f"{used:>12.0f} {plan_mib:>11.0f} {used / plan_mib:>6.2f}")
PY
done
