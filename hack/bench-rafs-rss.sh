#!/usr/bin/env bash
# Benchmark (not a test): RssAnon and CPU of the daemon after reading a whole RAFS image in
# FUSE mode twice (cache cold, then warm with the page cache dropped). The image: N small
# files (default 20000, 2-5 KiB) and one 128 MiB file, built with our rafs-image; localfs
# backend, blobcache. With NYDUSD set, upstream nydusd serves the same image in the same run.
#
#   hack/bench-rafs-rss.sh [N]        (release build; root: FUSE mount, drop_caches)
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-20000}"
cargo build --release -q --bin rafs-virtiofsd --bin rafs-image
W="$(mktemp -d /var/tmp/rafs-rss.XXXXXX)"
trap 'umount -l "$W/mnt" 2>/dev/null || true; rm -rf "$W"' EXIT
mkdir -p "$W/src" "$W/img/blobs" "$W/cache" "$W/mnt"
python3 - "$W/src" "$N" <<'EOF'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, "small", "d%d" % (i // 1000))
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "f%d" % i), "wb") as f:
        f.write(os.urandom(2048 + (i % 7) * 512))
with open(os.path.join(root, "big.bin"), "wb") as f:
    for _ in range(128):
        f.write(os.urandom(1 << 20))
EOF
target/release/rafs-image create -B "$W/img/image.boot" -D "$W/img/blobs" "$W/src" >/dev/null
cat > "$W/cfg.json" <<EOF
{"device":{"backend":{"type":"localfs","config":{"dir":"$W/img/blobs"}},
 "cache":{"type":"blobcache","config":{"work_dir":"$W/cache"}}},
 "mode":"direct","digest_validate":false}
EOF

run() { # NAME CMD...: mount, read all twice, print the row
  local name="$1"; shift
  rm -rf "$W/cache"/*
  "$@" >/dev/null 2>&1 &
  local pid=$!
  for _ in $(seq 100); do mountpoint -q "$W/mnt" && break; sleep 0.1; done
  find "$W/mnt" -type f -exec cat {} + >/dev/null
  echo 3 > /proc/sys/vm/drop_caches
  find "$W/mnt" -type f -exec cat {} + >/dev/null
  local rss ticks
  rss=$(awk '/RssAnon/ {print $2}' "/proc/$pid/status")
  ticks=$(awk '{print $14+$15}' "/proc/$pid/stat")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  umount -l "$W/mnt" 2>/dev/null || true
  awk -v n="$name" -v r="$rss" -v t="$ticks" -v hz="$(getconf CLK_TCK)" \
    'BEGIN { printf "| %s | %s KiB | %.2f s |\n", n, r, t / hz }'
}

echo "| daemon | RssAnon after cold+warm read of $N files + 128 MiB | daemon CPU |"
echo "|---|---|---|"
run rafs-virtiofsd target/release/rafs-virtiofsd fuse --mountpoint "$W/mnt" \
  --bootstrap "$W/img/image.boot" --config "$W/cfg.json" --log-level warn
if [ -n "${NYDUSD:-}" ]; then
  run nydusd "$NYDUSD" --mountpoint "$W/mnt" --bootstrap "$W/img/image.boot" \
    --config "$W/cfg.json" --log-level warn --rlimit-nofile 0
else
  echo "(nydusd skipped: set NYDUSD to compare)"
fi
