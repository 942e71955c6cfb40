#!/usr/bin/env bash
# Distributed step speed and traffic on CPU ranks (docs/PERF.md): bench_parallel at W = 1
# (all cores in one process) and W = 2 (one thread per rank) with ep = 1 and ep = 2, on the
# bench MoE. Prints tokens/s and, for rank 0, the bytes per step each collective moved beside
# the analytic count; exits non-zero when they differ.
#   tests/bench/run_parallel_bench.sh [BUILD_DIR] [extra bench_parallel args, e.g. --steps 10]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
build="${1:-$root/build}"
shift || true
bench="$build/tests/bench_parallel"
[ -x "$bench" ] || { echo "run_parallel_bench: $bench not built (run launch/setup)" >&2; exit 1; }
cd "$root"
flags=()
mpirun --version 2>/dev/null | grep -q "Open MPI" && flags=(--oversubscribe --allow-run-as-root -x OMP_NUM_THREADS=1)
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), load $(cut -d' ' -f1-3 /proc/loadavg)"
results=()
results+=("$(OMP_NUM_THREADS=$(nproc) "$bench" --ep 1 --check --json "$@" | tail -n 1)")
for ep in 1 2; do
  results+=("$(OMP_NUM_THREADS=1 mpirun -np 2 "${flags[@]}" "$bench" --ep "$ep" --check --json "$@" | tail -n 1)")
done
python3 - "${results[@]}" <<'PY'
import json, sys
rows = [json.loads(a) for a in sys.argv[1:]]
mib = lambda b: f"{b / 2**20:.2f}"
print(f"{'W':>2} {'ep':>3} {'edp':>4} {'tokens/step':>11} {'ms/step':>8} {'tokens/s':>9}   "
      f"{'world AR MiB':>12} {'edp AR MiB':>10} {'ep A2A MiB':>10}   analytic")
for r in rows:
    b = r["bytes"]
    print(f"{r['world']:>2} {r['ep']:>3} {r['edp']:>4} {r['tokens_per_step']:>11} {r['ms_per_step']:>8.1f} "
          f"{r['tokens_per_s']:>9.1f}   {mib(b['world_all_reduce']):>12} {mib(b['edp_all_reduce']):>10} "
          f"{mib(b['ep_all_to_all']):>10}   {'equal' if r['agree'] else 'DIFFERENT'}")
base = rows[0]["tokens_per_s"]
for r in rows[1:]:
    print(f"W={r['world']} ep={r['ep']}: {r['tokens_per_s'] / base:.2f}x the W=1 tokens/s")
sys.exit(0 if all(r["agree"] for r in rows) else 1)
PY
