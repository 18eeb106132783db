#!/usr/bin/env bash
# Fan-out under `convene load`, server and load generator on this machine (release build): one
# 2.5 Mbit/s publisher → each subscriber count, for each media_workers value; then two rooms of
# ROOM_SUBS subscribers at once (two load processes), on 1 engine and on 2.
# Usage: benches/load.sh           (env: WORKERS="1 2" SUBS="50 100 250 500 1000" WINDOW=20
#                                   ROOM_SUBS=250 (0: skip the two-room runs) THREADS=1;
#                                   server config as CONVENE_* env, e.g. CONVENE_BWE=false;
#                                   JSON per run in target/load/)
set -euo pipefail
cd "$(dirname "$0")/.."
workers="${WORKERS:-1 2}"
subs="${SUBS:-50 100 250 500 1000}"
window="${WINDOW:-20}"
room_subs="${ROOM_SUBS:-250}"
threads="${THREADS:-1}"
port=18181
out=target/load
mkdir -p "$out"
cargo build --release --quiet
bin=target/release/convene

start_server() {
  local w="$1"
  dir=$(mktemp -d)
  CONVENE_MEDIA_WORKERS="$w" CONVENE_RATE_LIMIT_MEDIA_PER_MINUTE=1000000 CONVENE_MAX_PEERS=5000 \
  CONVENE_MAX_VIEWERS_PER_ROOM=5000 RUST_LOG=warn \
    "$bin" --http "127.0.0.1:$port" --media-udp-port 0 --data-dir "$dir" >"$dir/server.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
}

stop_server() {
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -rf "$dir"
}

summary() {
  python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
print("| {} | {} | {}/{} | {} | {} | {} | {} | {} | {} |".format(sys.argv[2], r["subscribers"],
  r["subscribers_connected"], r["subscribers"], r["delivery_percent"], r["loss_percent"],
  r["server_us_per_packet"], r["server_cpu_percent"],
  round((r["server_rss_bytes_per_subscriber"] or 0) / 1024), r["join_ms_p95"]))' "$1" "$2"
}

echo "| media_workers | subscribers | connected | delivery % | loss % | server µs/packet | server CPU % | RSS KiB/subscriber | join p95 ms |"
echo "|---|---|---|---|---|---|---|---|---|"
for w in $workers; do
  for n in $subs; do
    start_server "$w"
    "$bin" load --url "http://127.0.0.1:$port" --data-dir "$dir" --room fanout --subscribers "$n" \
      --seconds "$window" --server-pid "$pid" --threads "$threads" --join-rate 100 --json \
      >"$out/w$w-n$n.json" 2>"$out/w$w-n$n.err" || true
    stop_server
    summary "$out/w$w-n$n.json" "$w"
  done
done

[ "$room_subs" = 0 ] && exit 0
echo
echo "| media_workers | rooms × subscribers | delivery % (room a / b) | server µs/packet | server CPU % | packets received |"
echo "|---|---|---|---|---|---|"
for w in 1 2; do
  start_server "$w"
  loads=()
  for room in a b; do
    "$bin" load --url "http://127.0.0.1:$port" --data-dir "$dir" --room "$room" --subscribers "$room_subs" \
      --seconds "$window" --server-pid "$pid" --threads "$threads" --join-rate 100 --json \
      >"$out/rooms-w$w-$room.json" 2>"$out/rooms-w$w-$room.err" &
    loads+=($!)
  done
  wait "${loads[@]}" || true
  stop_server
  python3 -c '
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
cpu = (a["server_cpu_percent"] + b["server_cpu_percent"]) / 2  # each process saw the whole server
rx = a["packets_received"] + b["packets_received"]
us = cpu / 100 * a["seconds"] * 1e6 / rx if rx else None
print("| {} | 2 × {} | {} / {} | {} | {} | {} |".format(sys.argv[3], a["subscribers"],
  a["delivery_percent"], b["delivery_percent"], round(us, 3) if us else "-", cpu, rx))' \
    "$out/rooms-w$w-a.json" "$out/rooms-w$w-b.json" "$w"
done
