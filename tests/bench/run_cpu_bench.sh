#!/usr/bin/env bash
# CPU training-speed comparison of moekit and PyTorch eager on the same model, in the same run
# (docs/PERF.md records the results). Both time forward + backward of one step on random tokens.
#   tests/bench/run_cpu_bench.sh [BUILD_DIR] [extra args for both, e.g. --steps 10]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
build="${1:-$root/build}"
shift || true
py=/usr/bin/python3
model="$root/configs/models/bench-moe.yaml"
bench="$build/tests/bench_moe"
[ -x "$bench" ] || { echo "run_cpu_bench: $bench not built (run launch/setup)" >&2; exit 1; }

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), load $(cut -d' ' -f1-3 /proc/loadavg)"
m="$("$bench" --model "$model" --json "$@" | tail -n 1)"
if $py -c "import torch" 2>/dev/null; then
  t="$($py "$root/tests/bench/bench_moe_torch.py" --model "$model" --json "$@" | tail -n 1)"
else
  echo "run_cpu_bench: /usr/bin/python3 has no torch (launch/setup-reference); moekit only" >&2
  t="null"
fi
$py - "$m" "$t" <<'PY'
import json, sys
m = json.loads(sys.argv[1]); t = json.loads(sys.argv[2])
rows = [("moekit", m)] + ([("PyTorch eager", t)] if t else [])
print(f"{'impl':<14} {'ms/step':>9} {'tokens/s':>10} {'GFLOP/s':>9} {'GEMM peak':>10} {'of peak':>8} {'loss@1':>8}")
for name, r in rows:
    print(f"{name:<14} {r['ms_per_step']:>9.1f} {r['tokens_per_s']:>10.1f} {r['gflops']:>9.2f} "
          f"{r['gemm_gflops']:>10.2f} {100*r['frac_of_gemm_peak']:>7.1f}% {r['first_loss']:>8.4f}")
if t:
    print(f"PyTorch {t['torch']} BLAS: {', '.join(t.get('blas', [])) or 'none mapped'}")
    print(f"moekit / PyTorch tokens/s: {m['tokens_per_s'] / t['tokens_per_s']:.2f}x")
PY
