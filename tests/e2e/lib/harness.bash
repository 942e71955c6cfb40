# Shared helpers for the command-line test scripts (sourced; kept out of tests/e2e/*.sh so ctest
# does not run it as a test). Counts results in $pass / $fail.
#   ok NAME | bad NAME | expect_fail NAME SUBSTRING cmd... | finish
pass=0
fail=0
ok() { echo "ok   - $1"; pass=$((pass + 1)); }
bad() { echo "FAIL - $1"; fail=$((fail + 1)); }

# expect_fail NAME SUBSTRING cmd...: non-zero exit and SUBSTRING in stderr.
expect_fail() {
  local name="$1" want="$2"
  shift 2
  local err
  err="$("$@" 2>&1 >/dev/null)"
  local rc=$?
  if [ $rc -ne 0 ] && grep -qF -- "$want" <<<"$err"; then ok "$name"; else bad "$name (rc=$rc, stderr: $err)"; fi
}

# finish: print the tally and exit non-zero if anything failed.
finish() {
  echo "$pass passed, $fail failed"
  [ "$fail" -eq 0 ]
}
