# Helpers sourced by every guest workload (see guest-tests/harness/mod.rs for the host side).
# Marker lines start with "@@RV:" so the host can tell them from kernel and command output.
RV_FAILS=0

# rv_check NAME CMD...: runs CMD; prints "@@RV:OK NAME" or "@@RV:FAIL NAME rc=N".
rv_check() {
  rv_name="$1"; shift
  if "$@"; then
    echo "@@RV:OK $rv_name"
  else
    echo "@@RV:FAIL $rv_name rc=$?"
    RV_FAILS=$((RV_FAILS + 1))
  fi
}

# rv_fail NAME MESSAGE: records a failure.
rv_fail() {
  echo "@@RV:FAIL $1 $2"
  RV_FAILS=$((RV_FAILS + 1))
}

# rv_data KEY VALUE...: reports a value to the host.
rv_data() {
  k="$1"; shift
  echo "@@RV:DATA $k $*"
}

# rv_manifest KEY DIR [FLAGS]: reports a tree manifest (lines "@@RV:M KEY <hexpath> ...").
rv_manifest() {
  k="$1"; d="$2"; shift 2
  rvhelper manifest "$d" --prefix "@@RV:M $k " "$@" || rv_fail "manifest-$k" "rvhelper manifest $d failed"
  echo "@@RV:MEND $k"
}

# rv_sync NAME: asks the host to do step NAME and waits for its answer line on the console.
# Returns 0 when the host answered "ok NAME".
rv_sync() {
  echo "@@RV:SYNC $1"
  while read -r rv_reply rv_arg; do
    if [ "$rv_arg" = "$1" ]; then
      [ "$rv_reply" = ok ] && return 0
      return 1
    fi
  done
  return 1
}

# rv_done: ends the workload; the exit status is the number of failed checks.
rv_done() {
  exit "$RV_FAILS"
}
