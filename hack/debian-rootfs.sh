#!/usr/bin/env bash
# A real Debian rootfs for the demo and the cold-start benchmark: debootstrap bookworm
# minbase, as a tar (numeric owners), made once and cached. Progress goes to stderr; stdout
# is the tar's path.
#
#   hack/debian-rootfs.sh [OUT_DIR]      (default target/debian-rootfs) -> OUT_DIR/rootfs.tar
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-${CARGO_TARGET_DIR:-target}/debian-rootfs}
mkdir -p "$out"
if [ ! -f "$out/rootfs.tar" ]; then
  command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >&2
  # The mirror apt already uses.
  mirror=$(grep -h -m1 -E '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
    | head -1 | sed -E 's/^URIs: *//; s/^deb +(\[[^]]*\] +)?//; s/ .*//' || true)
  mirror=${mirror:-http://deb.debian.org/debian}
  rm -rf "$out/rootfs"
  echo "debian-rootfs: debootstrap --variant=minbase bookworm from $mirror (once; log in $out/debootstrap.log)" >&2
  debootstrap --variant=minbase bookworm "$out/rootfs" "$mirror" > "$out/debootstrap.log" 2>&1 \
    || { tail -20 "$out/debootstrap.log" >&2; exit 1; }
  tar -C "$out/rootfs" --numeric-owner -cf "$out/rootfs.tar.tmp" .
  mv "$out/rootfs.tar.tmp" "$out/rootfs.tar"
  rm -rf "$out/rootfs"
fi
echo "$(cd "$out" && pwd)/rootfs.tar"
