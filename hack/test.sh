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
echo "== cargo test"
cargo test --all-targets 2>&1 | tee /tmp/rafs-cargo-test.log
