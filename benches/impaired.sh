#!/usr/bin/env bash
# One publisher → viewers behind an impaired downlink: `convene load` runs in a network namespace
# made here (veth to the server, removed at exit), with a tbf rate limit on the link into it and
# an optional nftables random drop of video RTP. Prints delivery, loss and jitter per setting.
# As root. Usage: benches/impaired.sh   (env: RATES="0 2000 1000 600 300" kbit/s, 0 = none;
#                                        LOSS=0 percent; VIDEO_KBPS=1000; SUBS=2; WINDOW=10)
set -euo pipefail
cd "$(dirname "$0")/.."
rates="${RATES:-0 2000 1000 600 300}"
loss="${LOSS:-0}"
video_kbps="${VIDEO_KBPS:-1000}"
subs="${SUBS:-2}"
window="${WINDOW:-10}"
ns="cvbench$$"
host_if="cvbh$$"
host_ip=10.78.0.1
port=18183
cargo build --release --quiet
bin=target/release/convene
dir=$(mktemp -d)

cleanup() {
  [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null || true
  ip netns del "$ns" 2>/dev/null || true
  ip link del "$host_if" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

ip netns add "$ns"
ip link add "$host_if" type veth peer name cvbn netns "$ns"
ip addr add "$host_ip/30" dev "$host_if"
ip link set "$host_if" up
ip -n "$ns" addr add 10.78.0.2/30 dev cvbn
ip -n "$ns" link set cvbn up
ip -n "$ns" link set lo up
if [ "$loss" != 0 ]; then
  ip netns exec "$ns" nft -f - <<NFT
table inet impair {
  chain input {
    type filter hook input priority 0;
    meta l4proto udp @th,64,2 2 @th,73,7 96 numgen random mod 100 < $loss counter drop
  }
}
NFT
fi

CONVENE_RATE_LIMIT_MEDIA_PER_MINUTE=1000000 CONVENE_MEDIA_BIND_IP="$host_ip" RUST_LOG=warn \
  "$bin" --http "$host_ip:$port" --media-udp-port 0 --data-dir "$dir" >"$dir/server.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do curl -sf "http://$host_ip:$port/readyz" >/dev/null && break; sleep 0.1; done

echo "| downlink kbit/s | video loss % | delivery % | loss % | jitter p95 ms | received Mbit/s |"
echo "|---|---|---|---|---|---|"
for rate in $rates; do
  tc qdisc del dev "$host_if" root 2>/dev/null || true
  if [ "$rate" != 0 ]; then
    # Shaping the host's end shapes what goes into the namespace: the viewers' downlink.
    tc qdisc add dev "$host_if" root tbf rate "${rate}kbit" burst 16kbit latency 200ms
  fi
  json=$(ip netns exec "$ns" "$bin" load --url "http://$host_ip:$port" --data-dir "$dir" \
    --room "r$rate" --publishers 1 --subscribers "$subs" --video-kbps "$video_kbps" \
    --seconds "$window" --json 2>/dev/null || true)
  python3 -c '
import json, sys
r = json.loads(sys.argv[1])
print("| {} | {} | {} | {} | {} | {} |".format(sys.argv[2] if sys.argv[2] != "0" else "none",
  sys.argv[3], r["delivery_percent"], r["loss_percent"], r["jitter_ms_p95"], r["received_mbit_per_s"]))' \
    "$json" "$rate" "$loss"
done
