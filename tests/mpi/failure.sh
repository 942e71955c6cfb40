#!/usr/bin/env bash
# A rank that throws, is killed or stops answering (hang: the watchdog, 2 s) must bring the
# whole job down within seconds, with a non-zero exit and (throw, hang) a message naming the rank.
# usage: failure.sh MPIEXEC FAIL_RANK_BINARY MODE [mpiexec flags...]
set -u
mpiexec=$1; bin=$2; mode=$3; shift 3
out=$(mktemp)
start=$(date +%s)
timeout 60 "$mpiexec" -np 3 "$@" "$bin" "$mode" >"$out" 2>&1
rc=$?
elapsed=$(( $(date +%s) - start ))
cat "$out"
fail() { echo "FAIL: $*"; rm -f "$out"; exit 1; }
[ "$rc" -ne 124 ] || fail "the job hung (killed by timeout after 60 s)"
[ "$rc" -ne 0 ] || fail "the job exited 0 after rank 1 failed"
[ "$elapsed" -le 20 ] || fail "the job took ${elapsed}s to go down (limit 20 s)"
if [ "$mode" = throw ]; then
  grep -q "rank 1 of 3" "$out" || fail "no message naming rank 1"
  grep -q "injected failure on rank 1" "$out" || fail "the exception's message was not printed"
fi
if [ "$mode" = hang ]; then
  grep -q "watchdog: step 7: all_reduce (4 KiB) on group 'world' (rank [02] of 3) has not finished after" "$out" ||
    fail "no watchdog message naming the step, the collective and the group"
  grep -qE "of its peers: (rank [02] on [^,]+, )?rank 1 on " "$out" ||
    fail "the watchdog message does not name rank 1 among the peers"
fi
rm -f "$out"
echo "OK: mode $mode, exit $rc after ${elapsed}s"
