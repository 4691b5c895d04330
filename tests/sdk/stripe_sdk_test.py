"""Stripe's official Python SDK (stripe 16.1.0a4) drives `offsession serve` unchanged:
the SDK is pointed at the server with `base_addresses`, nothing else. Run by
tests/stripe_sdk.rs with OFFSESSION_URL, OFFSESSION_KEY, WEBHOOK_PORT and
WEBHOOK_SECRET set; prints one line per check and exits non-zero on the first failure.
"""

import http.server
import json
import os
import queue
import threading
import time

import stripe

URL = os.environ["OFFSESSION_URL"]
KEY = os.environ["OFFSESSION_KEY"]
SECRET = os.environ["WEBHOOK_SECRET"]
PORT = int(os.environ["WEBHOOK_PORT"])

deliveries = queue.Queue()


class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        deliveries.put((body, self.headers.get("Stripe-Signature")))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


server = http.server.HTTPServer(("127.0.0.1", PORT), Hook)
threading.Thread(target=server.serve_forever, daemon=True).start()

PORT2 = int(os.environ["WEBHOOK_PORT2"])
destination_deliveries = queue.Queue()


class DestinationHook(Hook):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        destination_deliveries.put((body, self.headers.get("Stripe-Signature")))
        self.send_response(200)
        self.end_headers()


server2 = http.server.HTTPServer(("127.0.0.1", PORT2), DestinationHook)
threading.Thread(target=server2.serve_forever, daemon=True).start()

client = stripe.StripeClient(KEY, base_addresses={"api": URL}, max_network_retries=0)
payments = client.v2.payments.off_session_payments


def check(what, ok, detail=""):
    print(("ok   " if ok else "FAIL ") + what + (f": {detail}" if detail and not ok else ""), flush=True)
    if not ok:
        raise SystemExit(1)


def first_delivery(received, secret, wanted, seconds=20):
    """The first delivery from `received` that verifies with `secret` and that
    `wanted(notification)` accepts, as (notification, raw body, signature header), or
    Nones after `seconds`."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            raw, signature = received.get(timeout=1)
        except queue.Empty:
            continue
        notification = client.parse_event_notification(raw, signature, secret)
        if wanted(notification):
            return notification, raw, signature
    return None, None, None


def body(pm, **extra):
    params = {
        "amount": {"value": 2500, "currency": "usd"},
        "cadence": "recurring",
        "customer": "cus_sdk",
        "payment_method": pm,
    }
    params.update(extra)
    return params


def wait_for(pid, statuses, seconds=20):
    deadline = time.time() + seconds
    while time.time() < deadline:
        p = payments.retrieve(pid)
        if p.status in statuses:
            return p
        time.sleep(0.1)
    return payments.retrieve(pid)


# create and retrieve; the worker attempts it on the real clock
created = payments.create(body("pm_card_visa__sdk1"))
check("create answers a pending payment", created.object == "v2.payments.off_session_payment" and created.status == "pending", created)
got = payments.retrieve(created.id)
check("retrieve", got.id == created.id)
done = wait_for(created.id, {"succeeded"})
check("the worker charges it", done.status == "succeeded", done.status)

# idempotency: the same key returns the original; another body with it is refused
again = payments.create(body("pm_card_visa__sdk2"), {"idempotency_key": "sdk-key-1"})
repeat = payments.create(body("pm_card_visa__sdk2"), {"idempotency_key": "sdk-key-1"})
check("a repeated idempotency key returns the original", again.id == repeat.id)
try:
    payments.create(body("pm_card_visa__sdk3"), {"idempotency_key": "sdk-key-1"})
    check("the same key with another body is refused", False)
except stripe.IdempotencyError as e:
    check("the same key with another body is an IdempotencyError", e.http_status == 400)

# list, newest first, paged through next_page_url
for i in range(3):
    payments.create(body(f"pm_card_visa__page{i}"))
first = payments.list({"limit": 2})
check("list pages hold `limit` items", len(first.data) == 2 and first.next_page_url is not None, first.next_page_url)
ids = [p.id for p in first.auto_paging_iter()]
check("paging visits every payment once, newest first", len(ids) == len(set(ids)) == 5 and ids == sorted(ids, reverse=True), ids)

# cancel, pause, resume a payment waiting for its retry
declined = payments.create(body("pm_card_visa_chargeDeclined_recoversAfter2__sdk4"))
waiting = wait_for(declined.id, {"pending_retry"})
check("a declined payment waits for its retry", waiting.status == "pending_retry", waiting.status)
paused = payments.pause(declined.id)
check("pause", paused.status == "paused", paused.status)
resumed = payments.resume(declined.id)
check("resume", resumed.status == "pending_retry", resumed.status)
canceled = payments.cancel(declined.id)
check("cancel", canceled.status == "canceled", canceled.status)
try:
    payments.cancel(declined.id, options={"idempotency_key": "sdk-cancel-2"})
    check("cancelling a canceled payment is refused", False)
except stripe.InvalidRequestError as e:
    check("cancelling a canceled payment is an InvalidRequestError", e.http_status == 400, e)

# capture (no SDK method yet: a raw v2 request)
manual = payments.create(body("pm_card_visa__sdk5", capture={"capture_method": "manual"}))
held = wait_for(manual.id, {"requires_capture"})
check("a manual-capture payment waits for capture", held.status == "requires_capture", held.status)
response = client.raw_request("post", f"/v2/payments/off_session_payments/{manual.id}/capture", amount_to_capture=2000)
captured = client.deserialize(response, api_mode="V2")
check("capture", captured.status == "succeeded", captured)

# test clocks (v1, form-encoded)
clocks = client.v1.test_helpers.test_clocks
clock = clocks.create({"frozen_time": 1767225600, "name": "sdk"})
check("test clock create", clock.object == "test_helpers.test_clock" and clock.frozen_time == 1767225600, clock)
on_clock = payments.create(body("pm_card_visa_chargeDeclined_recoversAfter2__sdk6", test_clock=clock.id))
advanced = clocks.advance(clock.id, {"frozen_time": 1767225600 + 3600})
check("advance answers", advanced.frozen_time == 1767225600 + 3600, advanced)
deadline = time.time() + 20
while clocks.retrieve(clock.id).status != "ready" and time.time() < deadline:
    time.sleep(0.05)
check("the clock is ready again", clocks.retrieve(clock.id).status == "ready")
after = payments.retrieve(on_clock.id)
check("advancing ran the attempt due on the clock", after.status == "pending_retry", after.status)

# errors of each class
try:
    payments.create(body("pm_card_visa__sdk7", amount={"value": 2500, "currency": "xyz"}))
    check("a bad currency is refused", False)
except stripe.InvalidRequestError as e:
    check("a bad currency is an InvalidRequestError with a code", e.http_status == 400 and e.code, e)
try:
    payments.retrieve("osp_test_nope")
    check("an unknown id is refused", False)
except stripe.InvalidRequestError as e:
    check("an unknown id is a 404", e.http_status == 404, e)
try:
    stripe.StripeClient("sk_test_wrong_key_123", base_addresses={"api": URL}).v2.payments.off_session_payments.list()
    check("a wrong key is refused", False)
except stripe.AuthenticationError as e:
    check("a wrong key is an AuthenticationError", e.http_status == 401, e)

# a webhook, verified as Stripe's are, then the event and the payment fetched back
verified, raw, signature = first_delivery(deliveries, SECRET, lambda n: n.type == "v2.payments.off_session_payment.succeeded")
check("a signed webhook verifies with parse_event_notification", verified is not None)
event = verified.fetch_event()
check("fetch_event", event.id == verified.id and event.type == verified.type, event)
related = verified.fetch_related_object()
check("fetch_related_object", related.status == "succeeded", related)
try:
    client.parse_event_notification(raw, signature, "whsec_not_the_secret")
    check("a wrong secret fails verification", False)
except stripe.SignatureVerificationError:
    check("a wrong secret fails verification", True)
# an event destination created through the API, its secret returned once
destinations = client.v2.core.event_destinations
destination = destinations.create({
    "name": "sdk destination",
    "type": "webhook_endpoint",
    "event_payload": "thin",
    "enabled_events": ["v2.payments.off_session_payment.succeeded"],
    "webhook_endpoint": {"url": f"http://127.0.0.1:{PORT2}/dest"},
    "include": ["webhook_endpoint.signing_secret"],
})
dest_secret = destination.webhook_endpoint.signing_secret
check("event destination create returns its secret once", dest_secret.startswith("whsec_") and destination.status == "enabled", destination)
again = destinations.retrieve(destination.id)
check("a retrieved destination carries no secret", getattr(again.webhook_endpoint, "signing_secret", None) is None, again)
time.sleep(1.5)  # the server starts delivering to new destinations within a second
paid = payments.create(body("pm_card_visa__sdk8"))
seen, _, _ = first_delivery(destination_deliveries, dest_secret, lambda n: n.related_object.id == paid.id)
check("the destination receives its events, signed with its secret", seen is not None and seen.type == "v2.payments.off_session_payment.succeeded")
disabled = destinations.disable(destination.id)
check("disable", disabled.status == "disabled", disabled)
listed = destinations.list()
check("list shows it", any(d.id == destination.id and d.status == "disabled" for d in listed.data))
updated = destinations.update(destination.id, {
    "name": "sdk destination renamed",
    "enabled_events": ["v2.payments.off_session_payment.failed"],
    "metadata": {"team": "billing"},
})
check("update", updated.name == "sdk destination renamed"
      and updated.enabled_events == ["v2.payments.off_session_payment.failed"]
      and updated.metadata["team"] == "billing", updated)
check("an updated destination keeps its secret to itself",
      getattr(updated.webhook_endpoint, "signing_secret", None) is None, updated)
try:
    destinations.ping(destination.id)
    check("a disabled destination is not pinged", False)
except stripe.InvalidRequestError:
    check("a disabled destination is not pinged", True)
enabled = destinations.enable(destination.id)
check("enable", enabled.status == "enabled", enabled)
pinged = destinations.ping(destination.id)
check("ping answers the ping event", pinged.type == "v2.core.event_destination.ping"
      and pinged.related_object.id == destination.id, pinged)
ping_seen, _, _ = first_delivery(destination_deliveries, dest_secret, lambda n: n.id == pinged.id, seconds=10)
check("the ping reaches the destination, signed with its secret",
      ping_seen is not None and ping_seen.type == "v2.core.event_destination.ping", ping_seen)
fetched_ping = ping_seen.fetch_event() if ping_seen is not None else None
check("the received ping is fetched like any event (fetch_event)",
      fetched_ping is not None and fetched_ping.id == pinged.id
      and fetched_ping.type == "v2.core.event_destination.ping", fetched_ping)
print("all SDK checks passed")
