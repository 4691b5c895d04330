#!/usr/bin/env bash
# How fast `offsession serve` works off a backlog: 10 s of creates (closed loop, 256
# clients), then the seconds from the start of the load until the store has nothing
# due (`offsession status --json`, `due_now`, polled every 0.5 s). SQLite, a fresh file.
#   cargo build --release --bin offsession --example load
#   scripts/bench_drain.sh
# OFFSESSION_* variables reach the server, e.g. OFFSESSION_ENGINE__CLAIM_BATCH=1024.
set -euo pipefail
key=sk_test_bench_drain_123
port=4298
tmp=$(mktemp -d)
export OFFSESSION_STORE__URL="sqlite://$tmp/drain.db"
trap 'kill -TERM "$pid" 2>/dev/null || true; rm -rf "$tmp"' EXIT
OFFSESSION_API_KEY=$key OFFSESSION_SERVER__LISTEN=127.0.0.1:$port OFFSESSION_SERVER__REQUESTS_PER_SECOND=0 \
  target/release/offsession serve --config config/worker.toml >/dev/null 2>"$tmp/serve.log" &
pid=$!
until curl -s -o /dev/null "http://127.0.0.1:$port/healthz"; do sleep 0.1; done
start=$(date +%s.%N)
target/release/examples/load --url "http://127.0.0.1:$port" --key $key --seconds 10 --concurrency 256
while true; do
  due=$(target/release/offsession status --config config/worker.toml --json |
    python3 -c "import json, sys; print(json.load(sys.stdin)['due_now'])")
  if [ "$due" = "0" ]; then
    python3 -c "print('{\"nothing_due_after_s\": %.1f}' % ($(date +%s.%N) - $start))"
    break
  fi
  sleep 0.5
done
kill -TERM "$pid"; wait "$pid" || true
