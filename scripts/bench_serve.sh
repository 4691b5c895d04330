#!/usr/bin/env bash
# Creates per second and latency of `offsession serve` on loopback, client included,
# on a fresh store per run: the maximum (the best closed loop of 64, 128 and 256
# clients), then open loop at 50 % and 90 % of it. The worker runs in the same process, attempting what is created.
#   cargo build --release --bin offsession --example load
#   scripts/bench_serve.sh sqlite            # or: scripts/bench_serve.sh postgres [URL]
# RATE=5000 scripts/bench_serve.sh sqlite runs only the open loop at that rate (on 256
# connections, as wrk2 and oha's rate mode keep a fixed set); other
# OFFSESSION_* variables in the environment reach the server (e.g.
# OFFSESSION_ENGINE__CONCURRENCY=8).
set -euo pipefail
# Open loops send on this many connections (CONNECTIONS=N to change it).
connections=${CONNECTIONS:-256}
store=${1:-sqlite}
pg=${2:-postgres://postgres@127.0.0.1:5432/test}
key=sk_test_bench_serve_123
port=4299
tmp=$(mktemp -d)
server_pid=""
trap 'if [ -n "$server_pid" ]; then kill -TERM "$server_pid" 2>/dev/null || true; fi; rm -rf "$tmp"' EXIT
run() {
  local name=$1; shift
  local url schema=""
  if [ "$store" = sqlite ]; then url="sqlite://$tmp/$name.db"; else url=$pg; schema="bench_serve_${name}_$$"; fi
  OFFSESSION_API_KEY=$key OFFSESSION_SERVER__LISTEN=127.0.0.1:$port OFFSESSION_SERVER__REQUESTS_PER_SECOND=0 \
    OFFSESSION_STORE__URL=$url OFFSESSION_STORE__SCHEMA=${schema:-offsession} \
    target/release/offsession serve --config config/worker.toml >/dev/null 2>"$tmp/$name.log" &
  server_pid=$!
  until curl -s -o /dev/null "http://127.0.0.1:$port/healthz"; do sleep 0.1; done
  target/release/examples/load --url "http://127.0.0.1:$port" --key $key --seconds 10 "$@"
  kill -TERM "$server_pid"; wait "$server_pid" || true
  server_pid=""
  if [ -n "$schema" ]; then psql -q "$pg" -c "set client_min_messages = warning; drop schema if exists $schema cascade" >/dev/null; fi
}
if [ -n "${RATE:-}" ]; then
  run "rate_$RATE" --rate "$RATE" --concurrency "$connections"
  exit 0
fi
# The maximum is the best closed loop of 64, 128 and 256 clients: with too few clients
# a closed loop measures the latency of one request, not what the server can take.
best=0
for clients in 64 128 256; do
  out=$(run "max_$clients" --concurrency "$clients")
  echo "$out"
  best=$(python3 -c "import json,sys; print(max(float(sys.argv[1]), json.loads(sys.argv[2])['creates_per_second']))" "$best" "$out")
done
rate=$best
for share in 0.5 0.9; do
  run "open_${share/./}" --rate "$(python3 -c "print(round($rate * $share))")" --concurrency "$connections"
done
