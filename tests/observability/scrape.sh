#!/usr/bin/env bash
# A real Prometheus scraping the running service, and the observability files checked
# against what it scrapes:
#
#   1. promtool check rules / test rules on every rule file in docs/observability/rules;
#   2. the service (production mode, SQLite in a temp dir, a metrics token) on a free
#      loopback port: a brand registered, 16 of its 20 AI generations and 13 of its 10
#      3D renders recorded, a check, a refusal;
#   3. promtool check metrics on its /metrics, and no brand label outside the per-brand
#      gauges;
#   4. the dashboard and rules name only series the service exposes or
#      docs/observability.md lists as to come (tests/observability/check_references.py);
#   5. prometheus on another free loopback port, scraping /metrics every second with the
#      bearer token and loading the rule files, until its HTTP API answers 80 for
#      luneo_quota_usage_percentage{brand="acme",metric="ai_generations"} (and 130 for
#      renders_3d); then every dashboard query runs there, with data where it can.
#
# Builds nothing: LEDGER_BIN is the service binary (default
# ${CARGO_TARGET_DIR:-target}/debug/usage-ledger). Needs promtool and prometheus (Debian's
# prometheus package), curl, jq and python3. Called by .ci/run.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
# Relative paths are the caller's, as cargo takes CARGO_TARGET_DIR.
LEDGER_BIN="${LEDGER_BIN:-${CARGO_TARGET_DIR:-$root/target}/debug/usage-ledger}"
case "$LEDGER_BIN" in /*) ;; *) LEDGER_BIN="$PWD/$LEDGER_BIN" ;; esac
# Kept apart: every LEDGER_* variable is cleared before the service starts.
service_bin="$LEDGER_BIN"
cd "$root"
# How long Prometheus gets to scrape and answer the expected value.
wait_seconds_max=30

for tool in promtool prometheus curl jq python3; do
  command -v "$tool" >/dev/null 2>&1 || { echo "scrape.sh needs $tool" >&2; exit 1; }
done
[ -x "$service_bin" ] || { echo "no service binary at $service_bin (build it, or set LEDGER_BIN)" >&2; exit 1; }

work=$(mktemp -d)
service_pid=""
prometheus_pid=""
cleanup() {
  local rc=$?
  for pid in "$prometheus_pid" "$service_pid"; do
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  done
  if [ "$rc" -ne 0 ]; then
    for log in service.err prometheus.err; do
      [ -s "$work/$log" ] && { echo "--- $log (last 20 lines)" >&2; tail -n 20 "$work/$log" >&2; }
    done
  fi
  rm -rf "$work"
  return "$rc"
}
trap cleanup EXIT

ok() { echo "ok: $*"; }
die() { echo "FAIL: $*" >&2; exit 1; }

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# 1. The rule files, and their unit tests.
rules=()
for f in docs/observability/rules/*.yml; do
  case "$f" in *_test.yml) ;; *) rules+=("$f") ;; esac
done
[ "${#rules[@]}" -gt 0 ] || die "no rule files in docs/observability/rules"
for f in "${rules[@]}"; do
  test_file="${f%.yml}_test.yml"
  [ -f "$test_file" ] || die "$f has no unit tests ($test_file)"
  promtool check rules "$f" >"$work/promtool.out" 2>&1 || { cat "$work/promtool.out" >&2; die "promtool check rules $f"; }
  promtool test rules "$test_file" >"$work/promtool.out" 2>&1 || { cat "$work/promtool.out" >&2; die "promtool test rules $test_file"; }
  ok "promtool check rules $f; promtool test rules $test_file"
done

# 2. The service, as an operator would run it in production, on the embedded store.
service_port=$(free_port)
prometheus_port=$(free_port)
while [ "$prometheus_port" = "$service_port" ]; do prometheus_port=$(free_port); done
metrics_token="scrape-$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
printf '%s' "$metrics_token" >"$work/metrics-token"
# Only the settings below: nothing inherited from the caller's environment (CI sets
# DATABASE_URL for the PostgreSQL tests).
while read -r name; do unset "$name"; done < <(compgen -e | grep '^LEDGER_')
unset DATABASE_URL
export LEDGER_MODE=production
jwt_secret="scrape-test-secret-$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
export LEDGER_JWT_SECRET="$jwt_secret"
export LEDGER_METRICS_TOKEN="$metrics_token"
export LEDGER_DATA_DIR="$work/data"
export LEDGER_BIND="127.0.0.1:$service_port"
base="http://127.0.0.1:$service_port"
api="$base/api/v1/usage-billing"

# shellcheck source=tests/lib/serve.sh
. "$root/tests/lib/serve.sh"
start_service "production mode, SQLite in a temp dir"

admin=$(cd "$work" && "$service_bin" token --role admin)
call() { # method path json-body
  curl -sS --fail-with-body -X "$1" "$api/$2" -H "Authorization: Bearer $admin" \
    -H 'Content-Type: application/json' -d "$3" >>"$work/answers.out"
  echo >>"$work/answers.out"
}
call PUT brands/acme '{"plan":"starter"}' || die "register acme"
call POST record '{"brandId":"acme","metric":"ai_generations","value":16}' || die "record 16 AI generations"
# 13 of starter's 10 3D renders (a charge metric): 130 %, the gauge is not capped at 100.
call POST record '{"brandId":"acme","metric":"renders_3d","value":13}' || die "record 13 3D renders"
# A check that consumes nothing, so the check counters and histogram have series.
call POST check-quota '{"brandId":"acme","metric":"ai_generations","requestedAmount":1}' || die "check-quota"
# A refusal, so the refusals counter has a series: starter blocks team_members above 3.
status=$(curl -s -o /dev/null -w '%{http_code}' -X PUT "$api/brands/acme/gauges/team_members" \
  -H "Authorization: Bearer $admin" -H 'Content-Type: application/json' -d '{"level":5}')
[ "$status" = 409 ] || die "setting team_members to 5 above starter's block limit of 3 answered $status, not 409"
ok "acme registered on starter, 16 of 20 ai_generations and 13 of 10 renders_3d recorded, one check, one refusal"

# 3. The exposition: promtool's lint, and brands only on the per-brand gauges.
status=$(curl -s -o /dev/null -w '%{http_code}' "$base/metrics")
[ "$status" = 401 ] || die "/metrics without the token answered $status, not 401"
status=$(curl -s -o /dev/null -w '%{http_code}' "$base/metrics" -H "Authorization: Bearer not-$metrics_token")
[ "$status" = 401 ] || die "/metrics with a wrong token answered $status, not 401"
curl -sS --fail-with-body "$base/metrics" -H "Authorization: Bearer $metrics_token" >"$work/metrics.txt" ||
  die "/metrics with the metrics token"
promtool check metrics <"$work/metrics.txt" >"$work/promtool.out" 2>&1 ||
  { cat "$work/promtool.out" >&2; die "promtool check metrics"; }
ok "promtool check metrics on /metrics ($(grep -c '^# TYPE' "$work/metrics.txt") families); 401 without the token or with a wrong one"

per_brand='^luneo_quota_(usage_percentage|remaining_units|overage_units|last_change_timestamp_seconds)\{'
if grep -v '^#' "$work/metrics.txt" | grep -Ev "$per_brand" | grep -q 'brand="'; then
  grep -v '^#' "$work/metrics.txt" | grep -Ev "$per_brand" | grep 'brand="' | head -n 5 >&2
  die "a series other than the per-brand gauges carries a brand label"
fi
ok "no brand label outside the per-brand gauges"

# 4. Every series the dashboard and the rules name: exposed now, or documented as to come.
awk '/^# TYPE /{print $3}' "$work/metrics.txt" | sort -u >"$work/exposed.txt"
{
  cat "$work/exposed.txt"
  # The list may be empty: grep finding nothing is not a failure here.
  sed -n '/^<!-- metrics-to-come -->$/,/^<!-- \/metrics-to-come -->$/p' docs/observability.md |
    { grep -o '`\(luneo\|ledger\)_[a-z0-9_]*' || true; } | tr -d '`'
} | sort -u >"$work/known.txt"
grep -q '^<!-- metrics-to-come -->$' docs/observability.md ||
  die "docs/observability.md has lost its metrics-to-come markers"
python3 tests/observability/check_references.py "$work/known.txt" \
  docs/observability/grafana/quotas-dashboard.json "${rules[@]}" \
  --queries "$work/queries.txt" --exposed "$work/exposed.txt" ||
  die "the dashboard or a rule file names a series nobody exposes"

# 5. Prometheus, scraping every second with the bearer token, the rule files loaded.
rule_list=""
for f in "${rules[@]}"; do rule_list+="  - $root/$f"$'\n'; done
cat >"$work/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
$rule_list
scrape_configs:
  - job_name: usage-ledger
    metrics_path: /metrics
    authorization:
      type: Bearer
      credentials_file: $work/metrics-token
    static_configs:
      - targets: ["127.0.0.1:$service_port"]
EOF
promtool check config "$work/prometheus.yml" >"$work/promtool.out" 2>&1 ||
  { cat "$work/promtool.out" >&2; die "promtool check config on the generated scrape config"; }
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
  --web.listen-address="127.0.0.1:$prometheus_port" --log.level=warn \
  >"$work/prometheus.out" 2>"$work/prometheus.err" &
prometheus_pid=$!
prom="http://127.0.0.1:$prometheus_port"

query() { # PromQL -> the API's JSON answer
  curl -sS -G "$prom/api/v1/query" --data-urlencode "query=$1"
}
expected_query='luneo_quota_usage_percentage{brand="acme",metric="ai_generations"}'
value=""
deadline=$((SECONDS + wait_seconds_max))
while [ "$SECONDS" -lt "$deadline" ]; do
  kill -0 "$prometheus_pid" 2>/dev/null || die "prometheus exited"
  value=$(query "$expected_query" 2>/dev/null | jq -r '.data.result[0].value[1] // empty' 2>/dev/null || true)
  [ -n "$value" ] && break
  sleep 0.5
done
[ -n "$value" ] || die "Prometheus had no $expected_query after ${wait_seconds_max}s"
[ "$value" = 80 ] || die "Prometheus answers $value for $expected_query, not 80 (16 of 20)"
ok "Prometheus on $prom scraped with the bearer token and answers $expected_query = $value"
over_query='luneo_quota_usage_percentage{brand="acme",metric="renders_3d"}'
over=$(query "$over_query" | jq -r '.data.result[0].value[1] // empty')
[ "$over" = 130 ] || die "Prometheus answers '$over' for $over_query, not 130 (13 of 10, not capped)"
ok "and $over_query = $over (overage shows, no cap at 100)"

health=$(curl -sS "$prom/api/v1/targets" | jq -r '.data.activeTargets[0].health')
[ "$health" = up ] || die "the scrape target is $health"
groups=$(curl -sS "$prom/api/v1/rules" | jq -r '[.data.groups[].name] | sort | join(",")')
[ "$groups" = "ledger-alerts,luneo-quota-alerts,websocket-failover-rules" ] ||
  die "Prometheus loaded the rule groups [$groups]"
unlabelled=$(curl -sS "$prom/api/v1/rules" | jq -r '.data.groups[].rules[]
  | select(.type == "alerting")
  | select(.labels.severity == null or .labels.team == null
           or .annotations.summary == null or .annotations.description == null) | .name')
[ -z "$unlabelled" ] || die "alerts without severity, team, summary or description: $unlabelled"
alerts=$(curl -sS "$prom/api/v1/rules" | jq '[.data.groups[].rules[] | select(.type == "alerting")] | length')
ok "target up; rule groups loaded: $groups; $alerts alerts, each with severity, team, summary, description"

# Each dashboard query parses and runs; one over series the service exposes answers
# data (a rate needs two scrapes in its window, hence the retries).
parsed=0
answered=0
while IFS=$'\t' read -r kind q; do
  [ -n "$q" ] || continue
  for _ in $(seq 1 20); do
    answer=$(query "$q")
    [ "$(jq -r .status <<<"$answer")" = success ] || die "dashboard query refused by Prometheus: $q: $answer"
    [ "$kind" = data ] || break
    [ "$(jq '.data.result | length' <<<"$answer")" -gt 0 ] && break
    sleep 0.5
  done
  if [ "$kind" = data ]; then
    [ "$(jq '.data.result | length' <<<"$answer")" -gt 0 ] || die "dashboard query answers no data: $q"
    answered=$((answered + 1))
  fi
  parsed=$((parsed + 1))
done <"$work/queries.txt"
ok "all $parsed dashboard queries run on Prometheus; the $answered over exposed series answer data"
echo "observability: all checks passed"
