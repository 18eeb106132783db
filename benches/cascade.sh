#!/usr/bin/env bash
# Cascading figures (release build, three nodes and the load generator on this machine, a
# private redis-server): one room, one 2.5 Mbit/s WHIP publisher on node A, SUBS WHEP
# subscribers (`convene load`):
#   one-node   every subscriber on A (the publisher's node)
#   cascade    subscribers in turn on A, B and C: A relays the publisher to B and C once each
# For each run: delivery, audio delay (publisher to subscriber, one clock), and per node the CPU
# time over the RTP packets it forwarded (its /proc times and convene_rtp_packets_out_total).
# The cascade hop's latency is the delay of subscribers on B/C (run `hop`) minus on A.
# Usage: benches/cascade.sh   (env: SUBS=60 WINDOW=15; JSON per run in target/cascade/)
set -euo pipefail
cd "$(dirname "$0")/.."
subs="${SUBS:-60}"
window="${WINDOW:-15}"
out=target/cascade
mkdir -p "$out"
cargo build --release --quiet
bin=target/release/convene
work=$(mktemp -d)
redis_port=16399
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no >/dev/null &
redis_pid=$!
pids=()
cleanup() { kill "${pids[@]}" "$redis_pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
secret="cascade-bench-$(date +%s%N)"
db="sqlite://$work/cluster.db?mode=rwc"

start_node() { # name http_port media_port
  mkdir -p "$work/$1"
  REDIS_URL="redis://127.0.0.1:$redis_port" CONVENE_NODE_ID="$1" CONVENE_JWT_SECRET="$secret" \
  CONVENE_DATABASE_URL="${DATABASE_URL:-$db}" CONVENE_CLUSTER_CASCADE=true \
  CONVENE_RATE_LIMIT_MEDIA_PER_MINUTE=1000000 CONVENE_MAX_VIEWERS_PER_ROOM=5000 RUST_LOG=warn \
    "$bin" --http "127.0.0.1:$2" --media-udp-port "$3" --data-dir "$work/$1" >"$work/$1.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$2/readyz" >/dev/null && break; sleep 0.1; done
}
start_node a 18301 52000
start_node b 18302 52100
start_node c 18303 52200
ports=(18301 18302 18303)
names=(A B C)

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
forwarded() { curl -sf "http://127.0.0.1:$1/metrics" | awk '/^convene_rtp_packets_out_total /{print $2}'; }

run() { # label subscriber_urls
  local label="$1" urls="$2" before_cpu=() before_out=()
  for i in 0 1 2; do before_cpu[$i]=$(cpu_ticks "${pids[$i]}"); before_out[$i]=$(forwarded "${ports[$i]}"); done
  CONVENE_JWT_SECRET="$secret" "$bin" load --url http://127.0.0.1:18301 --subscriber-url "$urls" \
    --room "cascade-$label" --publishers 1 --subscribers "$subs" --seconds "$window" \
    --data-dir "$work/a" --json >"$out/$label.json" 2>/dev/null
  local hz; hz=$(getconf CLK_TCK)
  printf '%-9s delivery %s %%, audio delay %s ms\n' "$label" \
    "$(jq .delivery_percent "$out/$label.json")" "$(jq .delay_ms_mean "$out/$label.json")"
  for i in 0 1 2; do
    local cpu=$(( $(cpu_ticks "${pids[$i]}") - before_cpu[i] ))
    local fwd; fwd=$(echo "$(forwarded "${ports[$i]}") - ${before_out[$i]}" | bc)
    if [ "${fwd%.*}" -gt 0 ]; then
      printf '  node %s: %s packets forwarded, %s us CPU per packet\n' "${names[$i]}" "$fwd" \
        "$(echo "scale=2; $cpu * 1000000 / $hz / $fwd" | bc)"
    fi
  done
}
run one-node "http://127.0.0.1:18301"
run cascade "http://127.0.0.1:18301,http://127.0.0.1:18302,http://127.0.0.1:18303"
run hop "http://127.0.0.1:18302,http://127.0.0.1:18303"
