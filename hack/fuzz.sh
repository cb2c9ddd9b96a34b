#!/usr/bin/env bash
# Run each cargo-fuzz target of fuzz/ for a bounded time (default 60 s each).
#   hack/fuzz.sh [SECONDS] [TARGET...]
# Seeds come from tests/fixtures (bootstraps and blobs). Crashes land in
# fuzz/artifacts/<target>/; turn each into a regression test (tests/reader_corrupt.rs or
# fuzz/regressions/, which tests/fuzz_regressions.rs replays).
# Needs cargo-fuzz and a nightly toolchain; without them it says why and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(bootstrap ci_toc)

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: SKIP: cargo-fuzz is not installed (cargo install cargo-fuzz)"
    exit 0
fi
if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    echo "fuzz.sh: SKIP: no nightly toolchain (rustup toolchain install nightly); cargo-fuzz needs -Z sanitizer"
    exit 0
fi

seed() {
    local t=$1 dir=fuzz/corpus/$1
    mkdir -p "$dir"
    case $t in
        bootstrap)
            for f in tests/fixtures/images/*/image.boot tests/fixtures/images/*/image.external; do
                cp -f "$f" "$dir/$(basename "$(dirname "$f")")-$(basename "$f")"
            done ;;
        ci_toc)
            # Input = 256-byte blob-table entry + blob bytes; seed with the merged image's
            # per-layer blobs and their entries.
            python3 - "$dir" <<'PY'
import os, struct, sys
out = sys.argv[1]
root = "tests/fixtures/images"
for img in sorted(os.listdir(root)):
    b = open(os.path.join(root, img, "image.boot"), "rb").read()
    if b[:4] == b"SFAR":
        continue
    bt_off, bt_size = struct.unpack_from("<QI", b, 1160)
    for i in range(bt_size // 256):
        e = b[bt_off + 256 * i: bt_off + 256 * (i + 1)]
        bid = e[:64].rstrip(b"\0").decode()
        p = os.path.join(root, img, "blobs", bid)
        if os.path.exists(p) and os.path.getsize(p) < 2 << 20:
            open(os.path.join(out, f"{img}-{i}"), "wb").write(e + open(p, "rb").read())
PY
            ;;
    esac
}

rc=0
for t in "${targets[@]}"; do
    seed "$t"
    echo "fuzz.sh: running $t for ${secs}s"
    if ! cargo +nightly fuzz run "$t" "fuzz/corpus/$t" -- \
            -max_total_time="$secs" -rss_limit_mb=3072 -max_len=1048576 -timeout=20; then
        echo "fuzz.sh: $t FOUND A CRASH: see fuzz/artifacts/$t/"
        rc=1
    fi
done
exit $rc
