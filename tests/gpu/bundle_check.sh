#!/usr/bin/env bash
# The GPU bundle (launch/gpu-bundle, built by launch/test where nvcc exists) as far as it can be
# checked without a GPU:
#  - its size (limit 40 MiB) and manifest are printed; the checks below run on a copy whose
#    compressed libraries launch/gpu-unpack restored, as launch/gpu-check does on the machine;
#  - every library its binaries load resolves inside the bundle, or is the C/C++ runtime, or is
#    one the lent machine provides (CUDA driver, cuBLAS, NCCL);
#  - in a chroot holding only the bundle, the C/C++ runtime and the machine-provided libraries
#    (no Debian packages: no HDF5, MPI, yaml-cpp, OpenMP, ...) both binaries start, the GPU
#    tests skip cleanly and `moekit train` runs three CPU steps of the tiny MoE;
#  - launch/gpu-check's CPU-side steps pass (GPU_CHECK_DRY=1).
# Exits 77 (skipped) when no bundle was built.
#   bundle_check.sh SOURCE_DIR [BUNDLE_DIR]
set -uo pipefail
src=$1
bundle="${2:-$src/bundle}"
[ -x "$bundle/bin/moekit" ] || { echo "skip: no GPU bundle at $bundle (launch/gpu-bundle needs nvcc)"; exit 77; }
source "$src/tests/e2e/lib/harness.bash"
tmp="$(mktemp -d)"
trap 'umount "$tmp/root/proc" 2>/dev/null; rm -rf "$tmp"' EXIT

size=$(du -sb "$bundle" | cut -f1)
echo "bundle: $bundle, $(awk -v s="$size" 'BEGIN {printf "%.1f", s / 1048576}') MiB"
sed 's/^/  /' "$bundle/MANIFEST"
[ "$size" -le $((40 * 1048576)) ] && ok "bundle is under 40 MiB" || bad "bundle is over 40 MiB"
cp -a "$bundle" "$tmp/bundle"
bundle="$tmp/bundle"
# Whatever an earlier gpu-check unpacked in place goes: the copy must be restored by gpu-unpack.
shopt -s nullglob
packed=("$bundle"/lib/*.xz)
shopt -u nullglob
for z in "${packed[@]}"; do rm -f "${z%.xz}"; done
same_as_packed() { for z in "$@"; do xz -dc "$z" | cmp -s - "${z%.xz}" || return 1; done; }
if ((${#packed[@]} == 0)); then
  bad "the bundle carries no compressed library (launch/gpu-bundle compresses those of 1 MiB or more)"
elif bash "$src/launch/gpu-unpack" "$bundle" >"$tmp/unpack.log" 2>&1 &&
  [ "$(grep -c '^\[gpu-unpack\]' "$tmp/unpack.log")" -eq ${#packed[@]} ] &&
  ! ls "$bundle"/lib/*.part >/dev/null 2>&1 &&
  same_as_packed "${packed[@]}"; then
  ok "launch/gpu-unpack restores the ${#packed[@]} compressed libraries byte for byte"
else
  bad "launch/gpu-unpack: $(tail -3 "$tmp/unpack.log")"
fi
# Without xz, through Python's lzma (the lent machine may lack xz): the same bytes.
if ((${#packed[@]})); then
  mkdir -p "$tmp/noxz/lib" "$tmp/noxz/bin"
  cp "${packed[0]}" "$tmp/noxz/lib/"
  for t in bash dirname realpath du cut chmod mv rm basename; do ln -sf "$(command -v $t)" "$tmp/noxz/bin/$t"; done
  ln -sf /usr/bin/python3 "$tmp/noxz/bin/python3"
  name="$(basename "${packed[0]%.xz}")"
  if PATH="$tmp/noxz/bin" bash "$src/launch/gpu-unpack" "$tmp/noxz" >/dev/null 2>&1 &&
    cmp -s "${packed[0]%.xz}" "$tmp/noxz/lib/$name"; then
    ok "without xz, python3's lzma unpacks $name to the same bytes"
  else
    bad "launch/gpu-unpack without xz"
  fi
fi

source "$src/launch/lib/gpu-libs.bash"
provided="$gpu_provided_libs" runtime="$gpu_runtime_libs"
outside=0
for f in "$bundle"/bin/* "$bundle"/lib/*; do
  [[ "$f" == *.xz ]] && continue
  while read -r name path; do
    [[ "$name" =~ $provided || "$name" =~ $runtime ]] && continue
    case "$(realpath -m "$path")" in
      "$(realpath "$bundle")"/lib/*) ;;
      *) echo "  $(basename "$f") loads $name from $path"; outside=1 ;;
    esac
  done < <(ldd "$f" | awk '/=>/ {print $1, $3}')
done
[ $outside = 0 ] && ok "every library resolves in the bundle, the C/C++ runtime or the machine's CUDA" \
  || bad "libraries resolve outside the bundle"

# A root with nothing but the runtime, the machine-provided CUDA libraries and the bundle.
r="$tmp/root"
mkdir -p "$r/lib64" "$r/lib" "$r/usr/local/cuda/lib64" "$r/tmp" "$r/proc" "$r/work/configs"
link_in() { cp -al "$1" "$2" 2>/dev/null || cp -a "$1" "$2"; }  # hard links: cuBLAS is large
for name in $(ldd "$bundle/bin/moekit" "$bundle/bin/moekit_gpu_tests" | awk '/=>/ {print $1}' | sort -u); do
  path=$(ldd "$bundle/bin/moekit" "$bundle/bin/moekit_gpu_tests" | awk -v n="$name" '$1 == n {print $3; exit}')
  if [[ "$name" =~ $runtime ]]; then link_in "$(realpath "$path")" "$r/lib/$name"
  elif [[ "$name" =~ $provided ]]; then link_in "$(realpath "$path")" "$r/usr/local/cuda/lib64/$name"
  fi
done
link_in "$(realpath /lib64/ld-linux-x86-64.so.2)" "$r/lib64/ld-linux-x86-64.so.2"
cp -a "$bundle" "$r/bundle"
cp -a "$src/configs/models" "$src/configs/train" "$r/work/configs/"
echo "chroot: $(du -sh --apparent-size "$r" | cut -f1) ($(find "$r" -type f | wc -l) files)"
mount -t proc proc "$r/proc" 2>/dev/null || true  # for the RSS figures; the run works without it
# The root has no shell and no env: the environment is set outside, chroot execs the binary.
chroot_bin="$(command -v chroot || echo /usr/sbin/chroot)"
in_root() { env -i LD_LIBRARY_PATH=/lib:/usr/local/cuda/lib64 HOME=/tmp OMP_NUM_THREADS=2 "$chroot_bin" "$r" "$@"; }
if in_root /bundle/bin/moekit --version >"$tmp/version.log" 2>&1; then
  ok "moekit starts in the bare root: $(head -1 "$tmp/version.log")"
else
  bad "moekit does not start in the bare root: $(tail -3 "$tmp/version.log")"
fi
if in_root /bundle/bin/moekit_gpu_tests --gtest_brief=1 >"$tmp/gpu.log" 2>&1 && grep -q "PASSED" "$tmp/gpu.log"; then
  ok "the GPU tests load and skip without a device ($(grep -oE 'SKIPPED \] [0-9]+ tests' "$tmp/gpu.log"))"
else
  bad "the GPU tests in the bare root: $(tail -5 "$tmp/gpu.log")"
fi
if in_root /bundle/bin/moekit train --config /work/configs/train/tiny-moe.yaml \
     --set model=/work/configs/models/tiny-moe.yaml --set run_dir=/tmp/run --set "data.train=[/tmp/data/synth]" \
     --set data.synth_tokens=60000 --set train.steps=3 --set train.peak_flops=1e11 --set checkpoint.final=false \
     >"$tmp/train.log" 2>&1; then
  ok "moekit trains on the CPU in the bare root: $(grep -o 'step 3/3 | loss [0-9.]*' "$tmp/train.log")"
else
  bad "CPU training in the bare root: $(tail -5 "$tmp/train.log")"
fi

# The check script's own logic, without a GPU.
if OUT="$tmp/check" GPU_CHECK_DRY=1 bash "$src/launch/gpu-check" "$bundle" >"$tmp/check.log" 2>&1; then
  ok "launch/gpu-check's CPU-side steps pass"
else
  bad "launch/gpu-check (dry): $(tail -8 "$tmp/check.log")"
fi
sed 's/^/  /' "$tmp/check/summary.txt" 2>/dev/null
finish
