#!/usr/bin/env bash
# End-to-end demo: a real Debian rootfs as a RAFS image in a local registry, started in a VM
# before it is downloaded. Builds (once, cached under target/) a debootstrap bookworm rootfs
# and its RAFS image, pushes the blob to a docker-registry on 127.0.0.1, starts the daemon
# (release build), boots a guest, mounts the image through the API from the registry backend
# with a cold cache while the guest waits, runs `chroot ROOT /bin/bash -c 'cat
# /etc/os-release; ls /usr/bin | wc -l'` over an overlay with a passthrough upper, and prints
# what it cost: bytes fetched from the registry against the image size, and the time from the
# mount to the first output. Runs on a fresh Debian bookworm machine (installs what it needs).
#
#   hack/demo.sh          RV_DEMO_PROGRAM='...' runs another command from the image
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-$(pwd)/target}"
t_start=$(date +%s)
step() { printf '\n== %s  (%ss)\n' "$*" "$(($(date +%s) - t_start))"; }

step "1. install what the demo needs (hack/setup.sh)"
bash hack/setup.sh

step "2. release build of rafs-virtiofsd, rafs-image and the demo runner"
cargo build --release --bins --quiet
cargo bench --bench demo --no-run --quiet
bin="$target/release"

step "3. a real Debian rootfs (debootstrap bookworm minbase; once, cached: hack/debian-rootfs.sh)"
tar="$(bash hack/debian-rootfs.sh)"
echo "$tar: $(du -h "$tar" | cut -f1), $(tar -tf "$tar" | wc -l) entries"

step "4. its RAFS image, built with rafs-image (once per rootfs, cached under target/demo)"
img="$target/demo/image-$(stat -c %s-%Y "$tar")"
if [ ! -s "$img/image.boot" ]; then
  rm -rf "$img.tmp"
  mkdir -p "$img.tmp/blobs"
  echo "rafs-image create -t tar-rafs --fs-version 6 --compressor zstd --bootstrap $img/image.boot --blob-dir $img/blobs $tar"
  t0=$(date +%s%N)
  "$bin/rafs-image" create -t tar-rafs --fs-version 6 --compressor zstd \
    --bootstrap "$img.tmp/image.boot" --blob-dir "$img.tmp/blobs" "$tar"
  echo "built in $((($(date +%s%N) - t0) / 1000000)) ms"
  rm -rf "$img"
  mv "$img.tmp" "$img"
else
  echo "reusing $img"
fi
"$bin/rafs-image" inspect "$img/image.boot" > "$img/inspect.txt"
sed -n '1,4p' "$img/inspect.txt"
ls -l "$img/image.boot" "$img/blobs"

step "5. the guest initramfs (hack/mkinitramfs.sh; cached under target/guest)"
bash hack/mkinitramfs.sh

step "6. registry, daemon, guest: mount from the registry with a cold cache, run from the image"
RV_DEMO_BOOTSTRAP="$img/image.boot" RV_DEMO_BLOB_DIR="$img/blobs" \
  cargo bench --bench demo --quiet
