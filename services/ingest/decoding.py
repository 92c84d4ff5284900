"""Decode a raw Kafka record into a LeanEnvelope and find its dataset's compiled spec.

Plain JSON from kcat is accepted: a missing `event_id` is derived from topic/partition/offset,
a missing `occurred_at` is the Kafka timestamp, and a missing `subject_id` is taken from the
payload's subject field. The JSON is parsed once (orjson) and checked by
`shared.fast_envelope`; only what that cannot decide goes through pydantic's Envelope, which
names every error. Failures raise Rejection with a Reason code (stage `decode`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import orjson

from services.ingest.cleaning import Cleaner
from services.ingest.rejection import Reason, Rejection, Stage
from shared.datasets import UnknownDataset, load_spec
from shared.events import (
    Envelope,
    EnvelopeError,
    decode_envelope,
    derived_event_id,
    loads_json,
)
from shared.fast_envelope import LeanEnvelope, from_envelope, lean_envelope

MAX_CACHED_UNKNOWN = 1000
_FALLBACKS = ("event_id", "occurred_at", "subject_id")
_KINDS = {
    "bad_json": Reason.BAD_JSON,
    "too_large": Reason.TOO_LARGE,
    "missing_field": Reason.MISSING_FIELD,
}


class Datasets:
    """Dataset specs compiled into Cleaners, cached by name (unknown names too, bounded)."""

    def __init__(self, specs_dir: Path | None, unknown_fields: Literal["drop", "reject"]) -> None:
        self._specs_dir = specs_dir
        self._unknown_fields = unknown_fields
        self._cleaners: dict[str, Cleaner | None] = {}

    def cleaner(self, name: str) -> Cleaner | None:
        """The Cleaner of dataset `name`, or None when no such spec exists."""
        if name in self._cleaners:
            return self._cleaners[name]
        try:
            cleaner: Cleaner | None = Cleaner(load_spec(name, self._specs_dir),
                                              self._unknown_fields)
        except Rejection as error:  # the spec's own impute value does not fit its field
            raise ValueError(f"dataset spec {name}: {error}") from None
        except UnknownDataset:
            cleaner = None
            if sum(c is None for c in self._cleaners.values()) >= MAX_CACHED_UNKNOWN:
                return None
        self._cleaners[name] = cleaner
        return cleaner

    def require(self, envelope: LeanEnvelope) -> Cleaner:
        """The Cleaner for an envelope's dataset, or Rejection (unknown dataset/schema)."""
        cleaner = self.cleaner(envelope.dataset)
        if cleaner is None:
            raise Rejection(Reason.UNKNOWN_DATASET, f"dataset {envelope.dataset!r} has no spec",
                            stage=Stage.DECODE, field="dataset")
        if envelope.schema_version > cleaner.spec.version:
            raise Rejection(
                Reason.UNSUPPORTED_SCHEMA,
                f"schema_version {envelope.schema_version} is newer than spec version "
                f"{cleaner.spec.version}", stage=Stage.DECODE, field="schema_version",
            )
        return cleaner


def kafka_time(timestamp: tuple[int, int] | None) -> datetime:
    """A Kafka message timestamp as an aware datetime (now when the record has none)."""
    if timestamp is None or timestamp[0] == 0 or timestamp[1] < 0:
        return datetime.now(UTC)
    return datetime.fromtimestamp(timestamp[1] / 1000, UTC)


def decode_record(value: bytes | None, topic: str, partition: int, offset: int,
                  timestamp: tuple[int, int] | None, datasets: Datasets) -> LeanEnvelope:
    """The envelope in a raw record's value, or Rejection."""
    if value is None:
        raise Rejection(Reason.BAD_JSON, "record has no value", stage=Stage.DECODE)
    try:
        obj = loads_json(value)
    except EnvelopeError as error:
        raise _rejection(error) from None
    if type(obj) is dict and "subject_id" in obj:
        if "event_id" not in obj:
            obj["event_id"] = derived_event_id(topic, partition, offset)
        if "occurred_at" not in obj:
            obj["occurred_at"] = kafka_time(timestamp)
        lean = lean_envelope(obj)
        if lean is not None:
            return lean
    return from_envelope(_decode_slowly(value, topic, partition, offset, timestamp, datasets))


def _decode_slowly(value: bytes, topic: str, partition: int, offset: int,
                   timestamp: tuple[int, int] | None, datasets: Datasets) -> Envelope:
    """Pydantic's Envelope, with the fallbacks; Rejection naming the first error."""
    try:
        # Most events carry both; deriving the fallbacks costs more than this substring test.
        if b'"event_id"' in value and b'"occurred_at"' in value:
            return decode_envelope(value)
    except EnvelopeError as error:
        if error.kind != "missing_field" or error.field not in _FALLBACKS:
            raise _rejection(error) from None
    event_id = derived_event_id(topic, partition, offset)
    when = kafka_time(timestamp)
    try:
        return decode_envelope(value, fallback_event_id=event_id, fallback_time=when)
    except EnvelopeError as error:
        if error.kind == "missing_field" and error.field == "subject_id":
            return _with_subject_from_payload(value, event_id, when, datasets, error)
        raise _rejection(error) from None


def _with_subject_from_payload(value: bytes, event_id: str, when: datetime, datasets: Datasets,
                               error: EnvelopeError) -> Envelope:
    obj = orjson.loads(value)
    cleaner = datasets.cleaner(str(obj.get("dataset", "")))
    payload = obj.get("payload")
    field = cleaner.subject_field if cleaner is not None else None
    if field is None or not isinstance(payload, dict) or payload.get(field) is None:
        raise _rejection(error)
    obj["subject_id"] = str(payload[field])
    try:
        return decode_envelope(orjson.dumps(obj), fallback_event_id=event_id, fallback_time=when)
    except EnvelopeError as second:
        raise _rejection(second) from None


def _rejection(error: EnvelopeError) -> Rejection:
    reason = _KINDS.get(error.kind)
    if reason is None:
        reason = Reason.WRONG_TYPE if error.field.startswith("payload") \
            else Reason.INVALID_ENVELOPE
    return Rejection(reason, str(error), stage=Stage.DECODE, field=error.field,
                     exception=type(error).__name__)
