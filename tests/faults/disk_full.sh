#!/usr/bin/env bash
# A full disk during a training checkpoint, an upcycle and an export: exit code 1 with a clear
# error naming the file (never a crash: HDF5 once segfaulted at exit), the previous state intact
# (committed checkpoints, `latest`, an existing upcycle output), no temp file or directory left
# behind, and the run resumable once there is space again. The full disk is a small tmpfs the
# test mounts (as root; elsewhere a file-size limit stands in), and a file-size limit (ulimit -f:
# writes fail with EFBIG) where a writer checks the free space first (upcycle) or a failure in the
# middle of a large file is wanted.
#   disk_full.sh MOEKIT_BINARY SOURCE_DIR CKPT_TOOL
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.bash" "$@"
fs="$tmp/fs"
mkdir -p "$fs"
cleanup() {
  mountpoint -q "$fs" && umount "$fs"
  rm -rf "$tmp"
}
trap cleanup EXIT

if [ "$(id -u)" = 0 ] && mount -t tmpfs -o size=16m tmpfs "$fs" 2>/dev/null; then
  mode=tmpfs
  want_err="No space left on device"
else
  mode=ulimit
  want_err="File too large"
fi
echo "# disk full by: $mode"

# full [FREE_KIB]: from now on at most FREE_KIB (default 256) can be written: the tmpfs is filled
# up to that, or (ulimit mode) FULL_LIMIT holds the per-file limit for `limited`.
full() {
  local free_kib="${1:-256}"
  if [ $mode = tmpfs ]; then
    rm -f "$fs/filler"
    dd if=/dev/zero of="$fs/filler" bs=4k count=$(($(df -k --output=avail "$fs" | tail -n 1) / 4 - free_kib / 4)) \
      status=none 2>/dev/null
  else
    FULL_LIMIT=$((free_kib * 2))  # ulimit -f counts 512-byte blocks
  fi
}
space() { rm -f "$fs/filler"; FULL_LIMIT=unlimited; }
FULL_LIMIT=unlimited
limited() { (ulimit -f "$FULL_LIMIT" && exec "$@"); }

# expect_disk_full NAME LOG RC: exit code 1 (not a signal) and the error on stderr.
expect_disk_full() { expect_exit1 "$1: exit 1, '$want_err'" "$2" "$3" "moekit: error:" "$want_err"; }

# --- training checkpoints ----------------------------------------------------------------------
run="$fs/run"
keep1=(--set checkpoint.keep=1)
train --set run_dir="$run" --set train.steps=4 "${keep1[@]}" >/dev/null 2>"$tmp/t1.log" ||
  bad "first run: $(tail -2 "$tmp/t1.log")"
snapshot() { (cd "$run/checkpoints" && find . -type f | sort | xargs md5sum); }
snapshot >"$tmp/before"
full 256  # room for the logs, not for the next checkpoint (4.4 MB)
limited "$moekit" train "${small[@]}" "${keep1[@]}" --set run_dir="$run" --set resume=auto >/dev/null 2>"$tmp/t2.log"
expect_disk_full "checkpoint on a full disk" "$tmp/t2.log" $?
grep -q "rank_00000.h5" "$tmp/t2.log" && ok "the error names the rank file" ||
  bad "the error names no file: $(tail -c 300 "$tmp/t2.log")"
snapshot | diff -q - "$tmp/before" >/dev/null && ok "committed checkpoints and latest untouched" ||
  bad "the checkpoints changed: $(snapshot | diff - "$tmp/before" | head -5)"
leftover="$(cd "$run/checkpoints" && ls | grep -E '\.tmp|\.partial|\.sum' || true)"
[ -z "$leftover" ] && ok "no temp file or directory left" || bad "left behind: $leftover"

# The disk fills exactly while `latest` is updated (fault injection): the step is committed, the
# pointer is not moved, and no empty latest.tmp.<pid> stays behind.
space
MOEKIT_DEBUG_FAULT=ckpt.latest:enospc train --set run_dir="$run" "${keep1[@]}" --set resume=auto >/dev/null \
  2>"$tmp/t3.log"
rc=$?
if [ $rc -eq 1 ] && grep -q "latest.tmp" "$tmp/t3.log" && [ "$(cat "$run/checkpoints/latest")" = step_00000004 ] &&
  ! ls "$run/checkpoints" | grep -q "latest.tmp"; then
  ok "full disk while updating latest: latest unchanged, no latest.tmp left"
else
  bad "full disk while updating latest (rc=$rc, latest $(cat "$run/checkpoints/latest")): $(ls "$run/checkpoints")"
fi
# With space again the run resumes (from step 4, which `latest` names) and finishes.
train --set run_dir="$run" "${keep1[@]}" --set resume=auto >"$tmp/t4.log" 2>&1
rc=$?
[ $rc -eq 0 ] && [ "$(resumed_from "$tmp/t4.log")" = 4 ] && ok "resumes from step 4 once there is space" ||
  bad "resume after the disk was freed (rc=$rc): $(tail -3 "$tmp/t4.log")"

# --- export ------------------------------------------------------------------------------------
full 256
ls "$fs" >"$tmp/fs.before"
limited "$moekit" export --checkpoint "$run" --out "$fs/hf" --dtype fp32 >/dev/null 2>"$tmp/e1.log"
expect_disk_full "export on a full disk" "$tmp/e1.log" $?
ls "$fs" | diff -q - "$tmp/fs.before" >/dev/null && ok "export: nothing left behind" ||
  bad "export left: $(ls "$fs" | diff - "$tmp/fs.before")"
space
"$moekit" export --checkpoint "$run" --out "$fs/hf" --dtype fp32 >/dev/null 2>&1 && ok "export once there is space" ||
  bad "export with space"

# --- upcycle: an existing output is replaced only by a complete new one --------------------------
"$moekit" init --model configs/models/tiny-dense.yaml --out "$tmp/dense" --dtype f32 >/dev/null 2>&1 || bad "init dense"
up=(upcycle --config configs/upcycle/tiny.yaml --dense "$tmp/dense" --threads 1 --io-threads 1)
out="$tmp/up/moe"
mkdir -p "$tmp/up"
"$moekit" "${up[@]}" --out "$out" >/dev/null 2>"$tmp/u1.log" || bad "first upcycle: $(tail -2 "$tmp/u1.log")"
(cd "$out" && find . -type f | sort | xargs md5sum) >"$tmp/moe.md5"
ls -a "$tmp/up" >"$tmp/up.before"
# A file-size limit: the shard write fails in the middle (the free-space check cannot see it).
(ulimit -f 512 && exec "$moekit" "${up[@]}" --out "$out" --overwrite --set seed=7) >/dev/null 2>"$tmp/u2.log"
expect_exit1 "upcycle past a file-size limit: exit 1, 'File too large'" "$tmp/u2.log" $? "moekit: error:" "File too large"
(cd "$out" && find . -type f | sort | xargs md5sum) | diff -q - "$tmp/moe.md5" >/dev/null &&
  ok "upcycle: the previous output is intact" || bad "upcycle: the previous output changed"
ls -a "$tmp/up" | diff -q - "$tmp/up.before" >/dev/null && ok "upcycle: no staging directory left" ||
  bad "upcycle left: $(ls -a "$tmp/up" | diff - "$tmp/up.before")"
# A full disk: refused before anything is written.
full 256
"$moekit" "${up[@]}" --out "$fs/moe" >/dev/null 2>"$tmp/u3.log"
rc=$?
[ $rc -eq 1 ] && grep -q "not enough disk space" "$tmp/u3.log" && [ ! -e "$fs/moe" ] &&
  ok "upcycle onto a full disk: refused before writing" || bad "upcycle onto a full disk: rc=$rc: $(tail -2 "$tmp/u3.log")"
space

finish
