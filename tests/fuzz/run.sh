#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan + UBSan; tests/fuzz/CMakeLists.txt) and runs them.
#   tests/fuzz/run.sh build FUZZ_BUILD_DIR                 configure + build (exit 77 without clang/libFuzzer)
#   tests/fuzz/run.sh ci FUZZ_BUILD_DIR SECONDS            each target SECONDS on a copy of its seed corpus
#   tests/fuzz/run.sh campaign FUZZ_BUILD_DIR RUNS [JOBS]  each target RUNS executions, niced, JOBS
#                                                          targets at a time; corpus, logs and any crash
#                                                          under FUZZ_BUILD_DIR/campaign, a table at the end
# Any crash, sanitizer report, leak, timeout, allocation over 256 MB or broken invariant is a
# failure; libFuzzer writes the input that caused it next to the logs. The timeout is 30 s per
# input: every input of these readers takes milliseconds, and a busy shared machine once stalled a
# fuzzer for 11 s (a timeout input then ran in 0.2 s), so a shorter limit would report load.
set -uo pipefail
mode="${1:?usage: run.sh build|ci|campaign FUZZ_BUILD_DIR ...}"
out="${2:?fuzz build directory}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
targets=(safetensors_header index_json config indexed_dataset llmc_shard train_checkpoint)
# The same limits everywhere: a reader must never hang or allocate from an untrusted size.
limits=(-timeout=30 -rss_limit_mb=1024 -malloc_limit_mb=256 -max_len=65536 -error_exitcode=99 -timeout_exitcode=98)

find_clang() {
  for v in 14 15 16 17 18 19 ""; do
    local cxx="clang++${v:+-$v}" cc="clang${v:+-$v}"
    command -v "$cxx" >/dev/null 2>&1 || continue
    # libFuzzer is in the compiler-rt package (Debian: libclang-rt-N-dev).
    if echo 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }' |
      "$cxx" -x c++ -fsanitize=fuzzer - -o /dev/null 2>/dev/null; then
      echo "$cc $cxx"
      return 0
    fi
  done
  return 1
}

build() {
  local tools
  if ! tools="$(find_clang)"; then
    echo "skip - no clang with libFuzzer (Debian: apt-get install clang-14 libclang-rt-14-dev; launch/setup-fuzz)"
    exit 77
  fi
  read -r cc cxx <<<"$tools"
  local launcher=()
  command -v ccache >/dev/null 2>&1 && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache)
  if [ ! -f "$out/build.ninja" ]; then
    mkdir -p "$out"
    cmake -S "$root/tests/fuzz" -B "$out" -G Ninja -DCMAKE_C_COMPILER="$cc" -DCMAKE_CXX_COMPILER="$cxx" \
      "${launcher[@]}" >"$out/configure.log" 2>&1 || { cat "$out/configure.log"; exit 1; }
  fi
  cmake --build "$out" -j "$(nproc)" 2>&1 | grep -vE '^\[[0-9]+/[0-9]+\] '
  [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "fuzz build failed" >&2; exit 1; }
}

# run_target NAME WORKDIR ARGS...: one libFuzzer run from the source directory (the config
# target resolves configs/ paths), its log in WORKDIR/NAME.log; prints "NAME RUNS SECONDS STATUS".
run_target() {
  local t="$1" work="$2"
  shift 2
  mkdir -p "$work/corpus/$t" "$work/crashes/$t"
  local t0=$SECONDS
  (cd "$root" && "$out/fuzz_$t" "${limits[@]}" -artifact_prefix="$work/crashes/$t/" "$@" "$work/corpus/$t" \
    "$root/tests/fuzz/corpus/$t") >"$work/$t.log" 2>&1
  local rc=$?
  local runs
  runs="$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$work/$t.log" | tail -n 1)"
  local status=ok
  [ $rc -eq 0 ] || status="FAILED (exit $rc, see $work/$t.log)"
  printf '%-20s %12s %8s  %s\n' "$t" "${runs:-?}" "$((SECONDS - t0))" "$status"
  [ $rc -eq 0 ]
}

case "$mode" in
  build)
    build
    ;;
  ci)
    seconds="${3:?seconds per target}"
    build >/dev/null
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    printf '%-20s %12s %8s  %s\n' target executions seconds result
    fail=0
    for t in "${targets[@]}"; do
      run_target "$t" "$work" -max_total_time="$seconds" -print_final_stats=1 || { fail=1; tail -n 40 "$work/$t.log"; }
    done
    exit $fail
    ;;
  campaign)
    runs="${3:?executions per target}"
    jobs="${4:-1}"
    build >/dev/null
    work="$out/campaign"
    mkdir -p "$work"
    printf '%-20s %12s %8s  %s\n' target executions seconds result | tee "$work/summary.txt"
    fail=0
    running=0
    for t in "${targets[@]}"; do
      (nice -n 19 bash -c "$(declare -f run_target); out='$out'; root='$root'; limits=(${limits[*]}); \
        run_target $t '$work' -runs=$runs -print_final_stats=1" | tee -a "$work/summary.txt") &
      running=$((running + 1))
      if [ $running -ge "$jobs" ]; then wait -n || fail=1; running=$((running - 1)); fi
    done
    while [ $running -gt 0 ]; do wait -n || fail=1; running=$((running - 1)); done
    exit $fail
    ;;
  *)
    echo "unknown mode '$mode' (build, ci, campaign)" >&2
    exit 2
    ;;
esac
