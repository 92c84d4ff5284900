"""Envelope round trips, strict validation naming the field, header helpers."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from shared.events import (
    Decision,
    Envelope,
    EnvelopeError,
    Header,
    ModelAnnouncement,
    decode,
    decode_envelope,
    derived_event_id,
    dlq_headers,
    encode,
    headers_dict,
)

GOOD = {
    "event_id": "e-1",
    "dataset": "transactions",
    "subject_id": "cust-1",
    "occurred_at": "2026-01-01T00:00:00+00:00",
    "source": "test",
    "payload": {"amount": 12.5, "hour": 3, "card_present": True, "note": None, "cat": "fuel"},
}


def test_round_trip_preserves_every_field() -> None:
    event = decode_envelope(orjson.dumps(GOOD))
    again = decode_envelope(encode(event))
    assert again == event
    assert again.payload["amount"] == 12.5
    assert again.occurred_at == datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("mutate", "field", "kind"),
    [
        (lambda d: d.pop("subject_id"), "subject_id", "missing_field"),
        (lambda d: d.update(occurred_at="yesterday"), "occurred_at", "invalid_field"),
        (lambda d: d.update(occurred_at="2026-01-01T00:00:00"), "occurred_at", "invalid_field"),
        (lambda d: d.update(payload={"x": [1, 2]}), "payload.x", "invalid_field"),
        (lambda d: d.update(event_id="has space"), "event_id", "invalid_field"),
        (lambda d: d.update(dataset="Bad Name"), "dataset", "invalid_field"),
        (lambda d: d.update(extra=1), "extra", "invalid_field"),
        (lambda d: d.update(schema_version=0), "schema_version", "invalid_field"),
    ],
)
def test_bad_input_names_the_field(mutate: object, field: str, kind: str) -> None:
    data = {**GOOD, "payload": dict(GOOD["payload"])}  # type: ignore[arg-type]
    mutate(data)  # type: ignore[operator]
    with pytest.raises(EnvelopeError) as info:
        decode_envelope(orjson.dumps(data))
    assert info.value.field == field
    assert info.value.kind == kind
    assert field in str(info.value)


@pytest.mark.parametrize(
    "raw", [b"{not json", b"[1,2]", b"", "\udcff".encode("utf-8", "surrogatepass")]
)
def test_garbage_is_bad_json(raw: bytes) -> None:
    with pytest.raises(EnvelopeError) as info:
        decode_envelope(raw)
    assert info.value.kind == "bad_json"


def test_oversize_event_is_rejected_before_parsing() -> None:
    with pytest.raises(EnvelopeError) as info:
        decode_envelope(b"{" + b" " * 2_000_000 + b"}")
    assert info.value.kind == "too_large"


def test_plain_kcat_json_gets_derived_id_and_time() -> None:
    plain = {"dataset": "transactions", "subject_id": "c", "payload": {"amount": 1}}
    when = datetime(2026, 5, 1, tzinfo=UTC)
    event_id = derived_event_id("lepton.events.raw", 2, 41)
    event = decode_envelope(orjson.dumps(plain), fallback_event_id=event_id, fallback_time=when)
    assert event.event_id == event_id == derived_event_id("lepton.events.raw", 2, 41)
    assert event.event_id != derived_event_id("lepton.events.raw", 2, 42)
    assert event.occurred_at == when
    assert event.source == "unknown"


def test_nan_payload_value_is_rejected() -> None:
    with pytest.raises(ValueError, match="NaN"):
        Envelope.model_validate({**GOOD, "payload": {"x": float("nan")}})


def test_other_wire_models_round_trip() -> None:
    decision = Decision(kind="subject_forgotten", actor="cli", subject_id="cust-1")
    assert decode(Decision, encode(decision)) == decision
    announcement = ModelAnnouncement(
        model="fraud", version=3, dataset="transactions", artifact_uri="file:///r/fraud/3",
        sha256="a" * 64, signature="sig", key_id="k1", metrics={"f1": 0.9},
    )
    assert decode(ModelAnnouncement, encode(announcement)) == announcement
    with pytest.raises(EnvelopeError) as info:
        decode(ModelAnnouncement, encode(announcement).replace(b'"a' * 1, b'"Z', 1))
    assert info.value.field


def test_dlq_headers_keep_originals_and_name_the_reason() -> None:
    original = [("traceparent", b"00-abc"), (Header.DLQ_REASON, b"stale")]
    headers = headers_dict(dlq_headers(
        original, reason="bad_json", detail="line 1", stage="ingest.validate",
        exception="EnvelopeError", topic="lepton.events.raw", partition=3, offset=17, attempt=2,
    ))
    assert headers["traceparent"] == b"00-abc"
    assert headers[Header.DLQ_REASON] == b"bad_json"
    assert headers[Header.DLQ_PARTITION] == b"3"
    assert headers[Header.DLQ_OFFSET] == b"17"
    assert headers[Header.DLQ_ATTEMPT] == b"2"
    assert headers[Header.DLQ_STAGE] == b"ingest.validate"
