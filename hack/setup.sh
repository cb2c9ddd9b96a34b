#!/usr/bin/env bash
# Installs everything the tests and the demo need on a fresh Debian bookworm machine.
# Idempotent: skips packages that are already installed.
set -euo pipefail
PKGS=(qemu-system-x86 linux-image-cloud-amd64 busybox-static cpio docker-registry skopeo fio
      erofs-utils fuse3 attr gcc libc6-dev python3 curl apache2-utils openssl libarchive-tools)
# The P2P test's stand-in scheduler (feature p2p-test, on when DFDAEMON is set) builds
# Dragonfly's protos.
[ -n "${DFDAEMON:-}" ] && PKGS+=(protobuf-compiler)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust (rustup) first" >&2; exit 1; }
rustup component list --installed 2>/dev/null | grep -q clippy || rustup component add clippy rustfmt >/dev/null 2>&1 || true
echo "setup: ok"
