#!/usr/bin/env bash
# SIGKILL inside every phase of the checkpoint commit, and at random moments of a run: resume=auto
# goes on from the last committed checkpoint, and the finished run equals an uninterrupted one bit
# for bit (losses, gradient norms, final weights).
#   kill.sh MOEKIT_BINARY SOURCE_DIR CKPT_TOOL
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.bash" "$@"

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

# SIGKILL at random moments (a fixed seed): once the run has logged 1-3 more steps, after 0-49 ms
# more (mid-step or mid-checkpoint), each time resumed, until two kills have landed; then the run
# is left to finish. A run that finished before its kill is started afresh.
RANDOM=14
run="$tmp/random"
kills=0
steps_logged() { [ -f "$run/metrics.jsonl" ] && wc -l <"$run/metrics.jsonl" || echo 0; }
for attempt in $(seq 1 10); do
  args=(--set run_dir="$run")
  [ -d "$run" ] && args+=(--set resume=auto)
  target=$(($(steps_logged) + 1 + RANDOM % 3))
  # exec: $! must be moekit itself, not a subshell around it
  (exec "$moekit" train "${small[@]}" "${args[@]}" >/dev/null 2>"$tmp/random.log") &
  pid=$!
  if [ $kills -lt 2 ]; then
    while kill -0 $pid 2>/dev/null && [ "$(steps_logged)" -lt $target ]; do sleep 0.005; done
    sleep "0.0$((RANDOM % 50))"
    kill -9 $pid 2>/dev/null
  fi
  wait $pid 2>/dev/null
  rc=$?
  if [ $rc -eq 137 ]; then
    kills=$((kills + 1))
  elif [ $rc -ne 0 ]; then
    bad "random kill $attempt: rc=$rc: $(tail -2 "$tmp/random.log")"
    break
  elif [ $kills -ge 2 ]; then
    break
  else
    rm -rf "$run"  # finished before the kill landed: again, from scratch
    kills=0
  fi
done
if [ -f "$run/summary.json" ] && [ $kills -ge 2 ]; then ok "random kills: finished after $kills SIGKILLs"
else bad "random kills: $kills kill(s), summary.json $([ -f "$run/summary.json" ] && echo present || echo missing)"; fi
same_as_ref "random kills" "$run"

finish
