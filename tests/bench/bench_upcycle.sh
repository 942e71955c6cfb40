#!/usr/bin/env bash
# Upcycling benchmark (docs/PERF.md "Upcycling"): Qwen-1.8B-shaped random dense checkpoint
# (made here, nothing downloaded) -> Qwen1.5-MoE-A2.7B shapes (~28.6 GB of bf16), timed against
#   - the disk's sequential write rate, measured first with dd (conv=fdatasync),
#   - a straightforward numpy implementation of the same algorithm (upcycle_numpy.py), same run.
# Reports wall time, GB/s, fraction of the disk rate, peak RSS (GNU time) as one JSON line.
#   bench_upcycle.sh BUILD_DIR [WORK_DIR] [--skip-numpy] [--numpy-layers K]
# WORK_DIR (default /var/tmp/moekit-bench.PID) needs ~35 GB free; it is removed at the end.
set -euo pipefail
build="$(cd "$1" && pwd)"
shift
work="/var/tmp/moekit-bench.$$"
numpy_layers=0
skip_numpy=0
while [ $# -gt 0 ]; do
  case "$1" in
    --skip-numpy) skip_numpy=1 ;;
    --numpy-layers) numpy_layers="$2"; shift ;;
    *) work="$1" ;;
  esac
  shift
done
src="$(cd "$(dirname "$0")/../.." && pwd)"
moekit="$build/moekit"
py=/usr/bin/python3
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT
log() { echo "[bench] $*" >&2; }
# timed OUT_PREFIX cmd...: runs cmd under GNU time; OUT_PREFIX.time gets "wall_s max_rss_kb".
timed() {
  local prefix="$1"
  shift
  /usr/bin/time -f "%e %M" -o "$prefix.time" "$@" >"$prefix.out" 2>"$prefix.err"
}

log "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)"
log "free on $(df -P "$work" | awk 'NR==2 {print $6}'): $(df -BG -P "$work" | awk 'NR==2 {print $4}')"

# 1. Disk sequential write rate: 8 GiB of zeros, flushed before dd reports.
log "disk: dd 8 GiB with conv=fdatasync"
dd if=/dev/zero of="$work/dd.bin" bs=64M count=128 conv=fdatasync 2>"$work/dd.err"
disk_gbps=$(awk '/copied/ {for (i = 1; i <= NF; ++i) if ($i == "s,") t = $(i - 1); b = $1} END {printf "%.3f", b / t / 1e9}' "$work/dd.err")
rm -f "$work/dd.bin"
log "disk: $disk_gbps GB/s"

# 2. Inner-kernel costs (CPU time, one core).
kernels=$("$build/tests/bench_upcycle" kernels)
log "kernels: $kernels"

# 3. The dense checkpoint: Qwen1.5-1.8B shapes (FFN 5504), bf16, random N(0, 0.02).
log "making the Qwen-1.8B-shaped dense checkpoint"
"$build/tests/bench_upcycle" make-dense --config "$src/configs/models/qwen1.5-1.8b.yaml" --out "$work/dense" \
  --seed 1 --dtype bf16 >/dev/null
sync
recipe="$src/configs/upcycle/qwen1.5-moe-a2.7b.yaml"

# 4. moekit upcycle (input warm in the page cache, as for numpy below).
cat "$work"/dense/*.safetensors >/dev/null
log "moekit upcycle -> A2.7B shapes (load $(cut -d' ' -f1 /proc/loadavg))"
timed "$work/moekit" "$moekit" upcycle --config "$recipe" --dense "$work/dense" --out "$work/moe"
read -r m_wall m_rss <"$work/moekit.time"
m_json=$(tail -n 1 "$work/moekit.out")
m_bytes=$("$py" -c "import json,sys; print(json.loads(sys.argv[1])['bytes'])" "$m_json")
m_files=$(ls "$work/moe" | grep -c 'safetensors$')
m_disk=$(du -sb "$work/moe" | cut -f1)
log "moekit: $m_wall s, $m_rss KB peak RSS, $m_bytes tensor bytes in $m_files shards"
rm -rf "$work/moe"

# 5. numpy baseline, same algorithm, same input, same disk.
n_wall=null n_rss=null n_layers=null
if [ "$skip_numpy" -eq 0 ]; then
  cat "$work"/dense/*.safetensors >/dev/null
  log "numpy baseline (layers: ${numpy_layers:-all}; load $(cut -d' ' -f1 /proc/loadavg))"
  timed "$work/numpy" "$py" "$src/tests/bench/upcycle_numpy.py" --dense "$work/dense" --out "$work/np" \
    --recipe "$recipe" --layers "$numpy_layers"
  read -r n_wall n_rss <"$work/numpy.time"
  n_layers=$("$py" -c "import json,sys; print(json.loads(open(sys.argv[1]).read().splitlines()[-1])['layers'])" "$work/numpy.out")
  log "numpy: $n_wall s for $n_layers MoE layers, $n_rss KB peak RSS"
  rm -rf "$work/np"
fi

"$py" - "$disk_gbps" "$m_wall" "$m_rss" "$m_bytes" "$m_disk" "$m_json" "$n_wall" "$n_rss" "$n_layers" "$kernels" \
  "$(nproc)" "$(cut -d' ' -f1-3 /proc/loadavg)" <<'PY'
import json, sys
disk, mw, mrss, mbytes, mdisk, mj, nw, nrss, nl, kern, cores, load = sys.argv[1:]
disk, mw, mbytes = float(disk), float(mw), int(mbytes)
out = {"disk_write_gbps": disk, "moekit": {"wall_s": mw, "gbps": mbytes / 1e9 / mw, "fraction_of_disk": mbytes / 1e9 / mw / disk,
       "peak_rss_mb": int(mrss) / 1024, "tensor_gb": mbytes / 1e9, "dir_gb": int(mdisk) / 1e9, "summary": json.loads(mj)},
       "kernels": json.loads(kern), "cores": int(cores), "loadavg_after": load}
if nw != "null":
    nw, nl = float(nw), int(nl)
    # A partial numpy run is scaled to 24 MoE layers by its per-layer time (reported as such).
    full = nw if nl == 24 else nw * 24 / nl
    out["numpy"] = {"wall_s": nw, "moe_layers": nl, "wall_s_24_layers": full, "peak_rss_mb": int(nrss) / 1024,
                    "speedup_moekit": full / mw}
print(json.dumps(out))
PY
