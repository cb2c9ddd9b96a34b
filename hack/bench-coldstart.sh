#!/usr/bin/env bash
# Cold-start benchmark (not a test): RAFS lazily from the loopback registry against OCI
# download + unpack, for a debootstrap bookworm minbase rootfs. See docs/performance.md.
# Usage: hack/bench-coldstart.sh [RUNS]      (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
bash hack/setup.sh
command -v debootstrap >/dev/null || apt-get install -y debootstrap
out=target/bench-coldstart
mkdir -p "$out"
if [ ! -f "$out/rootfs.tar" ]; then
  # The mirror apt already uses.
  mirror=$(grep -h -m1 -E '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
    | head -1 | sed -E 's/^URIs: *//; s/^deb +(\[[^]]*\] +)?//; s/ .*//' || true)
  mirror=${mirror:-http://deb.debian.org/debian}
  rm -rf "$out/rootfs"
  echo "== debootstrap --variant=minbase bookworm from $mirror"
  debootstrap --variant=minbase bookworm "$out/rootfs" "$mirror" > "$out/debootstrap.log"
  tar -C "$out/rootfs" --numeric-owner -cf "$out/rootfs.tar.tmp" .
  mv "$out/rootfs.tar.tmp" "$out/rootfs.tar"
  rm -rf "$out/rootfs"
fi
bash hack/mkinitramfs.sh
RV_COLDSTART_RUNS=${1:-3} cargo bench --bench coldstart
