#!/usr/bin/env python3
"""Extract the parts of Stripe's fixtures and OpenAPI spec that the Stripe adapter's
tests read, into crates/stripe/tests/data/, so that the tests need nothing outside the
repository.

Usage:
    scripts/extract_stripe_data.py FIXTURES3_JSON SPEC3_JSON [--out DIR]

FIXTURES3_JSON and SPEC3_JSON are Stripe's `fixtures3.json` and `spec3.json` (from
Stripe's openapi repository). Output: crates/stripe/tests/data/. Standard library only.

What is kept:
  fixtures.json  {"resources": {...}} with only the resources the fake Stripe builds its
                 answers from (FIXTURE_RESOURCES).
  spec.json      {"openapi", "info", "paths", "components": {"schemas"}} with only the
                 operations the adapter calls (OPERATIONS), their `parameters` and
                 `requestBody`, the 200 response with the object schemas it names
                 trimmed to the fields the tests read, and every components/schemas
                 entry reachable from the kept requests by `$ref`, transitively. Descriptions and other prose are dropped; the keys the
                 contract test reads (type, enum, maxLength, anyOf, properties,
                 additionalProperties, $ref, items, name, in, ...) are kept.
"""

import argparse
import json
import os
import sys

# Resources the fake Stripe (crates/stripe/tests/common/mod.rs) calls `fixture(...)` with.
FIXTURE_RESOURCES = ["payment_intent", "payment_method", "setup_intent"]

# (path, method) of every request the adapter (crates/stripe/src/lib.rs) sends.
OPERATIONS = [
    ("/v1/payment_intents", "post"),
    ("/v1/payment_intents/{intent}", "get"),
    ("/v1/payment_intents/{intent}/capture", "post"),
    ("/v1/payment_intents/{intent}/cancel", "post"),
    ("/v1/payment_methods/{payment_method}", "get"),
    ("/v1/setup_intents", "get"),
]

# Keys of an operation that are kept. Of `responses`, only the success answer's schema.
OPERATION_KEYS = ["operationId", "parameters", "requestBody"]

# Response objects the adapter reads, trimmed to the scalar properties its tests check
# (the full schemas pull in ~400 others by $ref, half a megabyte). A trimmed schema is
# marked `"x-extract-trimmed": true`.
RESPONSE_PROPERTIES = {
    "payment_intent": ["id", "object", "status"],
    "payment_method": ["id", "object", "type"],
    "setup_intent": ["id", "object", "status", "usage"],
}

# Prose and presentation keys dropped everywhere in the spec extract.
DROPPED_KEYS = {
    "description",
    "x-stripeBypassValidation",
    "x-stripeMostCommon",
    "x-stripeOperations",
    "x-stripeResource",
    "x-expandableFields",
    "x-resourceId",
    "x-stripeParam",
    "x-stripeEvent",
}

REF_PREFIX = "#/components/schemas/"


# Keys whose value maps names (of properties, parameters) to schemas: those names are
# data, never prose, and are all kept (a parameter may be called `description`).
NAME_MAPS = {"properties", "encoding", "patternProperties"}


def strip(value, names=False):
    """A copy of `value` without prose keys (keys of name maps are kept)."""
    if isinstance(value, dict):
        return {
            k: strip(v, names=(not names and k in NAME_MAPS))
            for k, v in value.items()
            if names or k not in DROPPED_KEYS
        }
    if isinstance(value, list):
        return [strip(v) for v in value]
    return value


def refs(value, found):
    """Adds every `$ref` schema name under `value` to `found`."""
    if isinstance(value, dict):
        ref = value.get("$ref")
        if isinstance(ref, str):
            if not ref.startswith(REF_PREFIX):
                raise SystemExit(f"unsupported $ref {ref!r}")
            found.add(ref[len(REF_PREFIX):])
        for v in value.values():
            refs(v, found)
    elif isinstance(value, list):
        for v in value:
            refs(v, found)


def extract_spec(spec):
    paths = {}
    for path, method in OPERATIONS:
        operation = spec.get("paths", {}).get(path, {}).get(method)
        if not isinstance(operation, dict):
            raise SystemExit(f"{method.upper()} {path} is not in the spec")
        kept = {k: strip(operation[k]) for k in OPERATION_KEYS if k in operation}
        success = operation.get("responses", {}).get("200")
        if success is not None:
            kept["responses"] = {"200": strip(success)}
        paths.setdefault(path, {})[method] = kept

    all_schemas = spec.get("components", {}).get("schemas", {})
    schemas = {}
    for name, wanted in RESPONSE_PROPERTIES.items():
        if name not in all_schemas:
            raise SystemExit(f"the spec has no schema {name!r}")
        full = all_schemas[name]
        properties = {}
        for prop in wanted:
            if prop not in full.get("properties", {}):
                raise SystemExit(f"schema {name!r} has no property {prop!r}")
            properties[prop] = strip(full["properties"][prop])
        trimmed = {k: strip(full[k]) for k in ("title", "type") if k in full}
        trimmed["properties"] = properties
        trimmed["required"] = [r for r in full.get("required", []) if r in properties]
        trimmed["x-extract-trimmed"] = True
        found = set()
        refs(trimmed, found)
        if found:
            raise SystemExit(f"trimmed schema {name!r} still references {sorted(found)}")
        schemas[name] = trimmed
    pending = set()
    refs(paths, pending)
    while pending:
        name = pending.pop()
        if name in schemas:
            continue
        if name not in all_schemas:
            raise SystemExit(f"$ref to a missing schema {name!r}")
        schemas[name] = strip(all_schemas[name])
        found = set()
        refs(schemas[name], found)
        pending |= found - set(schemas)

    return {
        "openapi": spec.get("openapi"),
        "info": {
            "title": spec.get("info", {}).get("title"),
            "version": spec.get("info", {}).get("version"),
            "x-extract": "offsession scripts/extract_stripe_data.py: only the "
            "operations the adapter calls and the schemas they reference",
        },
        "paths": dict(sorted(paths.items())),
        "components": {"schemas": dict(sorted(schemas.items()))},
    }


def extract_fixtures(fixtures):
    resources = fixtures.get("resources", {})
    missing = [name for name in FIXTURE_RESOURCES if name not in resources]
    if missing:
        raise SystemExit(f"fixtures lack {missing}")
    return {"resources": {name: resources[name] for name in FIXTURE_RESOURCES}}


def write(path, value):
    text = json.dumps(value, indent=1, sort_keys=False, ensure_ascii=False) + "\n"
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {path}: {len(text.encode('utf-8'))} bytes")


def main(argv):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "fixtures", help="Stripe's fixtures3.json"
    )
    parser.add_argument("spec", help="Stripe's spec3.json")
    parser.add_argument(
        "--out", default=os.path.join(root, "crates", "stripe", "tests", "data")
    )
    args = parser.parse_args(argv)

    with open(args.fixtures, encoding="utf-8") as f:
        fixtures = json.load(f)
    with open(args.spec, encoding="utf-8") as f:
        spec = json.load(f)

    os.makedirs(args.out, exist_ok=True)
    write(os.path.join(args.out, "fixtures.json"), extract_fixtures(fixtures))
    write(os.path.join(args.out, "spec.json"), extract_spec(spec))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
