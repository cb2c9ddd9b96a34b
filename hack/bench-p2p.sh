#!/usr/bin/env bash
# P2P benchmark: a docker-registry behind a slow link, and host B reading an image straight
# from it and through its dfdaemon peer after host A read the image (benches/p2p.rs). Prints
# a table: time to first byte, time to read every file, bytes from the registry per host.
#
#   DFDAEMON=/path/to/dfdaemon hack/bench-p2p.sh [--rootfs]
#
# --rootfs: the image is a Debian bookworm minbase rootfs (hack/debian-rootfs.sh) instead of
# a 64 MiB generated tree. RV_P2P_DELAY_MS (default 20, each way) and RV_P2P_RATE (default
# 100mbit, each way) shape the link.
#
# Needs root: the registry runs in a network namespace joined by a veth pair that the script
# creates, shapes with tc and removes on exit. Where the kernel has sch_netem, netem gives
# both delay and rate. Where it has not, tbf limits the rate and a small relay in front of
# the registry adds the delay; the table's header says which.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -n "${DFDAEMON:-}" ] || { echo "bench-p2p: set DFDAEMON to a dfdaemon v2 binary" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "bench-p2p: needs root (network namespace, tc)" >&2; exit 2; }
rootfs=0
[ "${1:-}" = "--rootfs" ] && rootfs=1
delay=${RV_P2P_DELAY_MS:-20}
rate=${RV_P2P_RATE:-100mbit}
bash hack/setup.sh
work=$(mktemp -d /var/tmp/rv-bench-p2p.XXXXXX)
ns=rvp2p$$
hv=rvph$$
rv=rvpr$$
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  ip link del "$hv" 2>/dev/null || true
  ip netns del "$ns" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
ip netns add "$ns"
ip link add "$hv" type veth peer name "$rv"
ip link set "$rv" netns "$ns"
ip addr add 10.213.0.1/24 dev "$hv"
ip link set "$hv" up
ip netns exec "$ns" ip addr add 10.213.0.2/24 dev "$rv"
ip netns exec "$ns" ip link set "$rv" up
ip netns exec "$ns" ip link set lo up

if ip netns exec "$ns" tc qdisc add dev "$rv" root netem delay "${delay}ms" rate "$rate" 2>/dev/null; then
  tc qdisc add dev "$hv" root netem delay "${delay}ms" rate "$rate"
  link="tc netem, ${delay} ms and $rate each way"
  reg=10.213.0.2:5000
else
  ip netns exec "$ns" tc qdisc add dev "$rv" root tbf rate "$rate" burst 64kb latency 400ms
  tc qdisc add dev "$hv" root tbf rate "$rate" burst 64kb latency 400ms
  # No sch_netem in this kernel: a relay on the host side of the link delays every chunk
  # by the one-way delay, in each direction, keeping order and throughput.
  cat > "$work/relay.py" <<'PY'
import asyncio, sys
delay = float(sys.argv[1]) / 1000.0
async def pump(r, w):
    q = asyncio.Queue()
    async def out():
        loop = asyncio.get_running_loop()
        while True:
            t, data = await q.get()
            await asyncio.sleep(max(0.0, t - loop.time()))
            if not data:
                w.close()
                return
            w.write(data)
            await w.drain()
    task = asyncio.create_task(out())
    loop = asyncio.get_running_loop()
    while True:
        data = await r.read(65536)
        await q.put((loop.time() + delay, data))
        if not data:
            break
    await task
async def handle(cr, cw):
    try:
        sr, sw = await asyncio.open_connection("10.213.0.2", 5000)
        await asyncio.gather(pump(cr, sw), pump(sr, cw))
    except Exception:
        cw.close()
async def main():
    s = await asyncio.start_server(handle, "10.213.0.1", 5001)
    async with s:
        await s.serve_forever()
asyncio.run(main())
PY
  python3 "$work/relay.py" "$delay" &
  pids+=($!)
  link="tbf $rate each way, plus ${delay} ms each way from a relay (this kernel has no sch_netem)"
  reg=10.213.0.1:5001
fi

cat > "$work/registry.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $work/registry-data
http:
  addr: 10.213.0.2:5000
EOF
ip netns exec "$ns" docker-registry serve "$work/registry.yml" > "$work/registry.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  curl -fsS -o /dev/null "http://$reg/v2/" 2>/dev/null && break
  sleep 0.2
done
curl -fsS -o /dev/null "http://$reg/v2/" || { cat "$work/registry.log" >&2; exit 1; }

if [ "$rootfs" = 1 ]; then
  tar=$(bash hack/debian-rootfs.sh)
  mkdir -p "$work/rootfs"
  tar -C "$work/rootfs" --numeric-owner -xf "$tar"
  export RV_P2P_SRC="$work/rootfs"
fi
echo "bench-p2p: registry at $reg behind: $link" >&2
RV_P2P_REGISTRY=$reg RV_P2P_REGISTRY_LOG="$work/registry.log" RV_P2P_LINK="$link" \
  cargo bench --features p2p-test --bench p2p 2>&1 | grep -v '^\s*\(Compiling\|Finished\|Running\)'
