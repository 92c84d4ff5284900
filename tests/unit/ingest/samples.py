"""Sample events for ingest tests: valid transactions and one poison record of every kind."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import orjson

from lepton.generators import transactions
from shared.events import encode

BROKEN_DATASET = "broken_spec"
BROKEN_SPEC_YAML = "name: broken_spec\nfields: [this is not: a valid spec\n"


def valid_docs(count: int, seed: int = 11) -> list[dict[str, Any]]:
    """`count` valid transaction envelopes as JSON-ready dicts."""
    return [orjson.loads(encode(e)) for e in transactions(count, seed=seed)]


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def apply(doc: dict[str, Any]) -> dict[str, Any]:
        target = doc
        *parents, last = path.split(".")
        for part in parents:
            target = target[part]
        target[last] = value
        return doc
    return apply


def _drop(path: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def apply(doc: dict[str, Any]) -> dict[str, Any]:
        target = doc
        *parents, last = path.split(".")
        for part in parents:
            target = target[part]
        del target[last]
        return doc
    return apply


# kind → (expected DLQ reason, how to spoil a valid envelope dict; None = replace the bytes)
POISON: dict[str, tuple[str, Callable[[dict[str, Any]], dict[str, Any]] | bytes]] = {
    "bad_json": ("bad_json", b'{"event_id": "x", "dataset": '),
    "not_object": ("bad_json", b"[1, 2, 3]"),
    "too_large": ("too_large", b'{"pad": "' + b"x" * 1_000_100 + b'"}'),
    "bad_subject_id": ("invalid_envelope", _set("subject_id", "has spaces!")),
    "no_dataset": ("missing_field", _drop("dataset")),
    "missing_field": ("missing_field", _drop("payload.hour")),
    "wrong_type_text": ("wrong_type", _set("payload.amount", "twelve")),
    "wrong_type_object": ("wrong_type", _set("payload.hour", {"h": 1})),
    "wrong_type_bool": ("wrong_type", _set("payload.card_present", "maybe")),
    "unknown_dataset": ("unknown_dataset", _set("dataset", "no_such_dataset")),
    "unsupported_schema": ("unsupported_schema", _set("schema_version", 99)),
    "unknown_unit": ("unknown_unit", _set("payload.amount", "12 doubloons")),
    "out_of_range": ("out_of_range", _set("payload.hour", 24)),
    "negative_amount": ("out_of_range", _set("payload.amount", -5)),
    "not_allowed": ("not_allowed", _set("payload.region", "atlantis")),
    "too_long": ("too_long", _set("payload.email", "a" * 300 + "@example.com")),
    "subject_mismatch": ("subject_mismatch", _set("payload.customer_id", "cust-other")),
    "internal_error": ("internal_error", _set("dataset", BROKEN_DATASET)),
}


def poison(kind: str, doc: dict[str, Any]) -> bytes:
    """The poison record of `kind`, made from (a copy of) a valid envelope dict."""
    spoil = POISON[kind][1]
    if isinstance(spoil, bytes):
        return spoil
    return orjson.dumps(spoil(copy.deepcopy(doc)))
