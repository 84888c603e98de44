# Sourced by the scripts that run the real service: start `$service_bin serve` in `$work`
# (its output in `$work/service.out` and `.err`) and wait until `$base/readyz` answers.
# Sets `service_pid`. Needs the sourcing script's `die` and `ok`.
start_service() { # description-for-the-ready-line
  (cd "$work" && exec "$service_bin" serve >"$work/service.out" 2>"$work/service.err") &
  service_pid=$!
  for _ in $(seq 1 100); do
    curl -sf "$base/readyz" >/dev/null 2>&1 && break
    kill -0 "$service_pid" 2>/dev/null || die "the service exited at start-up"
    sleep 0.1
  done
  curl -sf "$base/readyz" >/dev/null || die "the service is not ready on $base"
  ok "service ready on $base ($1)"
}
