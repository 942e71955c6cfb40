#!/usr/bin/env bash
# One-GPU training benchmark (issue #6; results go to docs/PERF.md): `moekit train` with
# train.device=cuda and bf16 against transformers (tests/bench/train_transformers.py: fp32
# parameters, bf16 autocast, torch AdamW) on the same two models, in the same run:
#   moe    configs/models/qwen1.5-moe-a2.7b-4l.yaml  Qwen1.5-MoE-A2.7B at full width, 4 layers
#   dense  configs/models/qwen1.5-1.8b.yaml          Qwen1.5-1.8B (all 24 layers)
# at seq 2048. For each: tokens/s and MFU (moekit cost's FLOPs per token against the device's
# dense bf16 peak), the ratio to transformers, and peak device memory against `moekit cost`'s plan.
#   tests/bench/run_gpu_bench.sh [BUILD_DIR] [STEPS]
# Targets (issue #6): dense >= 45 % MFU, MoE >= 30 %, both >= 3x transformers, memory within 10 %.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
build="${1:-$root/build}"
steps="${2:-12}"
moekit="$build/moekit"
py=python3
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cd "$root"
nvidia-smi -L >/dev/null 2>&1 || { echo "run_gpu_bench: no GPU (nvidia-smi -L failed)" >&2; exit 1; }
echo "device: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)"
printf "%-6s %5s %6s %12s %8s %12s %8s %11s %10s %8s\n" model batch seq "moekit tok/s" "MFU" "hf tok/s" ratio \
  "peak MiB" "plan MiB" "peak/plan"
for spec in "moe configs/models/qwen1.5-moe-a2.7b-4l.yaml 4" "dense configs/models/qwen1.5-1.8b.yaml 4"; do
  read -r name model batch <<<"$spec"
  "$moekit" train --config configs/train/gpu-bench.yaml --set run_dir="$tmp/$name" --set model="$model" \
    --set "data.train=[$tmp/data/synth]" --set train.steps="$steps" --set train.micro_batch_size="$batch" \
    --set train.global_batch_size="$batch" >"$tmp/$name.log" 2>&1 || { tail -20 "$tmp/$name.log"; exit 1; }
  plan="$("$moekit" cost --model "$model" --seq-len 2048 --micro-batch "$batch" --precision bf16 --json | tail -n 1)"
  hf="$($py tests/bench/train_transformers.py --model "$model" --batch "$batch" --seq 2048 --steps 6 --warmup 2 \
    --json 2>"$tmp/hf-$name.err" | tail -n 1)" || hf="null"
  [ -n "$hf" ] || hf="null"
  $py - "$tmp/$name" "$plan" "$hf" "$name" "$batch" <<'PY'
import json, statistics, sys
run, plan, hf, name, batch = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4], sys.argv[5]
rows = [json.loads(l) for l in open(run + "/metrics.jsonl")][2:]
tps = statistics.median(r["tokens_per_s"] for r in rows)
mfu = statistics.median(r["mfu"] for r in rows)
peak = json.load(open(run + "/summary.json"))["peak_device_mib"]
plan_mib = plan["memory"]["total_bytes"] / 2**20
htps = hf["tokens_per_s"] if hf else float("nan")
print(f"{name:<6} {batch:>5} {2048:>6} {tps:>12.0f} {100 * mfu:>7.1f}% {htps:>12.0f} {tps / htps:>7.2f}x "
      f"{peak:>11.0f} {plan_mib:>10.0f} {peak / plan_mib:>8.2f}")
PY
done
