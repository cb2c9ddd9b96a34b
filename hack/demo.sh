#!/usr/bin/env bash
# End-to-end demo: build an image, serve it to a real VM over virtio-fs, verify it there and
# write through an overlay. Runs on a fresh Debian bookworm machine (installs what it needs).
#
#   hack/demo.sh            (set KEEP=1 to keep the temp dir)
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"
step() { printf '\n== %s\n' "$*"; }

step "1. install what the demo needs (hack/setup.sh)"
bash hack/setup.sh

step "2. build rafs-virtiofsd and rafs-image"
cargo build --bins --quiet
bin="$root/target/debug"

work="$(mktemp -d /tmp/rafs-demo.XXXXXX)"
daemon_pid=""
cleanup() {
  [ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null || true
  [ "${KEEP:-0}" = 1 ] && echo "kept $work" || rm -rf "$work"
}
trap cleanup EXIT

step "3. make a sample tree in $work/src"
src="$work/src"
mkdir -p "$src/etc" "$src/bin" "$src/data"
echo "hello from a RAFS image" > "$src/hello.txt"
printf 'demo:x:1000:1000::/home/demo:/bin/sh\n' > "$src/etc/passwd"
head -c 3000000 /dev/urandom > "$src/data/random.bin"
seq 1 200000 > "$src/data/numbers.txt"
ln -s ../hello.txt "$src/bin/link-to-hello"
chmod 0750 "$src/data"
setfattr -n user.demo -v "xattr value" "$src/hello.txt"
find "$src" | sort | sed "s|^$work/||"

step "4. build a RAFS v6 image with rafs-image"
mkdir -p "$work/img/blobs"
"$bin/rafs-image" create --bootstrap "$work/img/image.boot" --blob-dir "$work/img/blobs" \
  --fs-version 6 --compressor zstd --chunk-size 0x10000 "$src"
[ -s "$work/img/image.boot" ] || { echo "demo: rafs-image wrote no bootstrap" >&2; exit 1; }
ls -l "$work/img" "$work/img/blobs"

step "5. start rafs-virtiofsd and mount the image and a writable share through its API"
share="$work/share"
mkdir -p "$share/c1/fs" "$share/c1/work"
"$bin/rafs-virtiofsd" virtiofs --sock "$work/vfs.sock" --apisock "$work/api.sock" \
  --log-level info 2> "$work/daemon.log" &
daemon_pid=$!
for _ in $(seq 100); do
  curl -sf --unix-socket "$work/api.sock" http://unix/api/v1/daemon 2>/dev/null | grep -q RUNNING && break
  sleep 0.1
done
curl -sf --unix-socket "$work/api.sock" http://unix/api/v1/daemon; echo
config="$(printf '{"device":{"backend":{"type":"localfs","config":{"dir":"%s"}},"cache":{"type":""}},"mode":"direct","digest_validate":true,"enable_xattr":true}' "$work/img/blobs")"
api_mount() { # MOUNTPOINT FS_TYPE SOURCE CONFIG
  local body
  body="$(python3 -c 'import json,sys; print(json.dumps({"fs_type":sys.argv[1],"source":sys.argv[2],"config":sys.argv[3]}))' "$2" "$3" "$4")"
  code="$(curl -s -o "$work/resp" -w '%{http_code}' --unix-socket "$work/api.sock" \
    -X POST -H 'Content-Type: application/json' -d "$body" "http://unix/api/v1/mount?mountpoint=$1")"
  echo "POST /api/v1/mount?mountpoint=$1 ($2) -> $code $(cat "$work/resp")"
  [ "$code" = 204 ]
}
api_mount /containers passthrough_fs "$share" ""
api_mount /rafs/c1/lowerdir rafs "$work/img/image.boot" "$config"

step "6. build the guest initramfs and the workload"
base="$(bash hack/mkinitramfs.sh)"
want_random="$(sha256sum "$src/data/random.bin" | cut -d' ' -f1)"
want_numbers="$(sha256sum "$src/data/numbers.txt" | cut -d' ' -f1)"
mkdir -p "$work/wl/rv"
cat > "$work/wl/rv/workload.sh" <<WL
export L=\$RV_MNT/rafs/c1/lowerdir
echo "--- guest: ls -lR of the RAFS image"
ls -lR \$L
echo "--- guest: verify file contents"
rv_check hello sh -c '[ "\$(cat \$L/hello.txt)" = "hello from a RAFS image" ]'
rv_check random.bin sh -c '[ "\$(sha256sum \$L/data/random.bin | cut -d" " -f1)" = $want_random ]'
rv_check numbers.txt sh -c '[ "\$(sha256sum \$L/data/numbers.txt | cut -d" " -f1)" = $want_numbers ]'
rv_check symlink sh -c '[ "\$(readlink \$L/bin/link-to-hello)" = ../hello.txt ]'
rv_check xattr sh -c '[ "\$(rvhelper getxattr \$L/hello.txt user.demo)" = $(printf 'xattr value' | od -An -tx1 | tr -d ' \n') ]'
echo "--- guest: overlay (RAFS lower, passthrough upper) and write through it"
mkdir -p /rootfs
S=\$RV_MNT/containers/c1
rv_check overlay mount -t overlay overlay -o lowerdir=\$L,upperdir=\$S/fs,workdir=\$S/work,index=off /rootfs
rv_check write sh -c 'echo "written in the guest" > /rootfs/guest-note.txt && echo more >> /rootfs/hello.txt && rm /rootfs/etc/passwd'
ls -l /rootfs /rootfs/etc
rv_check umount umount /rootfs
WL
(cd "$work/wl" && find . | cpio -o -H newc -R 0:0 --quiet | gzip) > "$work/workload.cpio.gz"
cat "$base" "$work/workload.cpio.gz" > "$work/initrd.gz"

step "7. boot a VM (QEMU q35) that mounts the virtio-fs share"
accel="q35,accel=tcg"; cpu=max
if [ -r /dev/kvm ] && [ -w /dev/kvm ] && [ ! -e /sys/module/kvm_pvm ]; then accel="q35,accel=kvm"; cpu=host; fi
echo "machine $accel, cpu $cpu"
kernel="$(ls -1 /boot/vmlinuz-* | sort -V | tail -n 1)"
timeout 300 qemu-system-x86_64 -M "$accel" -cpu "$cpu" -smp 1 -m 1G \
  -object memory-backend-memfd,id=mem,size=1G,share=on -numa node,memdev=mem \
  -chardev socket,id=char0,path="$work/vfs.sock" \
  -device vhost-user-fs-pci,chardev=char0,tag=demo,queue-size=1024 \
  -kernel "$kernel" -initrd "$work/initrd.gz" \
  -append "console=ttyS0 quiet panic=-1 rv.tag=demo rv.mnt=/mnt" \
  -nodefaults -no-user-config -display none -serial stdio -no-reboot < /dev/null \
  | tr -d '\r' | tee "$work/console.log" | sed 's/^/  guest| /'

step "8. check the results"
grep -q '^@@RV:EXIT 0$' "$work/console.log" || { echo "FAILED: the guest workload reported failures:"; grep '@@RV:FAIL' "$work/console.log" || true; exit 1; }
echo "guest checks passed: $(grep -c '^@@RV:OK' "$work/console.log")"
echo "host upper dir after the guest wrote through the overlay:"
ls -la "$share/c1/fs" "$share/c1/fs/etc"
[ "$(cat "$share/c1/fs/guest-note.txt")" = "written in the guest" ]
[ -c "$share/c1/fs/etc/passwd" ] && echo "etc/passwd is a whiteout (char 0:0): deleted in the guest"

step "9. shut down the daemon (SIGTERM)"
kill -TERM "$daemon_pid"; wait "$daemon_pid" || true; daemon_pid=""
echo "demo: ok"
