#!/usr/bin/env bash
# Builds the base initramfs of the guest tests and prints its path.
#
#   hack/mkinitramfs.sh [OUT_DIR]        (default OUT_DIR: target/guest)
#
# Contents: busybox-static, the kernel modules for virtio-pci, virtio-fs, fuse, overlay and
# erofs (with their dependencies, in load order, resolved from modules.dep), /init
# (hack/guest/init), /rv/lib.sh and the static helper /bin/rvhelper (hack/guest/rvhelper.c).
# The image is cached as OUT_DIR/initramfs-<kernel version>-<hash of its inputs>.cpio.gz; the
# workload is appended by the harness as a second archive, so this runs once per CI job.
#
# Environment: RV_KERNEL (kernel image; default: newest /boot/vmlinuz-*), RV_KERNEL_VERSION
# (default: derived from the kernel file name).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
out_dir="${1:-$root/target/guest}"
kernel="${RV_KERNEL:-$(ls -1 /boot/vmlinuz-* 2>/dev/null | sort -V | tail -n 1)}"
[ -n "$kernel" ] && [ -f "$kernel" ] || { echo "mkinitramfs: no kernel in /boot (install linux-image-cloud-amd64)" >&2; exit 1; }
kver="${RV_KERNEL_VERSION:-$(basename "$kernel" | sed 's/^vmlinuz-//')}"
moddir="/lib/modules/$kver"
[ -f "$moddir/modules.dep" ] || { echo "mkinitramfs: $moddir/modules.dep missing" >&2; exit 1; }
busybox="$(command -v busybox || true)"
[ -n "$busybox" ] || { echo "mkinitramfs: busybox missing (install busybox-static)" >&2; exit 1; }

key="$( (echo "$kver"; cat "$here/mkinitramfs.sh" "$here/guest/init" "$here/guest/lib.sh" "$here/guest/rvhelper.c"; sha256sum "$busybox") | sha256sum | cut -c1-16)"
out="$out_dir/initramfs-$kver-$key.cpio.gz"
mkdir -p "$out_dir"
exec 9>"$out_dir/.mkinitramfs.lock"
flock 9
if [ -s "$out" ]; then echo "$out"; exit 0; fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
img="$work/root"
mkdir -p "$img"/{bin,sbin,etc,proc,sys,dev,tmp,run,mnt,rv,lib/modules}
cp "$busybox" "$img/bin/busybox"
ln -s busybox "$img/bin/sh"

# Modules in load order: dependencies first (modules.dep lists a module's deps after the colon).
declare -A seen=()
order=()
add_mod() {
  local rel="$1" line deps d
  [ -n "${seen[$rel]:-}" ] && return 0
  seen[$rel]=1
  line="$(grep -E "^${rel//./\\.}:" "$moddir/modules.dep" || true)"
  [ -n "$line" ] || { echo "mkinitramfs: $rel not in modules.dep" >&2; exit 1; }
  deps="${line#*:}"
  # deps are listed nearest-first; load them in reverse so the deepest comes first
  local arr=($deps) i
  for ((i=${#arr[@]}-1; i>=0; i--)); do add_mod "${arr[$i]}"; done
  order+=("$rel")
}
for name in virtio_pci virtiofs fuse overlay erofs; do
  rel="$(grep -E "/$name\.ko(\.[a-z]+)?:" "$moddir/modules.dep" | cut -d: -f1 | head -n 1)"
  if [ -z "$rel" ]; then
    # built in? then nothing to load
    grep -qE "/$name\.ko" "$moddir/modules.builtin" 2>/dev/null && continue
    echo "mkinitramfs: module $name not found for $kver" >&2; exit 1
  fi
  add_mod "$rel"
done
: > "$img/etc/rv-modules"
for rel in "${order[@]}"; do
  base="$(basename "$rel")"
  case "$base" in
    *.ko) cp "$moddir/$rel" "$img/lib/modules/$base" ;;
    *.ko.xz) xz -dc "$moddir/$rel" > "$img/lib/modules/${base%.xz}"; base="${base%.xz}" ;;
    *.ko.zst) zstd -qdc "$moddir/$rel" > "$img/lib/modules/${base%.zst}"; base="${base%.zst}" ;;
    *.ko.gz) gzip -dc "$moddir/$rel" > "$img/lib/modules/${base%.gz}"; base="${base%.gz}" ;;
  esac
  echo "$base" >> "$img/etc/rv-modules"
done

gcc -static -O2 -o "$img/bin/rvhelper" "$here/guest/rvhelper.c"
install -m 0755 "$here/guest/init" "$img/init"
install -m 0644 "$here/guest/lib.sh" "$img/rv/lib.sh"

(cd "$img" && find . -print0 | sort -z | cpio --null -o -H newc -R 0:0 --quiet) | gzip -9 > "$work/initramfs.cpio.gz"
mv "$work/initramfs.cpio.gz" "$out"
echo "$out"
