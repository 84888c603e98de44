#!/usr/bin/env bash
# Resident memory of the service holding N active brand-periods (default 100,000): the
# release service on a fresh PostgreSQL database, N brands registered and each given
# usage in the current period, the read models caught up; prints VmRSS before and after.
#
#   bench/rss/run.sh [--brands 100000] [--database-url URL]
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
brands=100000
server_url="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
while [ $# -gt 0 ]; do
  case "$1" in
    --brands) brands=$2; shift 2 ;;
    --database-url) server_url=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
[[ "$brands" =~ ^[0-9]+$ ]] || { echo "--brands takes a whole number" >&2; exit 2; }

target_dir="${CARGO_TARGET_DIR:-$repo/target}"
(cd "$repo" && cargo build --release -q -p usage-ledger)
bin="$target_dir/release/usage-ledger"

db="ledger_rss_$(date +%s)_$$"
admin_url="${server_url%/*}/postgres"
psql "$admin_url" -qc "CREATE DATABASE $db"
pid=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  psql "$admin_url" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export DATABASE_URL="${server_url%/*}/$db" LEDGER_MODE=production
export LEDGER_JWT_SECRET="rss-bench-secret-0123456789abcdef" LEDGER_BIND="127.0.0.1:$port"
RUST_LOG=warn "$bin" serve &
pid=$!
token=$("$bin" token --role admin)
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break
  sleep 0.2
done
rss() { awk '/VmRSS/ {print $2}' "/proc/$pid/status"; }
before=$(rss)
python3 "$(dirname "$0")/load.py" "http://127.0.0.1:$port" "$token" "$brands"
after=$(rss)
echo "brands=$brands rss_before_kib=$before rss_after_kib=$after per_brand_period_bytes=$(( (after - before) * 1024 / (brands > 0 ? brands : 1) ))"
