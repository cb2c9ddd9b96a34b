#!/usr/bin/env bash
# Cold-start benchmark (not a test): RAFS lazily from the loopback registry against OCI
# download + unpack, for a debootstrap bookworm minbase rootfs. See docs/performance.md.
# Usage: hack/bench-coldstart.sh [RUNS]      (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
bash hack/setup.sh
# The rootfs tar, made once and cached (shared with hack/demo.sh).
tar="$(bash hack/debian-rootfs.sh)"
bash hack/mkinitramfs.sh
RV_COLDSTART_TAR="$tar" RV_COLDSTART_RUNS=${1:-3} cargo bench --bench coldstart
