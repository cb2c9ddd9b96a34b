#!/usr/bin/env bash
# Runs every test: setup on a fresh Debian bookworm machine, fmt, clippy, unit and
# integration tests, and the guest tests (real QEMU VMs). Ends with the failed and skipped
# tests (with the reason of each skip) and, as the last line, `N passed, N failed, N skipped`.
# Exits non-zero if anything failed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash hack/setup.sh
# The P2P test against real dfdaemon peers needs DFDAEMON and the p2p-test feature (its
# stand-in scheduler); every cargo command gets the same features so nothing builds twice.
features=()
[ -n "${DFDAEMON:-}" ] && features=(--features p2p-test)
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets "${features[@]}" -- -D warnings
echo "== guest initramfs (hack/mkinitramfs.sh; cached under target/guest)"
bash hack/mkinitramfs.sh
# Optional peers: use what the machine has. Each test that needs one reports a skip without it.
found() { # VAR NAME [EXTRA_PATH...]: export VAR as the first executable found, unless set
  local var=$1 name=$2 c
  shift 2
  if [ -z "${!var:-}" ]; then
    for c in "$(command -v "$name" || true)" "$@"; do
      if [ -n "$c" ] && [ -x "$c" ]; then export "$var=$c"; break; fi
    done
  fi
  echo "$var=${!var:-} ($name$([ -n "${!var:-}" ] || echo ': not found; its tests will be skipped'))"
}
echo "== optional binaries"
found RV_UPSTREAM_VIRTIOFSD virtiofsd /usr/libexec/virtiofsd
found NYDUSD nydusd
found NYDUS_IMAGE nydus-image
found RV_CLOUD_HYPERVISOR cloud-hypervisor
echo "DFDAEMON=${DFDAEMON:-} (dfdaemon$([ -n "${DFDAEMON:-}" ] || echo ': not set; the P2P test will be skipped'))"
target="${CARGO_TARGET_DIR:-$(pwd)/target}"
mkdir -p "$target"
export RV_SKIP_LOG="${RV_SKIP_LOG:-$target/rv-skips.txt}"
: > "$RV_SKIP_LOG"
log="$target/rv-cargo-test.log"
echo "== cargo test (unit, integration and guest tests; guest tests boot QEMU VMs)"
status=0
cargo test --all-targets "${features[@]}" --no-fail-fast 2>&1 | tee "$log" || status=${PIPESTATUS[0]}
bash hack/test-summary.sh "$log" "$RV_SKIP_LOG" "$status"
