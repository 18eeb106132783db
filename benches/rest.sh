#!/usr/bin/env bash
# REST throughput with wrk against a release build: an authenticated GET /api/v1/meetings/{id}
# and POST /api/v1/auth/login (argon2id-bound), on SQLite and, when DATABASE_URL is set, on
# PostgreSQL (a fresh database per run). Rate limits are switched off for the measurement.
# Usage: benches/rest.sh [seconds]   (needs wrk: apt-get install wrk)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-10}"
port=18090
cargo build --release --quiet
bin=target/release/convene

run_backend() {
  local name="$1" url="$2" dir
  dir=$(mktemp -d)
  CONVENE_RATE_LIMIT_AUTH_PER_MINUTE=0 CONVENE_RATE_LIMIT_GENERAL_PER_MINUTE=0 \
  CONVENE_RATE_LIMIT_MEETING_CREATE_PER_HOUR=0 DATABASE_URL="$url" RUST_LOG=warn \
    "$bin" --http "127.0.0.1:$port" --media-udp-port 0 --data-dir "$dir" >"$dir/server.log" 2>&1 &
  local pid=$!
  trap 'kill $pid 2>/dev/null || true' RETURN
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
  local api="http://127.0.0.1:$port/api/v1"
  local token meeting
  token=$(curl -sf -H 'content-type: application/json' "$api/auth/register" \
    -d '{"email":"bench@example.test","username":"bench","display_name":"Bench","password":"bench-password-1"}' |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
  meeting=$(curl -sf -H 'content-type: application/json' -H "authorization: Bearer $token" "$api/meetings" \
    -d '{"title":"Bench"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  local login_lua="$dir/login.lua"
  cat >"$login_lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"login":"bench","password":"bench-password-1"}'
LUA
  echo "## $name"
  echo "GET /meetings/{id} (authenticated):"
  wrk -t2 -c32 -d"${seconds}s" -H "Authorization: Bearer $token" "$api/meetings/$meeting" | grep -E "Requests/sec|Latency|Non-2xx"
  echo "POST /auth/login:"
  wrk -t2 -c8 -d"${seconds}s" -s "$login_lua" "$api/auth/login" | grep -E "Requests/sec|Latency|Non-2xx"
}

run_backend "SQLite" ""
if [ -n "${DATABASE_URL:-}" ]; then
  db="convene_bench_$$"
  psql "$DATABASE_URL" -qc "CREATE DATABASE $db" >/dev/null
  run_backend "PostgreSQL" "${DATABASE_URL%/*}/$db"
  psql "$DATABASE_URL" -qc "DROP DATABASE $db WITH (FORCE)" >/dev/null
fi
