#!/usr/bin/env bash
# compute-sanitizer memcheck over a subset of the CUDA backend's ops and two training steps of the
# tiny MoE on the GPU (launch/gpu-check's memcheck step): any invalid access or leak of device
# memory fails (exit 9). Exits 77 without compute-sanitizer or a GPU.
#   memcheck.sh BIN_DIR SOURCE_DIR OUT_DIR
set -uo pipefail
bin=$1; src=$2; out=$3
command -v compute-sanitizer >/dev/null || { echo "skip: no compute-sanitizer"; exit 77; }
nvidia-smi -L >/dev/null 2>&1 || { echo "skip: no GPU"; exit 77; }
cs=(compute-sanitizer --tool memcheck --leak-check full --error-exitcode 9)
"${cs[@]}" "$bin/moekit_gpu_tests" \
  --gtest_filter='Act/BackendOp.RmsNorm*:Act/BackendOp.Router*:Act/BackendOp.DispatchPlan*:Act/BackendOp.Grouped*:Act/BackendOp.AdamW*' ||
  exit $?
"${cs[@]}" "$bin/moekit" train --config "$src/configs/train/tiny-moe.yaml" --set train.device=cuda \
  --set run_dir="$out/memcheck-run" --set "data.train=[$out/memcheck-data/synth]" --set data.synth_tokens=50000 \
  --set train.steps=2 --set train.peak_flops=1e11 --set checkpoint.every=0 --set checkpoint.final=false
