#!/usr/bin/env bash
# schemathesis against the running service: every operation of /api/v1/openapi.json
# exercised with `--checks all`, bounded in examples per operation and in time.
#
#   1. schemathesis (pinned below) in a virtualenv under ~/.cache/usage-ledger/venv,
#      installed from PyPI when missing or at another version;
#   2. a fresh store: a PostgreSQL database created (and dropped at exit) on the server of
#      DATABASE_URL when it answers, else SQLite in a temp dir;
#   3. the service (production mode, a random signing secret, a webhook secret, a stand-in
#      for Stripe's API on loopback) on a free loopback port; brands acme (starter) and
#      globex (professional) registered, an admin token minted with the CLI and an API key
#      created over the API, so authenticated operations run with valid credentials;
#   4. `st run --checks all` with the admin token, the settings of schemathesis.toml and
#      the hooks of hooks.py (each with its reason there and in docs/operations.md); any
#      failure, or an operation left untested, exits non-zero. It prints the operations
#      and test cases run.
#
# Builds nothing: LEDGER_BIN is the service binary (default
# ${CARGO_TARGET_DIR:-target}/debug/usage-ledger). Needs python3 (with venv), curl and
# jq; psql for the PostgreSQL store. Called by .ci/run.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
# Relative paths are the caller's, as cargo takes CARGO_TARGET_DIR.
LEDGER_BIN="${LEDGER_BIN:-${CARGO_TARGET_DIR:-$root/target}/debug/usage-ledger}"
case "$LEDGER_BIN" in /*) ;; *) LEDGER_BIN="$PWD/$LEDGER_BIN" ;; esac
# Kept apart: every LEDGER_* variable is cleared before the service starts.
service_bin="$LEDGER_BIN"
cd "$root"

# The pinned release: a new one may add checks, so moving it is a change of its own.
schemathesis_version=4.32.5
venv="$HOME/.cache/usage-ledger/venv"
# Test cases per operation at most, and the whole run's budget in seconds: together
# they keep the script within about three minutes on a two-core machine.
examples_per_operation_max="${SCHEMATHESIS_EXAMPLES_MAX:-40}"
run_seconds_max="${SCHEMATHESIS_SECONDS_MAX:-150}"
# A fixed seed makes a CI failure reproducible with the same command; set another to explore.
seed="${SCHEMATHESIS_SEED:-1}"
# One worker: CPython 3.11's ast.parse, which hypothesis calls while it builds
# strategies, is not thread-safe (python/cpython#106905) and fails runs with two.
workers=1

for tool in python3 curl jq; do
  command -v "$tool" >/dev/null 2>&1 || { echo "schemathesis.sh needs $tool" >&2; exit 1; }
done
[ -x "$service_bin" ] || { echo "no service binary at $service_bin (build it, or set LEDGER_BIN)" >&2; exit 1; }

ok() { echo "ok: $*"; }
die() { echo "FAIL: $*" >&2; exit 1; }

# 1. schemathesis, pinned.
if [ "$("$venv/bin/st" --version 2>/dev/null)" != "st, version $schemathesis_version" ]; then
  echo "installing schemathesis $schemathesis_version into $venv"
  python3 -m venv "$venv" || die "python3 -m venv $venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$schemathesis_version" ||
    die "pip install schemathesis==$schemathesis_version"
fi
ok "$("$venv/bin/st" --version)"

work=$(mktemp -d)
service_pid=""
stripe_pid=""
database=""
admin_url=""
cleanup() {
  local rc=$?
  for pid in "$service_pid" "$stripe_pid"; do
    # The stand-in for Stripe ends on the signal with 143: not this script's outcome.
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && { wait "$pid" 2>/dev/null || true; }
  done
  if [ -n "$database" ]; then
    psql "$admin_url" -qc "DROP DATABASE IF EXISTS $database WITH (FORCE)" >/dev/null 2>&1 || true
  fi
  if [ "$rc" -ne 0 ] && [ -s "$work/service.err" ]; then
    echo "--- service.err (last 20 lines)" >&2
    tail -n 20 "$work/service.err" >&2
  fi
  rm -rf "$work"
  return "$rc"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# 2. A fresh store. DATABASE_URL names a server (and a database to connect to first).
store_url=""
if [ -n "${DATABASE_URL:-}" ] && command -v psql >/dev/null 2>&1 &&
  psql "$DATABASE_URL" -qAtc 'SELECT 1' >/dev/null 2>&1; then
  admin_url="$DATABASE_URL"
  database="ledger_st_$(date +%s)_$$"
  psql "$admin_url" -qc "CREATE DATABASE $database" >/dev/null || die "CREATE DATABASE $database"
  store_url=$(python3 -c 'import sys, urllib.parse as u
p = u.urlsplit(sys.argv[1]); print(u.urlunsplit(p._replace(path="/" + sys.argv[2])))' "$DATABASE_URL" "$database")
  store="PostgreSQL database $database"
else
  store="SQLite in a temp dir"
fi

# 3. The service, with only the settings below (CI sets DATABASE_URL for the tests).
while read -r name; do unset "$name"; done < <(compgen -e | grep '^LEDGER_')
unset DATABASE_URL
[ -n "$store_url" ] && export DATABASE_URL="$store_url"
port=$(free_port)
export LEDGER_MODE=production
LEDGER_JWT_SECRET="schemathesis-$(python3 -c 'import secrets; print(secrets.token_hex(24))')"
export LEDGER_JWT_SECRET
export LEDGER_DATA_DIR="$work/data"
export LEDGER_BIND="127.0.0.1:$port"
# Stripe's API stood in for on loopback, so a checkout runs to its answer (not the 503 of
# a ledger without Stripe) and nothing leaves the machine.
python3 "$root/tests/openapi/fake_stripe.py" "$work/stripe-port" &
stripe_pid=$!
for _ in $(seq 1 50); do [ -s "$work/stripe-port" ] && break; sleep 0.1; done
[ -s "$work/stripe-port" ] || die "the stand-in for Stripe did not start"
export LEDGER_STRIPE_API_BASE="http://127.0.0.1:$(cat "$work/stripe-port")"
export LEDGER_STRIPE_SECRET_KEY="sk_test_schemathesis"
export LEDGER_STRIPE_REDIRECT_ORIGINS="https://app.example.test"
export LEDGER_STRIPE_SUCCESS_URL="https://app.example.test/paid?session={CHECKOUT_SESSION_ID}"
export LEDGER_STRIPE_CANCEL_URL="https://app.example.test/cancelled"
# A webhook secret, so Stripe's webhook answers what a deployment answers (400 for a
# signature that does not verify), not the 503 of an unconfigured one.
LEDGER_STRIPE_WEBHOOK_SECRET="whsec_$(python3 -c 'import secrets; print(secrets.token_hex(24))')"
export LEDGER_STRIPE_WEBHOOK_SECRET
base="http://127.0.0.1:$port"
api="$base/api/v1/usage-billing"

# shellcheck source=tests/lib/serve.sh
. "$root/tests/lib/serve.sh"
start_service "production mode, $store"

admin=$(cd "$work" && "$service_bin" token --role admin --ttl 1h)
call() { # method path json-body
  curl -sS --fail-with-body -X "$1" "$api/$2" -H "Authorization: Bearer $admin" \
    -H 'Content-Type: application/json' -d "$3"
}
call PUT brands/acme '{"plan":"starter"}' >/dev/null || die "register acme"
call PUT brands/globex '{"plan":"professional"}' >/dev/null || die "register globex"
call POST record '{"brandId":"acme","metric":"renders_3d","value":3}' >/dev/null || die "record for acme"
api_key=$(call POST brands/acme/api-keys '{"label":"schemathesis"}' | jq -er .key) ||
  die "create an API key for acme"
status=$(curl -s -o /dev/null -w '%{http_code}' "$api/current/acme" -H "X-Api-Key: $api_key")
[ "$status" = 403 ] || die "the API key reading acme's usage answered $status, not 403 (a service reads nothing)"
ok "brands acme and globex registered; an admin token (CLI) and an API key (API) minted"

# 4. Every operation, every check.
set +e
# From the temp dir: schemathesis keeps a cache (.schemathesis) in its working directory.
cd "$work"
SCHEMATHESIS_HOOKS="$root/tests/openapi/hooks.py" \
  "$venv/bin/st" --no-color --config-file "$root/tests/openapi/schemathesis.toml" run "$base/api/v1/openapi.json" \
  --checks all \
  --max-examples "$examples_per_operation_max" \
  --max-time "$run_seconds_max" \
  --workers "$workers" \
  --seed "$seed" \
  --header "Authorization: Bearer $admin" \
  >"$work/st.out" 2>&1
st_rc=$?
set -e
cd "$root"
cat "$work/st.out"
operations=$(sed -n 's/^ *Tested: \([0-9]*\)$/\1/p' "$work/st.out" | tail -n 1)
cases=$(sed -n 's/^ *\([0-9]*\) generated.*/\1/p' "$work/st.out" | tail -n 1)
documented=$(curl -sS "$base/api/v1/openapi.json" | jq '[.paths[] | keys[]] | length')
echo "schemathesis: ${operations:-?} of $documented operations tested, ${cases:-?} test cases"
[ "$st_rc" -eq 0 ] || die "schemathesis exited $st_rc"
[ "$operations" = "$documented" ] || die "schemathesis tested ${operations:-no} operations; the document has $documented"
echo "schemathesis: all checks passed"
