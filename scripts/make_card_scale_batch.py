#!/usr/bin/env python3
"""Writes the two 10,000-payment batches of BENCHMARKS.md's "Many payments on one card":
every payment declines with insufficient funds, on one shared card or on one card each.

    python3 scripts/make_card_scale_batch.py OUT_DIR [COUNT]
"""
import json
import sys

out = sys.argv[1] if len(sys.argv) > 1 else "."
count = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000
for name, card in [("shared", lambda i: "shared"), ("distinct", lambda i: str(i))]:
    with open(f"{out}/{name}.jsonl", "w") as f:
        for i in range(count):
            f.write(json.dumps({
                "amount": {"value": 1000, "currency": "usd"},
                "cadence": "recurring",
                "customer": f"cus_{i}",
                "payment_method": f"pm_card_visa_chargeDeclinedInsufficientFunds__{card(i)}",
                "retry_details": {"retry_policy": "stripe_recommended"},
            }) + "\n")
