#!/usr/bin/env bash
# The seed's cross-image dedup experiment, reproduced (docs/dedup.md).
#
# Two versions of one image, built independently (no shared layer digests, mtimes a day
# apart), each of three layers:
#   1. a debootstrap minbase rootfs (v2 is a second debootstrap run with one more package);
#   2. numpy unpacked from its wheel (v1: 1.26.3, v2: 1.26.4, from PyPI);
#   3. the Linux source tree from apt's linux-source-6.1 (v2: the same tree with 1% of the
#      files changed; apt has one version only).
# Both are pushed as OCI (skopeo) to a local docker-registry, then converted with
# rafs-image convert: v1, v2 without a dictionary, v2 with v1 as its dictionary. Printed,
# and written as markdown to $OUT/dedup.md:
#   - registry storage per image and for both (distinct blobs of the manifests);
#   - host disk after reading every file of both images once through the daemon (our
#     content-addressed cache, and upstream nydusd's per-blob cache when NYDUSD is set)
#     against OCI's compressed layers plus unpacked snapshots;
#   - convert time against `tar | gzip -6` of the same layers and against `skopeo copy`.
# Needs root (FUSE mounts, debootstrap), network to the apt mirror and PyPI on first run.
# Inputs are cached in $RV_DEDUP_DIR (default /var/tmp/rv-dedup). Takes 20-40 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
W=${RV_DEDUP_DIR:-/var/tmp/rv-dedup}
OUT=${OUT:-$W/out}
BIN=${RV_BIN_DIR:-$REPO/target/release}
mkdir -p "$W/src" "$OUT"
for p in debootstrap linux-source-6.1 docker-registry skopeo python3-pip time bc; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
    { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$p" >/dev/null; }
done
[ -x "$BIN/rafs-image" ] || cargo build --release --bins
log() { echo "== $*" >&2; }
secs() { python3 -c "print(f'{$EPOCHREALTIME - $1:.1f}')"; }

# ---- sources (cached) ----
S=$W/src
if [ ! -f "$S/rootfs-v1.done" ]; then
  log "debootstrap v1"
  rm -rf "$S/rootfs-v1"; debootstrap --variant=minbase bookworm "$S/rootfs-v1" >/dev/null
  touch "$S/rootfs-v1.done"
fi
if [ ! -f "$S/rootfs-v2.done" ]; then
  log "debootstrap v2 (one more package)"
  rm -rf "$S/rootfs-v2"; debootstrap --variant=minbase --include=less bookworm "$S/rootfs-v2" >/dev/null
  touch "$S/rootfs-v2.done"
fi
for v in 1.26.3 1.26.4; do
  if [ ! -d "$S/numpy-$v" ]; then
    log "numpy $v"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
      --platform manylinux2014_x86_64 "numpy==$v" -d "$S/wheels-$v"
    mkdir -p "$S/numpy-$v.tmp/usr/lib/python3/dist-packages"
    python3 -m zipfile -e "$S"/wheels-$v/*.whl "$S/numpy-$v.tmp/usr/lib/python3/dist-packages"
    mv "$S/numpy-$v.tmp" "$S/numpy-$v"
  fi
done
if [ ! -d "$S/linux-v1" ]; then
  log "linux source v1"
  mkdir -p "$S/linux-v1.tmp/usr/src"
  tar -xJf /usr/src/linux-source-6.1.tar.xz -C "$S/linux-v1.tmp/usr/src"
  mv "$S/linux-v1.tmp" "$S/linux-v1"
fi
if [ ! -d "$S/linux-v2" ]; then
  log "linux source v2: 1% of files changed"
  cp -a "$S/linux-v1" "$S/linux-v2.tmp"
  python3 - "$S/linux-v2.tmp" <<'EOF'
import os, sys
files = sorted(os.path.join(d, f) for d, _, fs in os.walk(sys.argv[1]) for f in fs)
for p in files[::100]:
    if os.path.isfile(p) and not os.path.islink(p):
        with open(p, "ab") as f:
            f.write(b"\n/* v2 */\n")
EOF
  mv "$S/linux-v2.tmp" "$S/linux-v2"
fi
# v2's mtimes are a day later than v1's (the trees are separate copies).
if [ ! -f "$S/v2-shifted" ]; then
  python3 - "$S/rootfs-v2" "$S/numpy-1.26.4" "$S/linux-v2" <<'EOF'
import os, sys
for top in sys.argv[1:]:
    for d, dirs, fs in os.walk(top):
        for n in dirs + fs:
            p = os.path.join(d, n)
            st = os.lstat(p)
            os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 86400 * 10**9), follow_symlinks=False)
EOF
  touch "$S/v2-shifted"
fi

# ---- OCI images: tar | gzip -6, timed ----
L=$W/layers
mkdir -p "$L"
declare -A TGZ_S
for v in v1 v2; do
  if [ "$v" = v1 ]; then dirs=("$S/rootfs-v1" "$S/numpy-1.26.3" "$S/linux-v1"); else dirs=("$S/rootfs-v2" "$S/numpy-1.26.4" "$S/linux-v2"); fi
  t0=$EPOCHREALTIME
  i=0
  for d in "${dirs[@]}"; do
    tar --numeric-owner --sort=name -C "$d" -c . | gzip -6 > "$L/$v-$i.tar.gz"
    i=$((i + 1))
  done
  TGZ_S[$v]=$(secs "$t0")
  log "tar | gzip -6 of $v: ${TGZ_S[$v]} s"
done
python3 - "$L" "$W/oci" <<'EOF'
import gzip, hashlib, json, os, sys, zlib
L, O = sys.argv[1], sys.argv[2]
os.makedirs(f"{O}/blobs/sha256", exist_ok=True)
def put(b):
    d = hashlib.sha256(b).hexdigest()
    open(f"{O}/blobs/sha256/{d}", "wb").write(b)
    return "sha256:" + d
def put_file(p):
    h = hashlib.sha256(); u = hashlib.sha256(); dec = zlib.decompressobj(31)
    with open(p, "rb") as f:
        while True:
            c = f.read(1 << 20)
            if not c: break
            h.update(c); u.update(dec.decompress(c))
    d = h.hexdigest(); dst = f"{O}/blobs/sha256/{d}"
    if not os.path.exists(dst): os.link(p, dst)
    return "sha256:" + d, os.path.getsize(p), "sha256:" + u.hexdigest()
manifests = []
for v in ("v1", "v2"):
    layers, diff = [], []
    for i in range(3):
        d, s, u = put_file(f"{L}/{v}-{i}.tar.gz")
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": s}); diff.append(u)
    cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/bash"]},
                      "rootfs": {"type": "layers", "diff_ids": diff}}).encode()
    m = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": put(cfg), "size": len(cfg)},
                    "layers": layers}).encode()
    manifests.append({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": put(m), "size": len(m),
                      "annotations": {"org.opencontainers.image.ref.name": v}})
json.dump({"schemaVersion": 2, "manifests": manifests}, open(f"{O}/index.json", "w"))
open(f"{O}/oci-layout", "w").write('{"imageLayoutVersion":"1.0.0"}')
EOF

# ---- registry ----
R=$W/registry
rm -rf "$R"; mkdir -p "$R"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$R/config.yml" <<EOF
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $R/data}, delete: {enabled: true}}
http: {addr: 127.0.0.1:$PORT}
EOF
docker-registry serve "$R/config.yml" > "$R/log" 2>&1 &
REG_PID=$!
MOUNTS=()
cleanup() {
  for m in "${MOUNTS[@]}"; do umount "$m" 2>/dev/null || true; done
  kill "$REG_PID" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/v2/" >/dev/null && break; sleep 0.1; done
H=127.0.0.1:$PORT
for v in v1 v2; do
  skopeo copy -q --preserve-digests --dest-tls-verify=false "oci:$W/oci:$v" "docker://$H/oci/app:$v"
done
t0=$EPOCHREALTIME
rm -rf "$W/skopeo-out"
skopeo copy -q --src-tls-verify=false "docker://$H/oci/app:v2" "oci:$W/skopeo-out:v2"
SKOPEO_S=$(secs "$t0")

# ---- conversions ----
conv() { # SRC DST [ARGS...] -> seconds on stdout, JSON report in $OUT/<tag>.json
  local src=$1 dst=$2; shift 2
  local t0=$EPOCHREALTIME
  /usr/bin/time -f %M -o "$OUT/$(echo "$dst" | tr '/:' '__').rss" "$BIN/rafs-image" convert --source "$src" --target "$dst" --source-insecure --target-insecure \
    --output-json "$OUT/$(echo "$dst" | tr '/:' '__').json" "$@" 2>/dev/null
  secs "$t0"
}
CONV_V1=$(conv "$H/oci/app:v1" "$H/nydus/app:v1")
CONV_V2=$(conv "$H/oci/app:v2" "$H/nydus/app:v2")
CONV_V2D=$(conv "$H/oci/app:v2" "$H/nydus/app:v2-dict" --chunk-dict "$H/nydus/app:v1")
log "convert: v1 $CONV_V1 s, v2 $CONV_V2 s, v2 with dict $CONV_V2D s"

# ---- host disk: read every file of both images through a daemon ----
CFG_TMPL='{"device":{"backend":{"type":"registry","config":{"host":"%s","repo":"nydus/app","scheme":"http","timeout":30,"connect_timeout":5,"retry_limit":2}},"cache":{"type":"blobcache","compressed":%s,"config":{"work_dir":"%s"}}},"mode":"direct","digest_validate":false,"iostats_files":false,"enable_xattr":true}'
read_all() { # DAEMON(ours|nydusd) CACHE TAG... -> bootstrap bytes on stdout
  local d=$1 cache=$2; shift 2
  local total=0
  rm -rf "$cache"; mkdir -p "$cache"
  for tag in "$@"; do
    local wd=$W/run/$d-$tag; rm -rf "$wd"; mkdir -p "$wd/mnt"
    python3 - "$H" "$tag" "$wd/image.boot" <<'EOF'
import gzip, io, json, sys, tarfile, urllib.request
h, tag, out = sys.argv[1:]
acc = "application/vnd.oci.image.manifest.v1+json"
m = json.load(urllib.request.urlopen(urllib.request.Request(f"http://{h}/v2/nydus/app/manifests/{tag}", headers={"Accept": acc})))
b = urllib.request.urlopen(f"http://{h}/v2/nydus/app/blobs/{m['layers'][-1]['digest']}").read()
t = tarfile.open(fileobj=io.BytesIO(gzip.decompress(b)))
open(out, "wb").write(t.extractfile("image/image.boot").read())
EOF
    total=$((total + $(stat -c %s "$wd/image.boot")))
    printf "$CFG_TMPL" "$H" "${COMPRESSED:-false}" "$cache" > "$wd/cfg.json"
    if [ "$d" = ours ]; then
      "$BIN/rafs-virtiofsd" fuse --config "$wd/cfg.json" --bootstrap "$wd/image.boot" --mountpoint "$wd/mnt" --log-level warn > "$wd/log" 2>&1 &
    else
      "$NYDUSD" --config "$wd/cfg.json" --bootstrap "$wd/image.boot" --mountpoint "$wd/mnt" --log-level warn --rlimit-nofile 0 > "$wd/log" 2>&1 &
    fi
    local pid=$!
    for _ in $(seq 100); do mountpoint -q "$wd/mnt" && break; sleep 0.1; done
    MOUNTS+=("$wd/mnt")
    find "$wd/mnt" -type f -print0 | xargs -0 -r cat > /dev/null
    umount "$wd/mnt"; kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
  done
  echo "$total"
}
kb() { echo $(( ($1 + 1023) / 1024 )); }
du_kb() { du -sk "$@" | awk '{s+=$1} END {print s}'; }

OURS_BOOT=$(read_all ours "$W/cache-ours" v1 v2); OURS_CACHE=$(du_kb "$W/cache-ours")
OURS_V1_BOOT=$(read_all ours "$W/cache-ours-v1" v1); OURS_V1_CACHE=$(du_kb "$W/cache-ours-v1")
OURSD_BOOT=$(read_all ours "$W/cache-ours-dict" v1 v2-dict); OURSD_CACHE=$(du_kb "$W/cache-ours-dict")
# Our cache with cache.compressed (chunks kept as the blobs store them).
OURSZ_BOOT=$(COMPRESSED=true read_all ours "$W/cache-ours-z" v1 v2); OURSZ_CACHE=$(du_kb "$W/cache-ours-z")
OURSZ1_BOOT=$(COMPRESSED=true read_all ours "$W/cache-ours-z-v1" v1); OURSZ1_CACHE=$(du_kb "$W/cache-ours-z-v1")
if [ -n "${NYDUSD:-}" ]; then
  ND_BOOT=$(read_all nydusd "$W/cache-nydusd" v1 v2); ND_CACHE=$(du_kb "$W/cache-nydusd")
  NDV1_BOOT=$(read_all nydusd "$W/cache-nydusd-v1" v1); NDV1_CACHE=$(du_kb "$W/cache-nydusd-v1")
  NDD_BOOT=$(read_all nydusd "$W/cache-nydusd-dict" v1 v2-dict); NDD_CACHE=$(du_kb "$W/cache-nydusd-dict")
fi
# OCI: compressed layers plus unpacked snapshots (each layer digest differs: no sharing).
OCI_LAYERS_V1=$(du_kb "$L"/v1-*.tar.gz); OCI_LAYERS_V2=$(du_kb "$L"/v2-*.tar.gz)
OCI_SNAP_V1=$(du_kb "$S/rootfs-v1" "$S/numpy-1.26.3" "$S/linux-v1")
OCI_SNAP_V2=$(du_kb "$S/rootfs-v2" "$S/numpy-1.26.4" "$S/linux-v2")

# ---- registry storage from the manifests ----
python3 - "$H" "$OUT" <<'EOF' > "$OUT/registry.txt"
import json, sys, urllib.request
h, out = sys.argv[1:]
def blobs(repo, tag):
    r = urllib.request.Request(f"http://{h}/v2/{repo}/manifests/{tag}",
                               headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    m = json.load(urllib.request.urlopen(r))
    return {d["digest"]: d["size"] for d in [m["config"]] + m["layers"]}
kb = lambda d: (sum(d.values()) + 1023) // 1024
o1, o2 = blobs("oci/app", "v1"), blobs("oci/app", "v2")
n1, n2, n2d = blobs("nydus/app", "v1"), blobs("nydus/app", "v2"), blobs("nydus/app", "v2-dict")
print(kb(o1), kb(o2), kb({**o1, **o2}), kb(n1), kb(n2), kb({**n1, **n2}), kb(n2d), kb({**n1, **n2d}))
EOF
read -r RO1 RO2 RO12 RN1 RN2 RN12 RN2D RN12D < "$OUT/registry.txt"

pct() { python3 -c "print(f'{100*($1-$2)/$2:.1f}%')"; }
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }
OCI_HOST=$((OCI_LAYERS_V1 + OCI_LAYERS_V2 + OCI_SNAP_V1 + OCI_SNAP_V2))
OCI_HOST_V1=$((OCI_LAYERS_V1 + OCI_SNAP_V1))
OURS_HOST=$(( $(kb "$OURS_BOOT") + OURS_CACHE )); OURS_HOST_V1=$(( $(kb "$OURS_V1_BOOT") + OURS_V1_CACHE ))
OURSD_HOST=$(( $(kb "$OURSD_BOOT") + OURSD_CACHE ))
{
  echo "| | v1 | v2 | both | v2 adds |"
  echo "|---|---|---|---|---|"
  echo "| Registry, OCI (KB) | $RO1 | $RO2 | $RO12 | $(pct "$RO12" "$RO1") |"
  echo "| Registry, nydus, no dictionary (KB) | $RN1 | $RN2 | $RN12 | $(pct "$RN12" "$RN1") |"
  echo "| Registry, nydus, v1 as v2's dictionary (KB) | $RN1 | $RN2D | $RN12D | $(pct "$RN12D" "$RN1") |"
  echo "| Host, OCI: layers + snapshots (KB) | $OCI_HOST_V1 | $((OCI_LAYERS_V2 + OCI_SNAP_V2)) | $OCI_HOST | $(pct "$OCI_HOST" "$OCI_HOST_V1") |"
  echo "| Host, ours, no dictionary: bootstraps + cache (KB) | $OURS_HOST_V1 | | $OURS_HOST | $(pct "$OURS_HOST" "$OURS_HOST_V1") |"
  echo "| Host, ours, with dictionary (KB) | $OURS_HOST_V1 | | $OURSD_HOST | $(pct "$OURSD_HOST" "$OURS_HOST_V1") |"
  OURSZ_HOST=$(( $(kb "$OURSZ_BOOT") + OURSZ_CACHE )); OURSZ_HOST_V1=$(( $(kb "$OURSZ1_BOOT") + OURSZ1_CACHE ))
  echo "| Host, ours, no dictionary, \`cache.compressed\` (KB) | $OURSZ_HOST_V1 | | $OURSZ_HOST | $(pct "$OURSZ_HOST" "$OURSZ_HOST_V1") |"
  if [ -n "${NYDUSD:-}" ]; then
    NDH=$(( $(kb "$ND_BOOT") + ND_CACHE )); NDH1=$(( $(kb "$NDV1_BOOT") + NDV1_CACHE )); NDHD=$(( $(kb "$NDD_BOOT") + NDD_CACHE ))
    echo "| Host, nydusd, no dictionary (KB) | $NDH1 | | $NDH | $(pct "$NDH" "$NDH1") |"
    echo "| Host, nydusd, with dictionary (KB) | $NDH1 | | $NDHD | $(pct "$NDHD" "$NDH1") |"
  else
    echo "| Host, nydusd | skipped: NYDUSD not set | | | |"
  fi
  echo
  echo "Nydus host footprint for both images against OCI's: ours without dictionary $(ratio "$OURS_HOST" "$OCI_HOST"), ours with dictionary $(ratio "$OURSD_HOST" "$OCI_HOST"), ours with \`cache.compressed\` $(ratio "$OURSZ_HOST" "$OCI_HOST")."
  echo
  echo "| Time, v2 (s) | |"
  echo "|---|---|"
  echo "| \`tar \| gzip -6\` of the three layers | ${TGZ_S[v2]} |"
  echo "| \`rafs-image convert\`, registry to registry, no dictionary | $CONV_V2 |"
  echo "| \`rafs-image convert\` with v1 as dictionary | $CONV_V2D |"
  echo "| \`skopeo copy\` registry to OCI layout | $SKOPEO_S |"
  echo "| upstream nydusify | not run: Go modules are not reachable here |"
  echo
  echo "Peak RSS of \`rafs-image convert\` of v2: $(( $(cat "$OUT/${H//[\/:]/_}_nydus_app_v2.rss") / 1024 )) MB; its largest layer is $(du -sm "$S/linux-v2" | cut -f1) MB unpacked."
  echo
  echo "convert is $(ratio "${TGZ_S[v2]}" "$CONV_V2")x as fast as tar | gzip -6 of the same layers."
} | tee "$OUT/dedup.md"
