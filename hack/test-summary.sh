#!/usr/bin/env bash
# Summary of a `cargo test` run, used by hack/test.sh.
#
#   hack/test-summary.sh CARGO_TEST_LOG SKIP_LOG [CARGO_EXIT_STATUS]
#
# Sums the `test result:` lines of CARGO_TEST_LOG. Tests that reported themselves skipped
# (`RV-SKIP <test>: <reason>` lines in SKIP_LOG, written by tests/common/skip.rs) passed as
# far as cargo knows; they are moved from "passed" to "skipped", as are tests cargo reports as ignored (with the reason the attribute gives).
# Prints the failed and skipped tests with their reasons, then, as the last line,
# `N passed, N failed, N skipped` (CI reads that line). Exits 1 if a test failed or
# CARGO_EXIT_STATUS is not 0 (a build error fails the run even with no failed test).
set -euo pipefail
log=$1
skips=$2
status=${3:-0}

read -r passed failed < <(awk '
  /^test result: / {
    for (i = 1; i <= NF; i++) {
      if ($(i) ~ /^passed;?$/) p += $(i - 1)
      if ($(i) ~ /^failed;?$/) f += $(i - 1)
    }
  }
  END { print p + 0, f + 0 }' "$log")

# One entry per skipped test (a test reports its skip once; dedupe anyway).
skipped_lines=()
if [ -s "$skips" ]; then
  mapfile -t skipped_lines < <(grep '^RV-SKIP ' "$skips" | awk -F': ' '!seen[$1]++' | sort)
fi
# "NAME: REASON" for each ignored test; cargo prints "test NAME ... ignored[, REASON]".
mapfile -t ignored < <(sed -n -e 's/^test \(.*\) \.\.\. ignored, \(.*\)$/\1: ignored: \2/p' \
  -e 's/^test \(.*\) \.\.\. ignored$/\1: ignored without a reason/p' "$log" | sort -u)
mapfile -t failed_names < <(sed -n 's/^test \(.*\) \.\.\. FAILED$/\1/p' "$log" | sort -u)

nskip=${#skipped_lines[@]}
passed=$((passed - nskip))
if [ "$passed" -lt 0 ]; then
  echo "test-summary: more skips ($nskip) than passed tests; stale $skips?" >&2
  passed=0
fi

echo "== summary"
for n in "${failed_names[@]}"; do echo "failed:  $n"; done
for l in "${skipped_lines[@]}"; do echo "skipped: ${l#RV-SKIP }"; done
for n in "${ignored[@]}"; do echo "skipped: $n"; done
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then
  echo "cargo test exited with status $status (a build error, or a test binary that crashed)"
fi
echo "$passed passed, $failed failed, $((nskip + ${#ignored[@]})) skipped"
[ "$failed" -eq 0 ] && [ "$status" -eq 0 ]
