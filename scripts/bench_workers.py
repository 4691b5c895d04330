#!/usr/bin/env python3
"""Settled payments per second with 1, 2 and 3 `offsession worker` processes on one
Postgres, against the fake Stripe (`offsession-fake-stripe`) on loopback, and how late
attempts were sent after they fell due (from `offsession status --json`).

Build first: cargo build --release -p offsession -p offsession-fake-stripe
Run:         python3 scripts/bench_workers.py [--workers 1 2 3] [--payments 20000]
             [--arrival-rate N]  (N payments submitted each second while the workers run)

For each worker count: a fresh schema; `submit` stores the payments (timed apart),
or with `--arrival-rate` submits them second by second while the workers run; the
workers start together; the clock runs from their start until every payment is
terminal (polled with one `count(*)` a second through psql); then SIGTERM, and
`status` reads the lateness of first attempts (queued behind the whole batch) and of
retries (scheduled `--retry-offset` after a decline). The schema is dropped after.
Standard library only; needs `psql` on PATH.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

KEY = "sk_test_fake_0123456789"


def psql(url, sql):
    out = subprocess.run(["psql", "-At", url, "-c", sql], check=True, capture_output=True, text=True)
    return out.stdout.strip()


def config(fake, url, schema, instance, offset, concurrency, claim_batch):
    return f"""
[engine]
instance_id = "{instance}"
lease = "30s"
replay_backoff = ["1s", "2s"]
concurrency = {concurrency}
claim_batch = {claim_batch}
default_retry_policy = "bench"

[retry_policies.bench]
offsets = ["{offset}"]
window = "1h"

[processor]
type = "stripe"
id = "stripe"
secret_key = "{KEY}"
api_base = "http://{fake}"
request_timeout = "10s"
max_network_retries = 0
payment_method_types = ["card"]

[store]
url = "{url}"
schema = "{schema}"
max_connections = 16

[worker]
poll_interval = "100ms"
"""


def batch(path, n, first=0):
    with open(path, "w") as f:
        for i in range(first, first + n):
            f.write(json.dumps({
                "amount": {"value": 1000 + i % 5000, "currency": "usd"},
                "cadence": "recurring",
                "customer": f"cus_{i:07}",
                "payment_method": f"pm_{i:07}",
                "retry_details": {"retry_policy": "bench"},
            }) + "\n")


def run_one(args, workers, tmp):
    schema = f"bench_workers_{workers}_{os.getpid()}"
    addr_file = os.path.join(tmp, f"fake{workers}.addr")
    fake = subprocess.Popen([args.fake, "--addr-file", addr_file, "--seed", str(workers),
                             "--decline-rate", str(args.decline_rate), "--recover-rate", "1"],
                            stdout=subprocess.DEVNULL)
    try:
        while not os.path.exists(addr_file):
            time.sleep(0.05)
        addr = open(addr_file).read().strip()
        configs = []
        for w in range(1, workers + 1):
            path = os.path.join(tmp, f"w{workers}_{w}.toml")
            with open(path, "w") as f:
                f.write(config(addr, args.postgres, schema, f"w{w}", args.retry_offset,
                               args.concurrency, args.claim_batch))
            configs.append(path)
        def submit(first, n):
            path = os.path.join(tmp, f"batch{first}.jsonl")
            batch(path, n, first)
            out = subprocess.run([args.bin, "submit", "--config", configs[0], "--input", path, "--json"],
                                 check=True, capture_output=True, text=True)
            report = json.loads(out.stdout)
            assert report["created"] == n and not report["invalid"], report

        intake = None
        if not args.arrival_rate:
            began = time.monotonic()
            submit(0, args.payments)
            intake = round(args.payments / (time.monotonic() - began))
        env = dict(os.environ, RUST_LOG="warn")
        started = time.monotonic()
        procs = [subprocess.Popen([args.bin, "worker", "--config", c], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for c in configs]
        try:
            if args.arrival_rate:
                # Payments arrive while the workers run: one `submit` of a second's worth
                # each second, so lateness is the scheduler's, not a backlog's.
                sent = 0
                while sent < args.payments:
                    tick = time.monotonic()
                    n = min(args.arrival_rate, args.payments - sent)
                    submit(sent, n)
                    sent += n
                    time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
            while True:
                time.sleep(1.0)
                done = int(psql(args.postgres,
                                f"select count(*) from {schema}.payments where status in ('succeeded','failed')"))
                if done >= args.payments:
                    break
                if time.monotonic() - started > args.timeout:
                    raise SystemExit(f"{workers} workers: only {done} of {args.payments} settled in {args.timeout}s")
            # The poll is once a second: the settle time is rounded up to it.
            elapsed = time.monotonic() - started
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            codes = [p.wait(timeout=60) for p in procs]
        status = subprocess.run([args.bin, "status", "--config", configs[0], "--json"],
                                check=True, capture_output=True, text=True)
        late = json.loads(status.stdout)["due_to_attempt_ms"]
        ledger = json.loads(subprocess.run(["curl", "-s", f"http://{addr}/ledger"], check=True,
                                           capture_output=True, text=True).stdout)
        charged = len({c["payment_id"] for c in ledger["charges"]})
        doubled = len(ledger["charges"]) - charged
        return {
            "workers": workers,
            "payments": args.payments,
            "seconds": round(elapsed, 1),
            "settled_per_second": round(args.payments / elapsed),
            "submitted_per_second": intake,
            "arrival_rate": args.arrival_rate,
            "first_attempts": late["first attempts"],
            "retries": late["retries"],
            "exit_codes": codes,
            "charged": charged,
            "charged_twice": doubled,
        }
    finally:
        fake.send_signal(signal.SIGTERM)
        fake.wait(timeout=30)
        psql(args.postgres, f"drop schema if exists {schema} cascade")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--payments", type=int, default=20000)
    parser.add_argument("--postgres", default=os.environ.get("OFFSESSION_TEST_POSTGRES_URL",
                                                             "postgres://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--bin", default="target/release/offsession")
    parser.add_argument("--fake", default="target/release/offsession-fake-stripe")
    parser.add_argument("--decline-rate", type=float, default=0.2)
    parser.add_argument("--retry-offset", default="2s")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--claim-batch", type=int, default=256)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--arrival-rate", type=int, default=0,
                        help="submit this many payments a second while the workers run (0: all before)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run_one(args, n, tmp) for n in args.workers]
    print(json.dumps(rows, indent=2))
    print()
    print("| workers | payments | arrival / s | submit / s | settled / s | first attempt late p50 / p99 (ms) | retry late p50 / p99 (ms) | charged twice |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        arrival = r["arrival_rate"] or "all before"
        print(f"| {r['workers']} | {r['payments']} | {arrival} | {r['submitted_per_second'] or '—'} | {r['settled_per_second']} | "
              f"{r['first_attempts']['p50']} / {r['first_attempts']['p99']} | "
              f"{r['retries']['p50']} / {r['retries']['p99']} | {r['charged_twice']} |")


if __name__ == "__main__":
    sys.exit(main())
