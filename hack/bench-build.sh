#!/usr/bin/env bash
# Benchmark (not a test): build the same ~1 GiB tree with `rafs-image create` and with
# `tar | zstd -3`, print both wall times and the ratio.
#
# usage: hack/bench-build.sh [WORKDIR]
#   RAFS_IMAGE=path/to/rafs-image   use this binary (default: build target/release/rafs-image)
#   BENCH_MIB=1024                  size of the big file part of the tree
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-$(mktemp -d /tmp/rafs-bench.XXXXXX)}
mib=${BENCH_MIB:-1024}
if [[ -z "${RAFS_IMAGE:-}" ]]; then
    cargo build --release --bin rafs-image >&2
    RAFS_IMAGE=target/release/rafs-image
fi
src="$work/src"
if [[ ! -d "$src" ]]; then
    echo "generating a ~${mib} MiB tree in $src" >&2
    python3 tests/builder_tools/mktree.py "$src" 1 --big "$mib" --files 2000 >&2
fi
du -sh --apparent-size "$src" >&2
sync

now() { date +%s.%N; }

rm -rf "$work/blobs" "$work/image.boot"
t0=$(now)
"$RAFS_IMAGE" create --bootstrap "$work/image.boot" --blob-dir "$work/blobs" "$src"
t1=$(now)
tar -C "$src" -cf - . | zstd -3 -q -o "$work/tree.tar.zst" -f
t2=$(now)

rafs=$(echo "$t1 - $t0" | bc -l)
tarz=$(echo "$t2 - $t1" | bc -l)
blob=$(du -b "$work"/blobs/* | awk '{s+=$1} END {print s}')
zst=$(stat -c %s "$work/tree.tar.zst")
printf 'rafs-image create: %.2f s (blob %d bytes, %s threads)\n' "$rafs" "$blob" "$(nproc)"
printf 'tar | zstd -3    : %.2f s (%d bytes)\n' "$tarz" "$zst"
printf 'ratio (tar|zstd / rafs-image): %.2fx\n' "$(echo "$tarz / $rafs" | bc -l)"
