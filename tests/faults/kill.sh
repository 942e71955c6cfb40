#!/usr/bin/env bash
# SIGKILL inside every phase of the checkpoint commit, and at random moments of a run: resume=auto
# goes on from the last committed checkpoint, and the finished run equals an uninterrupted one bit
# for bit (losses, gradient norms, final weights).
#   kill.sh MOEKIT_BINARY SOURCE_DIR CKPT_TOOL
set -uo pipefail
moekit="$1"
src="$2"
ckpt_tool="$3"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cd "$src"
source "$src/tests/faults/lib.bash"

make_ref

# Killed in the second commit (step 4): before it is published the resume starts from step 2;
# after the rename but before `latest` moved, `latest` still names step 2 (the complete step 4 is
# then redone and swapped in); after `latest`, from step 4.
for case in ckpt.rank_file:2 ckpt.meta:2 ckpt.install:2 ckpt.latest:2 ckpt.prune:4; do
  point="${case%%:*}" want="${case##*:}" run="$tmp/$point"
  MOEKIT_DEBUG_FAULT="$point@2" train --set run_dir="$run" >/dev/null 2>"$tmp/kill.log"
  rc=$?
  [ $rc -eq 137 ] || bad "killed at $point (rc=$rc): $(tail -2 "$tmp/kill.log")"
  train --set run_dir="$run" --set resume=auto >"$tmp/resume.log" 2>&1
  rc=$?
  got="$(resumed_from "$tmp/resume.log")"
  if [ $rc -eq 0 ] && [ "$got" = "$want" ]; then ok "killed at $point: resumed from step $got"
  else bad "killed at $point: rc=$rc, resumed from '$got', want $want: $(tail -2 "$tmp/resume.log")"; fi
  same_as_ref "killed at $point" "$run"
done

# SIGKILL at two random moments (a fixed seed; 10-70 % of how long the reference took on this
# machine), each time resumed, then left to finish.
RANDOM=14
run="$tmp/random"
kills=0
for attempt in 1 2 3; do
  args=(--set run_dir="$run")
  [ $attempt -gt 1 ] && args+=(--set resume=auto)
  # exec: $! must be moekit itself, not a subshell around it
  (exec "$moekit" train "${small[@]}" "${args[@]}" >/dev/null 2>"$tmp/random.log") &
  pid=$!
  if [ $attempt -lt 3 ]; then
    sleep "$(python3 -c "import sys; print($ref_ms * (10 + int(sys.argv[1])) / 100000)" $((RANDOM % 60)))"
    kill -9 $pid 2>/dev/null && kills=$((kills + 1))
  fi
  wait $pid 2>/dev/null
  rc=$?
  [ $rc -eq 0 ] || [ $rc -eq 137 ] || bad "random kill $attempt: rc=$rc: $(tail -2 "$tmp/random.log")"
done
if [ -f "$run/summary.json" ] && [ $kills -ge 1 ]; then ok "random kills: finished after $kills SIGKILL(s)"
else bad "random kills: $kills kill(s), summary.json $([ -f "$run/summary.json" ] && echo present || echo missing)"; fi
same_as_ref "random kills" "$run"

finish
