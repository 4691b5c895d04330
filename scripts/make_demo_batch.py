#!/usr/bin/env python3
"""Writes config/demo-batch.jsonl: a reproducible batch of create requests with a
realistic mix of outcomes for `offsession run`. Usage: scripts/make_demo_batch.py [N]"""
import json
import random
import sys

N = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
rng = random.Random(20260101)

# (weight, payment method, extra fields)
MIX = [
    (62, "pm_card_visa", {}),
    (8, "pm_card_mastercard", {}),
    (3, "pm_card_amex", {}),
    (5, "pm_card_visa_chargeDeclinedInsufficientFunds_recoversAfter{n}", {}),
    (3, "pm_card_mastercard_chargeDeclinedInsufficientFunds_recoversAfter{n}", {}),
    (3, "pm_card_visa_chargeDeclined_recoversAfter{n}", {}),
    (2, "pm_card_chargeDeclinedProcessingError_recoversAfter1", {}),
    (3, "pm_card_visa_chargeDeclinedInsufficientFunds", {}),
    (2, "pm_card_chargeDeclinedExpiredCard", {}),
    (1, "pm_card_visa_chargeDeclinedLostCard", {}),
    (1, "pm_card_authenticationRequired", {}),
    (1, "pm_card_visa_chargeDeclinedInsufficientFunds_recoversAfter1", {"retry_details": {"retry_strategy": "none"}}),
    (1, "pm_card_visa_chargeDeclined_recoversAfter2", {"retry_details": {"retry_policy": "weekly"}}),
    (1, "pm_card_platform", {"customer": "cus_platform_1"}),
    (1, "pm_ach_checking", {"customer": "cus_ach_1", "retry_details": {"retry_strategy": "none"}}),
    (1, "pm_sepa_de", {"customer": "cus_sepa_1", "currency": "eur", "retry_details": {"retry_strategy": "none"}}),
    (1, "pm_card_connected", {"customer": "cus_connect_1", "on_behalf_of": "acct_connected_1",
                              "transfer_data": {"destination": "acct_connected_1"}}),
]
INVALID = [
    {"amount": {"value": 20, "currency": "usd"}},                       # osp_amount_too_small
    {"retry_details": {"retry_policy": "weekly", "retry_strategy": "none"}},  # mutually exclusive
    {"payment_method": "pm_card_never_set_up", "customer": "cus_lapsed_1"},  # not set up
    {"payment_method": "pm_card_other_customer"},                       # not attached
    {"amount": {"value": 2000, "currency": "usd", "cents": 1}},         # unknown field
    {"statement_descriptor": "THIS DESCRIPTOR IS FAR TOO LONG"},        # 22 characters
]
CURRENCIES = [(10, "usd"), (3, "eur"), (2, "gbp"), (1, "jpy")]
AMOUNTS = {"usd": (500, 25000), "eur": (500, 20000), "gbp": (300, 15000), "jpy": (500, 30000)}

def pick(items):
    total = sum(w for w, *_ in items)
    r = rng.uniform(0, total)
    for item in items:
        r -= item[0]
        if r <= 0:
            return item
    return items[-1]

lines = []
for i in range(N):
    currency = pick(CURRENCIES)[1]
    low, high = AMOUNTS[currency]
    body = {
        "amount": {"value": rng.randrange(low, high, 100 if currency != "jpy" else 10), "currency": currency},
        "cadence": "recurring" if rng.random() < 0.85 else "unscheduled",
        "customer": f"cus_{i:05d}",
        "payment_method": None,
        "metadata": {"invoice": f"in_{i:05d}"},
    }
    if rng.random() < 0.01:
        body.update(rng.choice(INVALID))
        if body["payment_method"] is None:
            body["payment_method"] = "pm_card_visa"
    else:
        _, pm, extra = pick(MIX)
        body["payment_method"] = pm.format(n=rng.choice([1, 1, 2, 3]))
        if body["payment_method"].startswith("pm_card_") and "customer" not in extra:
            # One card per customer: network caps count per card.
            body["payment_method"] += f"__{i:05d}"
        extra = dict(extra)
        if "currency" in extra:
            body["amount"]["currency"] = extra.pop("currency")
        body.update(extra)
    lines.append(json.dumps(body, separators=(",", ":")))

with open("config/demo-batch.jsonl", "w") as f:
    f.write("\n".join(lines) + "\n")
print(f"wrote {len(lines)} requests to config/demo-batch.jsonl")
