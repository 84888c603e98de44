#!/usr/bin/env bash
# Runs the README's walk-through exactly as printed, against a service started the way
# the README starts it (`cargo run --release`), on a fresh data directory and port 3333.
# Called by .ci/run; fails on any failing command or on an answer missing what the README
# says it shows.
set -euo pipefail
cd "$(dirname "$0")/../.."

work=$(mktemp -d)
export LEDGER_DATA_DIR="$work/data"
unset DATABASE_URL LEDGER_CONFIG
server_pid=""
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

if curl -s -o /dev/null http://127.0.0.1:3333/ 2>/dev/null; then
  echo "port 3333 is already in use; the walk-through needs it (stop that service)" >&2
  exit 1
fi
cargo build --release -q --bin usage-ledger
cargo run --release -q > "$work/server.out" 2> "$work/server.err" &
server_pid=$!
for _ in $(seq 1 60); do
  curl -sf http://127.0.0.1:3333/readyz >/dev/null 2>&1 && break
  sleep 1
done
curl -sf http://127.0.0.1:3333/readyz >/dev/null || { cat "$work/server.err" >&2; exit 1; }

# The fenced block between the walkthrough markers, without the fences.
sed -n '/^<!-- walkthrough -->$/,/^<!-- \/walkthrough -->$/p' README.md |
  sed -e '/^<!--/d' -e '/^```/d' > "$work/walkthrough.sh"
[ -s "$work/walkthrough.sh" ] || { echo "README walk-through block not found" >&2; exit 1; }

bash -euo pipefail "$work/walkthrough.sh" > "$work/answers.out"

expect() {
  grep -q -- "$1" "$work/answers.out" || {
    echo "walk-through answer lacks $1:" >&2
    cat "$work/answers.out" >&2
    exit 1
  }
}
expect '"registered":true'
expect '"event":{"id":"acme:'
expect '"consumed":true'
expect '"estimatedCost":{"base":2900'
expect '"threshold":75'
expect '"type":"PeriodOpened"'
echo "README walk-through: ok"

# docs/auditing.md: its block, on the ledger the walk-through left.
sed -n '/^<!-- auditing -->$/,/^<!-- \/auditing -->$/p' docs/auditing.md |
  sed -e '/^<!--/d' -e '/^```/d' > "$work/auditing.sh"
[ -s "$work/auditing.sh" ] || { echo "docs/auditing.md block not found" >&2; exit 1; }
bash -euo pipefail "$work/auditing.sh" > "$work/answers.out"
expect 'no differences'
expect 'rebuilt 1 brand-period rows'
expect '"asOf":{"requested":"2","sequence":2}'
expect 'export verified:'
expect 'brand_id,metric,kind,units_over,rate,amount_cents'
expect '"skipped":\["acme"\]'
[ ! -e ledger-export.jsonl ] || { echo "the auditing block left its export behind" >&2; exit 1; }
echo "docs/auditing.md: ok"
