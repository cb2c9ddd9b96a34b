#!/usr/bin/env bash
# Runs every test: setup on a fresh Debian bookworm machine, fmt, clippy, unit and
# integration tests, and the guest tests (real QEMU VMs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash hack/setup.sh
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets -- -D warnings
echo "== guest initramfs (hack/mkinitramfs.sh; cached under target/guest)"
bash hack/mkinitramfs.sh
# Optional reference peer for the guest tests: upstream virtiofsd, when installed.
if [ -z "${RV_UPSTREAM_VIRTIOFSD:-}" ]; then
  for c in "$(command -v virtiofsd || true)" /usr/libexec/virtiofsd; do
    if [ -n "$c" ] && [ -x "$c" ]; then export RV_UPSTREAM_VIRTIOFSD="$c"; break; fi
  done
fi
echo "== cargo test (unit, integration and guest tests; guest tests boot QEMU VMs)"
cargo test --all-targets 2>&1 | tee /tmp/rafs-cargo-test.log
