#!/usr/bin/env bash
# The HTTP benchmark: the release service on loopback under wrk, scenario by scenario,
# next to its two ceilings (GET /healthz, and PostgreSQL's own single-row commits with
# pgbench), in one run. Prints two tables: req/s, latency p50/p99/p99.9, non-2xx answers
# and the ratios; then where each run's time went (CPU per request of the service, of
# PostgreSQL and of the rest, and the engine's appends). See docs/performance.md, "HTTP".
#
#   bench/http/run.sh [--store postgres|sqlite] [--duration 10] [--warmup 2]
#                     [--connections 64] [--threads 2] [--brands 1000]
#                     [--worker-threads N] [--scenarios healthz,pgbench,record,...]
#                     [--database-url URL]
#
# Every run gets a fresh database (or data directory), dropped again on exit, failed
# runs included. Missing tools (wrk, curl, psql, pgbench) are installed with apt-get.
# LEDGER_BIN=path runs that service binary instead of building this checkout's (an A/B
# of two builds in one sitting).
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
script_dir="$repo/bench/http"

# ---------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------

store=postgres
duration_s=10
# Untimed seconds of the same load before each timed run: connections opened, periods
# opened and cached, the projector caught up with registration.
warmup_s=2
connections=64
# wrk threads: the load generator shares the machine's cores with the service and
# PostgreSQL, so it gets no more of them than it needs to keep 64 connections busy.
threads=2
brands=1000
worker_threads=""
scenarios="healthz,pgbench,record,record-hot,check,check-hot,summary,mixed"
server_url="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
# The concurrent scenario: readers and writers at the same time, 64 connections in all.
mixed_readers=48
mixed_writers=16
# pgbench: clients, and the payload size of its one-row insert (a stored
# `UsageRecorded` event's payload is 289 bytes, see the engine bench).
pgbench_clients=8
pgbench_payload_bytes=289
# Latency timeout of wrk: anything slower is a failure, counted as a socket error.
wrk_timeout=30s
# How long the service may take to listen, and the read models to settle.
start_s_max=60
settle_s_max=120

usage() {
  sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

while [ $# -gt 0 ]; do
  case "$1" in
    --store) store=$2; shift 2 ;;
    --duration) duration_s=$2; shift 2 ;;
    --warmup) warmup_s=$2; shift 2 ;;
    --connections) connections=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --brands) brands=$2; shift 2 ;;
    --worker-threads) worker_threads=$2; shift 2 ;;
    --scenarios) scenarios=$2; shift 2 ;;
    --database-url) server_url=$2; shift 2 ;;
    -h | --help) usage 0 ;;
    *) echo "unknown option $1" >&2; usage 2 ;;
  esac
done

case "$store" in
  postgres | sqlite) ;;
  *) echo "--store is postgres or sqlite, not $store" >&2; exit 2 ;;
esac
for n in "$duration_s" "$warmup_s" "$connections" "$threads" "$brands"; do
  [[ "$n" =~ ^[0-9]+$ ]] || { echo "not a whole number: $n" >&2; exit 2; }
done
if [ "$duration_s" -lt 1 ] || [ "$brands" -lt 1 ] || [ "$connections" -lt "$threads" ]; then
  echo "need --duration >= 1, --brands >= 1 and --connections >= --threads" >&2
  exit 2
fi

known_scenarios="healthz,pgbench,record,record-hot,check,check-hot,summary,mixed"
for name in ${scenarios//,/ }; do
  [[ ",$known_scenarios," == *",$name,"* ]] ||
    { echo "unknown scenario $name (known: $known_scenarios)" >&2; exit 2; }
done

wants() { [[ ",$scenarios," == *",$1,"* ]]; }

log() { echo "http-bench: $*" >&2; }

# ---------------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------------

have() { command -v "$1" >/dev/null 2>&1; }

# pgbench ships with the PostgreSQL server package on Debian (`postgresql-15` holds
# /usr/lib/postgresql/15/bin/pgbench; /usr/bin/pgbench is postgresql-client-common's
# wrapper). Take the server's major version when psql can ask it.
pgbench_package() {
  local num
  if have psql && num=$(psql "$server_url" -Atqc 'SHOW server_version_num' 2>/dev/null); then
    echo "postgresql-$((num / 10000))"
  else
    echo postgresql
  fi
}

install_missing() {
  local packages=()
  have wrk || packages+=(wrk)
  have curl || packages+=(curl)
  if [ "$store" = postgres ]; then
    have psql || packages+=(postgresql-client)
    if wants pgbench && ! have pgbench; then packages+=("$(pgbench_package)"); fi
  fi
  [ ${#packages[@]} -eq 0 ] && return
  have apt-get || { echo "missing ${packages[*]} and no apt-get to install them" >&2; exit 1; }
  local sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  log "installing ${packages[*]}"
  # The package lists may be stale or absent on a fresh machine: update once on failure.
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null ||
    { "${sudo[@]}" apt-get update -qq >/dev/null &&
      "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null; }
}

# ---------------------------------------------------------------------------------
# Clean-up: runs on every exit, failures and Ctrl-C included
# ---------------------------------------------------------------------------------

work=""
server_pid=""
database=""
background_pids=()
# The output file of each background wrk, in the same order.
background_outs=()
failed_log_shown=""

cleanup() {
  local status=$? pid i
  for pid in "${background_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    # The service stops on SIGTERM at once; a stuck one is killed after 10 s.
    for ((i = 0; i < 100; i++)); do
      kill -0 "$server_pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  if [ "$status" -ne 0 ] && [ -z "$failed_log_shown" ] && [ -s "$work/server.err" ]; then
    log "failed; the service's last log lines:"
    tail -n 20 "$work/server.err" >&2 || true
  fi
  if [ -n "$database" ]; then
    psql "$server_url" -qc "DROP DATABASE IF EXISTS $database WITH (FORCE)" >/dev/null 2>&1 ||
      log "could not drop database $database"
  fi
  [ -n "$work" ] && rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The server URL with its database replaced (query parameters kept).
with_database() {
  local url=$1 db=$2 query=""
  if [[ "$url" == *\?* ]]; then query="?${url#*\?}"; url=${url%%\?*}; fi
  local scheme=${url%%://*} rest=${url#*://}
  echo "$scheme://${rest%%/*}/$db$query"
}

# ---------------------------------------------------------------------------------
# The service
# ---------------------------------------------------------------------------------

build_service() {
  if [ -n "${LEDGER_BIN:-}" ]; then
    bin=$LEDGER_BIN
    log "service binary: $bin"
    return
  fi
  log "building the release service"
  (cd "$repo" && cargo build --release -q -p usage-ledger --bin usage-ledger)
  local target
  target=$(cd "$repo" && cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
  bin="$target/release/usage-ledger"
  [ -x "$bin" ] || { echo "no service binary at $bin" >&2; exit 1; }
}

# The environment of the service and of `token`: production mode, so the configured
# secret is the only key. They run in $work, which holds no usage-ledger.toml, with
# LEDGER_CONFIG unset: nothing is read from a configuration file.
service_env() {
  local env=(
    "LEDGER_MODE=production"
    "LEDGER_JWT_SECRET=$jwt_secret"
    "LEDGER_DATA_DIR=$work/data"
    "LEDGER_BIND=127.0.0.1:0"
    # One token drives every scenario: the per-credential rate limit would measure itself.
    "LEDGER_HTTP_REQUESTS_PER_SECOND_PER_CREDENTIAL=0"
    "RUST_LOG=info"
    "NO_COLOR=1"
  )
  [ "$store" = postgres ] && env+=("DATABASE_URL=$database_url")
  [ -n "$worker_threads" ] && env+=("TOKIO_WORKER_THREADS=$worker_threads")
  printf '%s\n' "${env[@]}"
}

run_in_service_env() {
  local env=()
  mapfile -t env < <(service_env)
  (cd "$work" && exec env -u DATABASE_URL -u LEDGER_CONFIG "${env[@]}" "$@")
}

start_service() {
  local env=()
  mapfile -t env < <(service_env)
  # One subshell that `exec`s the service: `$!` is the service's own pid, which
  # clean-up stops.
  (cd "$work" && exec env -u DATABASE_URL -u LEDGER_CONFIG "${env[@]}" "$bin" serve) \
    >"$work/server.out" 2>"$work/server.err" &
  server_pid=$!
  # Port 0: the service picks a free port and logs it.
  local addr="" waited=0
  while [ -z "$addr" ]; do
    kill -0 "$server_pid" 2>/dev/null || { log "the service exited at start"; exit 1; }
    addr=$(grep -so 'listening on http://[0-9.:]*' "$work/server.err" | head -n1 | sed 's/.*http:\/\///') || true
    [ -n "$addr" ] && break
    [ "$waited" -ge $((start_s_max * 10)) ] && { log "the service did not listen within ${start_s_max}s"; exit 1; }
    sleep 0.1
    waited=$((waited + 1))
  done
  base="http://$addr"
  until curl -sf "$base/readyz" >/dev/null 2>&1; do
    [ "$waited" -ge $((start_s_max * 10)) ] && { log "the service was not ready within ${start_s_max}s"; exit 1; }
    sleep 0.1
    waited=$((waited + 1))
  done
  log "service ready at $base (pid $server_pid)"
}

mint_token() {
  token=$(run_in_service_env "$bin" token --role admin --ttl 12h --subject ledger-http-bench)
  export LEDGER_BENCH_TOKEN=$token
}

# PUT /brands/{brand} {"plan":"enterprise"} for `brand-00000` … and the hot brand, 16
# at a time; any answer but 2xx stops the benchmark.
register_brands() {
  local config="$work/register.curl" i
  {
    echo 'request = "PUT"'
    echo "header = \"Authorization: Bearer $token\""
    echo 'header = "Content-Type: application/json"'
    echo 'data = "{\"plan\":\"enterprise\"}"'
    # curl expands the `\n` itself.
    printf '%s\n' 'write-out = "%{http_code}\n"'
    for ((i = 0; i < brands; i++)); do
      printf 'url = "%s/api/v1/usage-billing/brands/brand-%05d"\noutput = "/dev/null"\n' "$base" "$i"
    done
    printf 'url = "%s/api/v1/usage-billing/brands/%s"\noutput = "/dev/null"\n' "$base" "$hot_brand"
  } >"$config"
  log "registering $brands brands and $hot_brand on plan enterprise"
  curl -sS --no-progress-meter --parallel --parallel-max 16 -K "$config" >"$work/register.codes"
  local ok bad
  ok=$(grep -c '^2' "$work/register.codes" || true)
  bad=$(grep -vc '^2' "$work/register.codes" || true)
  if [ "$ok" -ne $((brands + 1)) ]; then
    log "REGISTRATION FAILED: $ok brands registered, $bad other answers: $(sort "$work/register.codes" | uniq -c | tr '\n' ' ')"
    exit 1
  fi
}

# Wait until the projector has folded everything the last scenario wrote: the
# events it projected stop changing for a second. A read scenario must not pay for
# the previous scenario's backlog.
settle() {
  local last="" now waited=0
  while [ "$waited" -lt "$settle_s_max" ]; do
    now=$(curl -sf -H "Authorization: Bearer $token" "$base/api/v1/usage-billing/projector" |
      grep -o '"eventsProjected":[0-9]*') || now=""
    [ -n "$now" ] && [ "$now" = "$last" ] && return
    last=$now
    sleep 1
    waited=$((waited + 1))
  done
  log "the projector did not settle within ${settle_s_max}s"
}

# ---------------------------------------------------------------------------------
# Measurements: each appends a row `label conns rps p50 p99 p99.9 non2xx socket`
# (latencies in µs) to $results
# ---------------------------------------------------------------------------------

# wrk MODE CONNECTIONS SECONDS RUN_ID OUTPUT [background]. wrk always runs as a
# background job: bash runs a trap only between commands, and `wait` is one it can
# interrupt, so Ctrl-C stops the run at once (clean-up kills $background_pids). With
# `background`, the caller waits with wait_background.
run_wrk() {
  local mode=$1 conns=$2 seconds=$3 run=$4 out=$5 where=${6:-}
  local t=$threads
  [ "$t" -gt "$conns" ] && t=$conns
  wrk -t"$t" -c"$conns" -d"${seconds}s" --timeout "$wrk_timeout" -s "$script_dir/wrk.lua" \
    "$base" -- "$mode" "$brands" "$hot_brand" "$run" >"$out" 2>&1 &
  background_pids+=($!)
  background_outs+=("$out")
  [ "$where" = background ] || wait_background
}

# Wait for the background wrk processes; one that failed stops the run with its output.
wait_background() {
  local i
  for i in "${!background_pids[@]}"; do
    wait "${background_pids[$i]}" || {
      log "wrk failed:"
      cat "${background_outs[$i]}" >&2
      exit 1
    }
  done
  background_pids=()
  background_outs=()
}

# The numbers of a wrk output as a results row, and the first failing answer, loudly.
wrk_row() {
  local label=$1 conns=$2 out=$3
  local line
  line=$(grep '^wrk-result ' "$out") || { log "wrk printed no result:"; cat "$out" >&2; exit 1; }
  field() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p" <<<"$line"; }
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$conns" "$(field rps)" "$(field p50_us)" \
    "$(field p99_us)" "$(field p999_us)" "$(field non2xx)" "$(field socket_errors)" >>"$results"
  if [ "$(field non2xx)" != 0 ] || [ "$(field socket_errors)" != 0 ]; then
    log "!!! $label: $(field non2xx) non-2xx answers and $(field socket_errors) socket errors of $(field requests) requests"
    grep '^wrk-first-non-2xx ' "$out" | sed 's/^wrk-first-non-2xx /!!! first non-2xx answer: /' >&2 || true
  fi
}

# 2xx answers of a wrk output: requests minus non-2xx.
ok_count() {
  sed -n 's/^wrk-result requests=\([0-9]*\) .* non2xx=\([0-9]*\) .*/\1 \2/p' "$1" |
    awk '{ print $1 - $2 }'
}

# Where a timed run's time went: the engine's append counters from /metrics (commands
# appended, appends, their seconds), the CPU ticks of the service and of every local
# `postgres` process, and the machine's busy and total ticks (/proc/stat). One line.
sample() {
  local engine svc pg
  engine=$(curl -sf -H "Authorization: Bearer $token" "$base/metrics" | awk '
    $1 == "ledger_engine_batch_commands_sum" { cs = $2 } $1 == "ledger_engine_batch_commands_count" { cc = $2 }
    $1 == "ledger_engine_append_duration_seconds_sum" { as = $2 }
    $1 == "ledger_engine_append_duration_seconds_count" { ac = $2 }
    $1 == "ledger_read_model_waits_total" { rw = $2 }
    END { printf "%s %s %s %s %s", cs + 0, cc + 0, as + 0, ac + 0, rw + 0 }')
  svc=$(process_ticks "$server_pid")
  pg=$(postgres_ticks)
  # Fields: appended commands, appends, append seconds, timed appends, reads that waited
  # for the read models, service ticks, PostgreSQL ticks, busy and total machine ticks.
  echo "$engine $svc $pg $(awk '$1 == "cpu" { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t; exit }' /proc/stat)"
}

# "pid ppid own children" CPU ticks (user + system) of each process named, one line each,
# for those still alive. The name field may hold spaces, so the fields are counted from
# its closing parenthesis.
ticks_of() {
  local pid stat
  for pid in "$@"; do
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
    awk -v pid="$pid" '{ print pid, $2, $12 + $13, $14 + $15 }' <<<"${stat##*) }"
  done
}

# CPU ticks of one process (0 once it is gone).
process_ticks() {
  ticks_of "$1" | awk '{ t += $3 } END { print t + 0 }'
}

# CPU ticks of the local PostgreSQL: every live `postgres` process's, plus what the
# postmaster's exited children used (pgbench's connections close before the sample).
postgres_ticks() {
  # shellcheck disable=SC2046 # one pid per word
  ticks_of $(pgrep -x postgres || true) | awk '
    { parent[$1] = $2; own[$1] = $3; children[$1] = $4 }
    END { for (p in own) { t += own[p]; if (!(parent[p] in own)) t += children[p] } print t + 0 }'
}

# One row of the cost table from two samples around a timed run and the requests wrk
# sent in it: CPU per request of the service, of PostgreSQL and of the rest (wrk, the
# kernel), how busy the machine was, and (when it appended) the engine's appends.
cost_row() {
  local label=$1 requests=$2 before=$3 after=$4
  awk -v l="$label" -v d="$duration_s" -v r="$requests" -v b="$before" -v a="$after" \
    -v hz="$(getconf CLK_TCK)" -v pg="$local_postgres" 'BEGIN {
    split(b, x, " "); split(a, y, " ")
    us = 1e6 / hz / (r > 0 ? r : 1)
    svc = y[6] - x[6]; db = y[7] - x[7]; busy = y[8] - x[8]; total = y[9] - x[9]
    line = sprintf("%s\t%.0f\t%s\t%.0f\t%.0f %%", l, svc * us, pg ? sprintf("%.0f", db * us) : "-",
                   (busy - svc - (pg ? db : 0)) * us, 100 * busy / (total > 0 ? total : 1))
    n = y[2] - x[2]
    if (n > 0) line = line sprintf("\t%.0f\t%.1f\t%.2f", n / d, (y[1] - x[1]) / n, 1000 * (y[3] - x[3]) / (y[4] - x[4]))
    else line = line "\t-\t-\t-"
    print line "\t" (y[5] - x[5])
  }' >>"$costs"
}

# Requests wrk sent in a timed run (answered or not).
requests_of() {
  sed -n 's/^wrk-result requests=\([0-9]*\) .*/\1/p' "$1"
}

# A scenario on one wrk: warm-up, then the timed run. Leaves the 2xx answers of both
# in $ok_answers.
measure() {
  local name=$1 label=$2 mode=$3 conns=$4 before
  ok_answers=0
  if [ "$warmup_s" -gt 0 ]; then
    run_wrk "$mode" "$conns" "$warmup_s" "$name-warm-$run_nonce" "$work/$name.warm.out"
    ok_answers=$(ok_count "$work/$name.warm.out")
  fi
  log "$label: ${duration_s}s, $conns connections"
  before=$(sample)
  run_wrk "$mode" "$conns" "$duration_s" "$name-$run_nonce" "$work/$name.out"
  cost_row "$label" "$(requests_of "$work/$name.out")" "$before" "$(sample)"
  wrk_row "$label" "$conns" "$work/$name.out"
  ok_answers=$((ok_answers + $(ok_count "$work/$name.out")))
}

# Readers and writers together, two wrk processes started at the same instant.
measure_mixed() {
  if [ "$warmup_s" -gt 0 ]; then
    run_wrk summary "$mixed_readers" "$warmup_s" "mixed-warm-r-$run_nonce" "$work/mixed-r.warm.out" background
    run_wrk record "$mixed_writers" "$warmup_s" "mixed-warm-w-$run_nonce" "$work/mixed-w.warm.out" background
    wait_background
  fi
  log "summary ($mixed_readers connections) while recording ($mixed_writers connections): ${duration_s}s"
  local before
  before=$(sample)
  run_wrk summary "$mixed_readers" "$duration_s" "mixed-r-$run_nonce" "$work/mixed-r.out" background
  run_wrk record "$mixed_writers" "$duration_s" "mixed-w-$run_nonce" "$work/mixed-w.out" background
  wait_background
  cost_row "summary and record together" \
    "$(($(requests_of "$work/mixed-r.out") + $(requests_of "$work/mixed-w.out")))" "$before" "$(sample)"
  wrk_row "GET /summary, $brands_label brands, during writes" "$mixed_readers" "$work/mixed-r.out"
  wrk_row "POST /record, $brands_label brands, during reads" "$mixed_writers" "$work/mixed-w.out"
}

# PostgreSQL's own ceiling for one-row commits: pgbench, 8 clients, one INSERT per
# transaction into a scratch table, prepared statements; latencies from its
# per-transaction log.
measure_pgbench() {
  log "pgbench: ${duration_s}s, $pgbench_clients clients, one-row INSERT per transaction"
  psql "$database_url" -qc "CREATE TABLE http_bench_scratch (
      id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, payload text NOT NULL)" >/dev/null
  echo "INSERT INTO http_bench_scratch (payload) VALUES (repeat('x', $pgbench_payload_bytes));" \
    >"$work/pgbench.sql"
  local before tps failed
  before=$(sample)
  (cd "$work" && pgbench -n -c "$pgbench_clients" -j 2 -T "$duration_s" -M prepared \
    -f "$work/pgbench.sql" -l --log-prefix=pgbench_tx "$database_url") >"$work/pgbench.out" 2>&1 ||
    { log "pgbench failed:"; cat "$work/pgbench.out" >&2; exit 1; }
  cost_row "PostgreSQL one-row commits, pgbench (ceiling)" \
    "$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$work/pgbench.out")" \
    "$before" "$(sample)"
  tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$work/pgbench.out" | head -n1)
  failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$work/pgbench.out")
  [ -n "$tps" ] || { log "pgbench printed no tps:"; cat "$work/pgbench.out" >&2; exit 1; }
  # Third field of each log line: the transaction's latency in µs.
  cat "$work"/pgbench_tx.* | awk '{ print $3 }' | sort -n >"$work/pgbench.latency"
  local n
  n=$(wc -l <"$work/pgbench.latency")
  rank() { sed -n "$(awk -v n="$n" -v q="$1" 'BEGIN { r = int(n * q + 0.999999); if (r < 1) r = 1; print r }')p" "$work/pgbench.latency"; }
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "PostgreSQL one-row commits, pgbench (ceiling)" \
    "$pgbench_clients" "$tps" "$(rank 0.5)" "$(rank 0.99)" "$(rank 0.999)" "${failed:-0}" 0 >>"$results"
  psql "$database_url" -qc "DROP TABLE http_bench_scratch" >/dev/null
}

# The hot brand's api_calls must be what its 2xx answers recorded: every timed and
# warm-up request answered 2xx, plus at most one per connection still in flight when
# each of the two wrk runs stopped (the service may have recorded those).
check_hot_brand() {
  local answered=$1 counted
  counted=$(curl -sf -H "Authorization: Bearer $token" \
    "$base/api/v1/usage-billing/current/$hot_brand" | grep -o '"api_calls":[0-9]*' | cut -d: -f2) || counted=""
  local slack=$((2 * connections))
  if [ -z "$counted" ] || [ "$counted" -lt "$answered" ] || [ "$counted" -gt $((answered + slack)) ]; then
    log "!!! SUSPICIOUS: the hot brand counts ${counted:-no} api_calls, wrk saw $answered 2xx answers (+ up to $slack in flight)"
    suspicious="hot brand counted ${counted:-none} api_calls for $answered 2xx answers"
  else
    log "hot brand counts $counted api_calls for $answered 2xx answers: consistent"
  fi
}

# ---------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------

report() {
  local healthz pgbench record
  healthz=$(awk -F'\t' '$1 ~ /^GET \/healthz/ { print $3 }' "$results")
  pgbench=$(awk -F'\t' '$1 ~ /pgbench/ { print $3 }' "$results")
  record=$(awk -F'\t' -v l="POST /record, $brands_label brands" '$1 == l { print $3 }' "$results")
  echo
  echo "HTTP benchmark, store $store_label: ${duration_s}s per scenario (after ${warmup_s}s of warm-up)," \
    "wrk $threads threads, service runtime threads: ${worker_threads:-${TOKIO_WORKER_THREADS:-one per core}}," \
    "$(nproc) cores, load average at the end $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
  for format in plain markdown; do
    awk -F'\t' -v healthz="$healthz" -v format="$format" '
      function ms(us) { return sprintf("%.2f", us / 1000) }
      function thousands(x,   s, out) {
        s = sprintf("%.0f", x); out = ""
        while (length(s) > 3) { out = "," substr(s, length(s) - 2) out; s = substr(s, 1, length(s) - 3) }
        return s out
      }
      BEGIN { n = 0 }
      {
        n++
        row[n, 1] = $1; row[n, 2] = $2; row[n, 3] = thousands($3)
        row[n, 4] = ms($4); row[n, 5] = ms($5); row[n, 6] = ms($6); row[n, 7] = $7; row[n, 8] = $8
        row[n, 9] = (healthz > 0 && $1 !~ /pgbench/) ? sprintf("%.0f %%", 100 * $3 / healthz) : "-"
      }
      END {
        split("scenario|conns|req/s|p50 ms|p99 ms|p99.9 ms|non-2xx|socket errors|/ healthz", h, "|")
        for (c = 1; c <= 9; c++) { row[0, c] = h[c]; w[c] = length(h[c]) }
        for (r = 1; r <= n; r++) for (c = 1; c <= 9; c++) if (length(row[r, c]) > w[c]) w[c] = length(row[r, c])
        if (format == "markdown") {
          print "| " h[1] " | " h[2] " | " h[3] " | " h[4] " | " h[5] " | " h[6] " | " h[7] " | " h[8] " | " h[9] " |"
          print "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
          for (r = 1; r <= n; r++) {
            line = "|"
            for (c = 1; c <= 9; c++) line = line " " row[r, c] " |"
            print line
          }
          exit
        }
        for (r = 0; r <= n; r++) {
          line = sprintf("%-" w[1] "s", row[r, 1])
          for (c = 2; c <= 9; c++) line = line sprintf("  %" w[c] "s", row[r, c])
          print line
          if (r == 0) {
            rule = ""
            for (c = 1; c <= 9; c++) for (i = 0; i < w[c] + (c > 1 ? 2 : 0); i++) rule = rule "-"
            print rule
          }
        }
      }' "$results"
    echo
  done
  if [ -s "$costs" ]; then
    echo "Where each timed run's time went: CPU microseconds per request (service; PostgreSQL, every"
    echo "local postgres process; the rest of the machine: wrk and the kernel), the machine's busy"
    echo "share, the engine's appends, and the reads that waited for the read models (from /metrics):"
    echo
    echo "| scenario | service µs/req | PostgreSQL µs/req | rest µs/req | machine busy | appends/s | commands per append | ms per append | reads waited |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    awk -F'\t' '{ printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7, $8, $9 }' "$costs"
    echo
  fi
  if [ -n "$record" ] && [ -n "$pgbench" ]; then
    awk -v r="$record" -v p="$pgbench" -v b="$brands_label" \
      'BEGIN { printf "POST /record (%s brands) / PostgreSQL one-row commits (pgbench): %.2fx\n", b, r / p }'
  elif [ "$store" = sqlite ]; then
    echo "POST /record / PostgreSQL one-row commits: not measured (SQLite store)"
  fi
  if [ -n "$healthz" ]; then
    echo "/ healthz: each scenario's req/s as a share of GET /healthz's (the HTTP stack's ceiling)"
  fi
  [ -z "$suspicious" ] || echo "SUSPICIOUS: $suspicious"
  if awk -F'\t' '$7 != 0 || $8 != 0 { bad = 1 } END { exit !bad }' "$results"; then
    echo "!!! FAILED REQUESTS: some scenarios answered non-2xx or lost connections (see above);" \
      "their rates do not measure the ledger"
    return 1
  fi
}

# ---------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------

install_missing
build_service
work=$(mktemp -d "${TMPDIR:-/tmp}/ledger-http-bench.XXXXXX")
results="$work/results.tsv"
: >"$results"
costs="$work/costs.tsv"
: >"$costs"
run_nonce=$(date +%s)-$$
hot_brand=bench-hot
store_label=PostgreSQL
[ "$store" = sqlite ] && store_label=SQLite
brands_label=$(awk -v n="$brands" 'BEGIN { s = n ""; while (length(s) > 3) { o = "," substr(s, length(s) - 2) o; s = substr(s, 1, length(s) - 3) } print s o }')
suspicious=""
local_postgres=""
# A known HS256 secret for the service and the token it accepts: 32 random bytes as
# 64 hex characters (the service asks for at least 32 bytes).
jwt_secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')

if [ "$store" = postgres ]; then
  database="ledger_http_bench_$(date +%s)_$$"
  psql "$server_url" -qc "CREATE DATABASE $database" >/dev/null
  database_url=$(with_database "$server_url" "$database")
  # PostgreSQL's CPU is counted when the server runs on this machine.
  case "$server_url" in
    *@127.0.0.1* | *@localhost* | *@\[::1\]*) pgrep -x postgres >/dev/null && local_postgres=1 ;;
  esac
  log "store: PostgreSQL, fresh database $database"
else
  log "store: SQLite in $work/data"
  if wants pgbench; then log "pgbench skipped: no PostgreSQL"; fi
  scenarios=${scenarios//pgbench/}
fi

start_service
mint_token
register_brands
settle

if wants healthz; then measure healthz "GET /healthz (ceiling)" healthz "$connections"; fi
if wants pgbench; then measure_pgbench; fi
if wants record; then
  measure record "POST /record, $brands_label brands" record "$connections"
  settle
fi
if wants record-hot; then
  measure record-hot "POST /record, hot brand" record-hot "$connections"
  settle
  check_hot_brand "$ok_answers"
fi
if wants check; then measure check "POST /check-quota, $brands_label brands" check "$connections"; fi
if wants check-hot; then measure check-hot "POST /check-quota, hot brand" check-hot "$connections"; fi
if wants summary; then measure summary "GET /summary, $brands_label brands" summary "$connections"; fi
if wants mixed; then measure_mixed; fi

failed_log_shown=yes
report
