#!/usr/bin/env python3
"""Writes crates/server/openapi.json: the OpenAPI 3.0 document of `offsession serve`
(served at /openapi.json and checked against the server by schemathesis in
tests/openapi.rs). Edit here, run `python3 scripts/make_openapi.py`, commit both."""

import json
import pathlib

ERR = {"$ref": "#/components/responses/Error"}
ERRORS = {code: ERR for code in ["400", "401", "404", "405", "409", "413", "415", "429"]}


def ok(schema):
    return {"description": "OK", "content": {"application/json": {"schema": schema}}}


def ref(name):
    return {"$ref": f"#/components/schemas/{name}"}


id_param = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
idem = {"name": "Idempotency-Key", "in": "header", "required": False,
        "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x21-\\x7e]+$"}}
limit = {"name": "limit", "in": "query", "required": False,
         "schema": {"type": "integer", "minimum": 1, "maximum": 100}}

money = {"type": "object", "additionalProperties": False, "required": ["value", "currency"],
         "properties": {"value": {"type": "integer"}, "currency": {"type": "string"}}}

create_body = {
    "type": "object",
    "additionalProperties": False,
    "required": ["amount", "cadence", "customer", "payment_method"],
    "properties": {
        "amount": money,
        "cadence": {"type": "string", "enum": ["recurring", "unscheduled"]},
        "customer": {"type": "string"},
        "payment_method": {"type": "string"},
        "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
        "description": {"type": "string"},
        "statement_descriptor": {"type": "string"},
        "statement_descriptor_suffix": {"type": "string"},
        "test_clock": {"type": "string"},
        "capture": {"type": "object", "properties": {"capture_method": {"type": "string", "enum": ["automatic", "manual"]}}},
        "retry_details": {"type": "object", "properties": {
            "retry_policy": {"type": "string"},
            "retry_strategy": {"type": "string", "enum": ["none", "scheduled", "heuristic", "smart", "best_available"]}}},
    },
}

payment = {
    "type": "object",
    "required": ["id", "object", "status", "amount_requested", "customer", "payment_method", "created", "livemode"],
    "properties": {
        "id": {"type": "string"},
        "object": {"type": "string", "enum": ["v2.payments.off_session_payment"]},
        "status": {"type": "string", "enum": ["pending", "processing", "pending_retry", "paused", "requires_capture",
                                              "succeeded", "failed", "canceled"]},
        "amount_requested": money,
        "customer": {"type": "string"},
        "payment_method": {"type": "string"},
        "created": {"type": "string"},
        "livemode": {"type": "boolean"},
        "failure_reason": {"type": "string", "nullable": True},
    },
}

event = {
    "type": "object",
    "required": ["id", "object", "type", "created", "livemode", "related_object"],
    "properties": {
        "id": {"type": "string"}, "object": {"type": "string", "enum": ["v2.core.event"]},
        "type": {"type": "string"}, "created": {"type": "string"}, "livemode": {"type": "boolean"},
        "related_object": {"type": "object", "required": ["id", "type", "url"],
                           "properties": {"id": {"type": "string"}, "type": {"type": "string"}, "url": {"type": "string"}}},
    },
}

clock = {
    "type": "object",
    "required": ["id", "object", "frozen_time", "status", "livemode"],
    "properties": {
        "id": {"type": "string"}, "object": {"type": "string", "enum": ["test_helpers.test_clock"]},
        "frozen_time": {"type": "integer"}, "created": {"type": "integer"},
        "status": {"type": "string", "enum": ["ready", "advancing", "internal_failure"]},
        "livemode": {"type": "boolean"}, "name": {"type": "string", "nullable": True},
    },
}


def page_of(item):
    return {"type": "object", "required": ["data", "next_page_url", "previous_page_url"], "properties": {
        "data": {"type": "array", "items": item},
        "next_page_url": {"type": "string", "nullable": True},
        "previous_page_url": {"type": "string", "nullable": True}}}


def action(name, body):
    return {"post": {
        "operationId": f"{name}OffSessionPayment", "parameters": [id_param, idem],
        "requestBody": {"required": False, "content": {"application/json": {"schema": body}}},
        "responses": {"200": ok(ref("OffSessionPayment")), **ERRORS}}}


empty = {"type": "object", "additionalProperties": False, "properties": {}}
form = lambda schema: {"required": True, "content": {"application/x-www-form-urlencoded": {"schema": schema}}}
frozen = {"type": "integer", "minimum": 1, "maximum": 253402300799}

destination_body = {
    "type": "object", "additionalProperties": False,
    "required": ["name", "type", "event_payload", "enabled_events", "webhook_endpoint"],
    "properties": {
        "name": {"type": "string"}, "type": {"type": "string", "enum": ["webhook_endpoint"]},
        "event_payload": {"type": "string", "enum": ["thin"]},
        "enabled_events": {"type": "array", "items": {"type": "string"}},
        "webhook_endpoint": {"type": "object", "required": ["url"], "properties": {"url": {"type": "string"}}},
        "description": {"type": "string"},
        "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
        "include": {"type": "array", "items": {"type": "string", "enum": ["webhook_endpoint.signing_secret"]}}}}

destination = {
    "type": "object", "required": ["id", "object", "status", "type", "enabled_events", "webhook_endpoint"],
    "properties": {
        "id": {"type": "string"}, "object": {"type": "string", "enum": ["v2.core.event_destination"]},
        "status": {"type": "string", "enum": ["enabled", "disabled"]},
        "type": {"type": "string"}, "enabled_events": {"type": "array", "items": {"type": "string"}},
        "webhook_endpoint": {"type": "object", "properties": {"url": {"type": "string"}}}}}

update_body = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "minLength": 1}, "description": {"type": "string"},
        "metadata": {"type": "object", "additionalProperties": {"type": "string", "nullable": True}},
        "enabled_events": {"type": "array", "items": {"type": "string"}},
        "webhook_endpoint": {"type": "object", "required": ["url"], "properties": {"url": {"type": "string"}}},
        "include": {"type": "array", "items": {"type": "string", "enum": ["webhook_endpoint.url"]}}}}

deliveries = {
    "type": "object", "required": ["data"],
    "properties": {
        "data": {"type": "array", "items": {
            "type": "object",
            "required": ["object", "destination", "url", "status", "attempts", "last_status", "last_attempt_at"],
            "properties": {
                "object": {"type": "string", "enum": ["event_delivery"]},
                "destination": {"type": "string"}, "url": {"type": "string"},
                "status": {"type": "string", "enum": ["delivered", "retrying", "pending", "failed", "not_sent"]},
                "attempts": {"type": "integer", "minimum": 0},
                "last_status": {"type": "integer", "nullable": True},
                "last_attempt_at": {"type": "string", "nullable": True}}}},
        "next_page_url": {"type": "string", "nullable": True},
        "previous_page_url": {"type": "string", "nullable": True}}}

links = {name: {"operationId": f"{name}OffSessionPayment", "parameters": {"id": "$response.body#/id"}}
         for name in ["retrieve", "cancel", "pause", "resume", "capture"]}

doc = {
    "openapi": "3.0.3",
    "info": {"title": "offsession: the Off-Session Payments API", "version": "0.1.0",
             "description": "Stripe's v2 Off-Session Payments API as offsession serves it."},
    "security": [{"bearer": []}],
    "paths": {
        "/v2/payments/off_session_payments": {
            "post": {"operationId": "createOffSessionPayment", "parameters": [idem],
                     # A create the mock accepts (Stripe's test card, any customer), so the
                     # examples phase reaches the success path and its links.
                     "requestBody": {"required": True, "content": {"application/json": {
                         "schema": create_body,
                         "example": {"amount": {"value": 2000, "currency": "usd"}, "cadence": "recurring",
                                     "customer": "cus_openapi", "payment_method": "pm_card_visa"}}}},
                     "responses": {"200": {**ok(ref("OffSessionPayment")), "links": links}, **ERRORS}},
            "get": {"operationId": "listOffSessionPayments",
                    "parameters": [limit, {"name": "page", "in": "query", "required": False, "schema": {"type": "string"}}],
                    "responses": {"200": ok(page_of(ref("OffSessionPayment"))), **ERRORS}},
        },
        "/v2/payments/off_session_payments/{id}": {
            "get": {"operationId": "retrieveOffSessionPayment", "parameters": [id_param],
                    "responses": {"200": ok(ref("OffSessionPayment")), **ERRORS}}},
        "/v2/payments/off_session_payments/{id}/cancel": action("cancel", empty),
        "/v2/payments/off_session_payments/{id}/pause": action("pause", empty),
        "/v2/payments/off_session_payments/{id}/resume": action("resume", empty),
        "/v2/payments/off_session_payments/{id}/capture": action("capture", {
            "type": "object", "additionalProperties": False,
            "properties": {"amount_to_capture": {"type": "integer"}}}),
        "/v2/core/events": {"get": {"operationId": "listEvents", "parameters": [
            {"name": "object_id", "in": "query", "required": True, "schema": {"type": "string"}}, limit,
            {"name": "page", "in": "query", "required": False, "schema": {"type": "string"}}],
            "responses": {"200": {**ok(page_of(ref("Event"))), "links": {"event": {
                "operationId": "retrieveEvent", "parameters": {"id": "$response.body#/data/0/id"}}}}, **ERRORS}}},
        "/v2/core/events/{id}": {"get": {"operationId": "retrieveEvent", "parameters": [id_param],
                                         "responses": {"200": ok(ref("Event")), **ERRORS}}},
        "/v2/core/events/{id}/deliveries": {"get": {
            "operationId": "listEventDeliveries", "parameters": [id_param],
            "responses": {"200": ok(ref("EventDeliveries")), **ERRORS}}},
        "/v2/core/events/{id}/resend": {"post": {
            "operationId": "resendEvent", "parameters": [id_param, idem],
            "requestBody": {"required": False, "content": {"application/json": {"schema": {
                "type": "object", "additionalProperties": False,
                "properties": {"destination": {"type": "string"}}}}}},
            "responses": {"200": ok(ref("EventDeliveries")), **ERRORS}}},
        "/v1/test_helpers/test_clocks": {"post": {
            "operationId": "createTestClock", "parameters": [idem],
            "requestBody": form({"type": "object", "required": ["frozen_time"], "additionalProperties": False,
                                 "properties": {"frozen_time": frozen, "name": {"type": "string"}}}),
            "responses": {"200": ok(ref("TestClock")), **ERRORS}}},
        "/v1/test_helpers/test_clocks/{id}": {"get": {
            "operationId": "retrieveTestClock", "parameters": [id_param],
            "responses": {"200": ok(ref("TestClock")), **ERRORS}}},
        "/v1/test_helpers/test_clocks/{id}/advance": {"post": {
            "operationId": "advanceTestClock", "parameters": [id_param, idem],
            "requestBody": form({"type": "object", "required": ["frozen_time"], "additionalProperties": False,
                                 "properties": {"frozen_time": frozen}}),
            "responses": {"200": ok(ref("TestClock")), **ERRORS}}},
        "/v2/core/event_destinations": {
            "post": {"operationId": "createEventDestination", "parameters": [idem],
                     "requestBody": {"required": True, "content": {"application/json": {"schema": destination_body}}},
                     "responses": {"200": ok(ref("EventDestination")), **ERRORS}},
            "get": {"operationId": "listEventDestinations", "parameters": [limit],
                    "responses": {"200": ok(page_of(ref("EventDestination"))), **ERRORS}}},
        "/v2/core/event_destinations/{id}": {
            "get": {"operationId": "retrieveEventDestination", "parameters": [id_param],
                    "responses": {"200": ok(ref("EventDestination")), **ERRORS}},
            "post": {"operationId": "updateEventDestination", "parameters": [id_param, idem],
                     "requestBody": {"required": False, "content": {"application/json": {"schema": update_body}}},
                     "responses": {"200": ok(ref("EventDestination")), **ERRORS}},
            "delete": {"operationId": "deleteEventDestination", "parameters": [id_param, idem],
                       "responses": {"200": ok({"type": "object"}), **ERRORS}}},
        "/v2/core/event_destinations/{id}/ping": {"post": {
            "operationId": "pingEventDestination", "parameters": [id_param, idem],
            "responses": {"200": ok(ref("Event")), **ERRORS}}},
        "/v2/core/event_destinations/{id}/enable": {"post": {
            "operationId": "enableEventDestination", "parameters": [id_param, idem],
            "responses": {"200": ok(ref("EventDestination")), **ERRORS}}},
        "/v2/core/event_destinations/{id}/disable": {"post": {
            "operationId": "disableEventDestination", "parameters": [id_param, idem],
            "responses": {"200": ok(ref("EventDestination")), **ERRORS}}},
        "/healthz": {"get": {"operationId": "health", "security": [],
                             "responses": {"200": ok({"type": "object"})}}},
        "/readyz": {"get": {"operationId": "ready", "security": [],
                            "responses": {"200": ok({"type": "object"}), "503": ERR}}},
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {"EventDestination": destination, "EventDeliveries": deliveries, "OffSessionPayment": payment, "Event": event, "TestClock": clock, "Error": {
            "type": "object", "required": ["error"], "properties": {"error": {
                "type": "object", "required": ["type", "message"],
                "properties": {"type": {"type": "string"}, "code": {"type": "string"},
                               "message": {"type": "string"}, "param": {"type": "string"}}}}}},
        "responses": {"Error": {"description": "An error in the v2 shape",
                                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}},
    },
}

path = pathlib.Path(__file__).resolve().parent.parent / "crates" / "server" / "openapi.json"
path.write_text(json.dumps(doc, indent=2) + "\n")
print(f"wrote {path}")
