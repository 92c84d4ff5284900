"""Decoding raw records into envelopes, kcat-style plain JSON included."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.ingest.decoding import Datasets, decode_record
from services.ingest.rejection import Reason, Rejection
from shared.events import derived_event_id
from tests.unit.ingest.samples import POISON, poison, valid_docs

DATASETS = Datasets(None, "drop")
TIMESTAMP = (1, 1_767_225_600_000)  # CreateTime 2026-01-01T00:00:00Z


def decode(value: bytes | None):  # type: ignore[no-untyped-def]
    return decode_record(value, "raw", 2, 41, TIMESTAMP, DATASETS)


def test_a_full_envelope_decodes() -> None:
    doc = valid_docs(1)[0]
    envelope = decode(orjson.dumps(doc))
    assert envelope.event_id == doc["event_id"]
    assert envelope.payload == doc["payload"]


def test_plain_kcat_json_gets_derived_id_broker_time_and_subject_from_payload() -> None:
    doc = valid_docs(1)[0]
    plain = {"dataset": doc["dataset"], "payload": doc["payload"]}
    envelope = decode(orjson.dumps(plain))
    assert envelope.event_id == derived_event_id("raw", 2, 41)
    assert envelope.occurred_at.isoformat() == "2026-01-01T00:00:00+00:00"
    assert envelope.subject_id == doc["payload"]["customer_id"]


def test_an_event_id_inside_the_payload_does_not_hide_a_missing_envelope_id() -> None:
    doc = valid_docs(1)[0]
    del doc["event_id"]
    doc["payload"]["note_event_id"] = "x"
    doc["source"] = '"event_id" "occurred_at"'
    assert decode(orjson.dumps(doc)).event_id == derived_event_id("raw", 2, 41)


@pytest.mark.parametrize("kind", [k for k in POISON if k not in {
    "unknown_dataset", "unsupported_schema", "internal_error", "unknown_unit", "out_of_range",
    "negative_amount", "not_allowed", "too_long", "subject_mismatch", "missing_field",
    "wrong_type_text", "wrong_type_bool"}])
def test_envelope_level_poison_is_rejected_at_decode(kind: str) -> None:
    with pytest.raises(Rejection) as caught:
        decode(poison(kind, valid_docs(1)[0]))
    assert caught.value.reason.value == POISON[kind][0]
    assert caught.value.stage.value == "decode"


def test_a_tombstone_is_rejected() -> None:
    with pytest.raises(Rejection) as caught:
        decode(None)
    assert caught.value.reason is Reason.BAD_JSON


def test_unknown_dataset_and_newer_schema_are_rejected_by_spec_lookup() -> None:
    for kind in ("unknown_dataset", "unsupported_schema"):
        envelope = decode(poison(kind, valid_docs(1)[0]))
        with pytest.raises(Rejection) as caught:
            DATASETS.require(envelope)
        assert caught.value.reason.value == POISON[kind][0]


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                 max_size=4),
    max_leaves=12,
)
ENVELOPE_LIKE = st.fixed_dictionaries(
    {}, optional={"event_id": JSON, "dataset": st.sampled_from(["transactions", "x"]) | JSON,
                  "subject_id": JSON, "occurred_at": JSON, "schema_version": JSON,
                  "payload": st.dictionaries(st.sampled_from(["amount", "customer_id", "hour"]),
                                             JSON, max_size=3) | JSON})


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | ENVELOPE_LIKE.map(orjson.dumps)
       | st.just(b'{"dataset": "transactions", "payload": {"amount": 1' + b"0" * 40 + b"}}"))
def test_property_any_bytes_decode_or_are_rejected_with_a_known_reason(data: bytes) -> None:
    try:
        envelope = decode(data)
    except Rejection as rejection:
        caught = rejection
    else:
        assert envelope.event_id
        assert envelope.occurred_at.tzinfo is not None
        return
    assert caught.reason in set(Reason)
    assert caught.stage.value == "decode"
