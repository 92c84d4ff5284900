"""The batch processor on real Redis and the real OTel SDK: clean events, dead letters,
duplicates, forgotten subjects, spans and trace propagation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Message
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.ingest.ciphers import key_ids_of
from services.ingest.config import IngestSettings
from services.ingest.keystore import KeyStore
from services.ingest.processor import Processor
from services.ingest.worker import build_processor
from shared.crypto import CryptoError
from shared.dlq import SEALED_HEADER, DeadLetterOpener, DeadLetterSealer
from shared.events import Envelope, Header, decode, derived_event_id
from shared.topics import Topics
from tests.conftest import REDIS_URL
from tests.unit.ingest.samples import BROKEN_DATASET, BROKEN_SPEC_YAML, POISON, poison, valid_docs

RAW = "p.events.raw"
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"


@pytest.fixture
def settings(redis_prefix: str, tmp_path: Path) -> IngestSettings:
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / f"{BROKEN_DATASET}.yaml").write_text(BROKEN_SPEC_YAML)
    return IngestSettings(redis_url=REDIS_URL, redis_prefix=redis_prefix, topic_prefix="p.",
                          data_dir=tmp_path / "data", kafka_bootstrap="unused:1",
                          ingest_specs_dir=specs)


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def processor(settings: IngestSettings, spans: InMemorySpanExporter) -> Iterator[Processor]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    yield build_processor(settings, provider.get_tracer("test"))
    provider.shutdown()


def record(value: bytes, offset: int, key: bytes | None = b"k") -> Message:
    headers = [("traceparent", PARENT.encode()), ("x-origin", b"unit-test")]
    return Message(topic=RAW, partition=offset % 4, offset=offset, key=key, value=value,
                   headers=headers, timestamp=(1, 1_767_225_600_000))


def clean_envelopes(outputs: list[Any]) -> list[Envelope]:
    return [decode(Envelope, o.value) for o in outputs if o.topic == Topics("p.").clean]


def test_good_events_are_cleaned_and_their_pii_protected(
    processor: Processor, settings: IngestSettings
) -> None:
    docs = valid_docs(20)
    result = processor.process([record(orjson.dumps(d), i) for i, d in enumerate(docs)])
    envelopes = clean_envelopes(result.outputs)
    assert (result.clean, result.duplicates, sum(result.rejected.values())) == (20, 0, 0)
    assert [e.event_id for e in envelopes] == [d["event_id"] for d in docs]
    store = KeyStore(settings)
    for doc, envelope in zip(docs, envelopes, strict=True):
        payload = envelope.payload
        for field in ("email", "name"):
            assert str(payload[field]).startswith("enc1:")
            assert store.decrypt_field(envelope.event_id, field, str(payload[field])) == \
                doc["payload"][field]
        key_id = store.data_key_id(str(doc["subject_id"]))
        assert str(payload["card_number"]).startswith(f"tok2:{key_id}:")
        assert {(c.field, c.action) for c in envelope.changes} == {
            ("email", "encrypted"), ("name", "encrypted"), ("card_number", "tokenized")}
        assert payload["amount"] == doc["payload"]["amount"]
        assert envelope.subject_id == store.pseudonyms.of(str(doc["subject_id"]))
        assert payload["customer_id"] == envelope.subject_id
    blob = b"".join(o.value + (o.key or b"") for o in result.outputs)
    for doc in docs:
        for field in ("email", "name", "card_number", "customer_id"):
            assert doc["payload"][field].encode() not in blob


def test_every_poison_kind_goes_to_the_dlq_with_reason_and_provenance(
    processor: Processor, settings: IngestSettings
) -> None:
    store = KeyStore(settings)
    opener = DeadLetterOpener.load(settings, store.open_bytes)
    dlq_key = DeadLetterSealer.load(settings).key_id
    doc = valid_docs(1)[0]
    kinds = list(POISON)
    records = [record(poison(kind, doc), 100 + i) for i, kind in enumerate(kinds)]
    result = processor.process(records, {(RAW, records[0].partition() or 0, 100): 2})
    assert result.clean == 0
    dead = [o for o in result.outputs if o.topic == Topics("p.").rejected]
    assert len(dead) == len(kinds)
    for kind, original, out in zip(kinds, records, dead, strict=True):
        headers = dict(out.headers)
        assert headers[Header.DLQ_REASON].decode() == POISON[kind][0], kind
        assert opener.open(out.value) == original.value()
        for value in (doc["payload"]["email"], doc["payload"]["name"], doc["subject_id"]):
            assert str(value).encode() not in out.value + (out.key or b""), kind
        hint = _subject_of(original.value())
        assert out.key == (store.pseudonyms.of(hint).encode() if hint else None), kind
        if hint == doc["subject_id"]:  # a known subject: shredded with it by `forget`
            assert headers[SEALED_HEADER] == b"subject", kind
            assert key_ids_of(out.value)[1] == store.data_key_id(hint)
        else:  # no subject, or one without a data key: the DLQ public key
            assert headers[SEALED_HEADER] == b"dlq", kind
            assert out.value.startswith(f"dlq1:{dlq_key}:".encode()), kind
        assert headers["__connect.errors.topic"] == RAW.encode()
        assert headers["__connect.errors.offset"] == str(original.offset()).encode()
        assert headers["__connect.errors.connector.name"] == b"ingest"
        assert headers["__connect.errors.exception.message"].startswith(
            POISON[kind][0].encode())
        assert headers["x-origin"] == b"unit-test"
        assert headers["traceparent"] == PARENT.encode()
        assert headers[Header.DLQ_TOPIC] == RAW.encode()
        assert headers[Header.DLQ_PARTITION] == str(original.partition()).encode()
        assert headers[Header.DLQ_OFFSET] == str(original.offset()).encode()
        assert headers[Header.DLQ_STAGE] in (b"decode", b"validate")
        assert headers[Header.DLQ_ATTEMPT] == (b"3" if original.offset() == 100 else b"1")
    internal = dict(dead[kinds.index("internal_error")].headers)
    assert internal[Header.DLQ_EXCEPTION] == b"ValueError"
    assert dict(dead[kinds.index("bad_json")].headers)[Header.DLQ_EXCEPTION] == b"EnvelopeError"


def test_duplicates_are_dropped_but_a_replayed_batch_is_not(processor: Processor) -> None:
    docs = valid_docs(5)
    batch = [record(orjson.dumps(d), i) for i, d in enumerate(docs)]
    resent = record(orjson.dumps(docs[2]), 50)
    first = processor.process([*batch, resent])
    assert (first.clean, first.duplicates) == (5, 1)
    again = processor.process(batch)  # the same records after an aborted transaction
    assert (again.clean, again.duplicates) == (5, 0)
    later = processor.process([record(orjson.dumps(docs[0]), 60)])
    assert (later.clean, later.duplicates) == (0, 1)


def test_a_forgotten_subjects_pii_is_dropped_and_no_key_is_minted(
    processor: Processor, settings: IngestSettings
) -> None:
    docs = valid_docs(30)
    raw_subject = str(docs[0]["subject_id"])
    store = KeyStore(settings)
    forgotten = store.pseudonyms.of(raw_subject)
    old = store.encrypt_for(raw_subject, "ev-before", "email", "before@example.com")
    store.forget(raw_subject)
    result = processor.process([record(orjson.dumps(d), i) for i, d in enumerate(docs)])
    envelopes = clean_envelopes(result.outputs)
    assert len(envelopes) == 30
    for envelope in envelopes:
        if envelope.subject_id == forgotten:
            assert not {"email", "name", "card_number"} & set(envelope.payload)
            assert ("email", "dropped", "subject forgotten") in {
                (c.field, c.action, c.detail) for c in envelope.changes}
        else:
            assert str(envelope.payload["email"]).startswith("enc1:")
    assert store.data_keys([forgotten], create=False)[0] == {}
    with pytest.raises(CryptoError):
        KeyStore(settings).decrypt_field("ev-before", "email", old)


def test_one_span_per_record_continues_the_producers_trace(
    processor: Processor, spans: InMemorySpanExporter
) -> None:
    docs = valid_docs(3)
    records = [record(orjson.dumps(d), i) for i, d in enumerate(docs)]
    records.append(record(b"not json", 9))
    records.append(record(orjson.dumps(docs[0]), 10))
    result = processor.process(records)
    finished = spans.get_finished_spans()
    assert len(finished) == len(records)
    assert {format(s.context.trace_id, "032x") for s in finished} == {TRACE_ID}
    assert [s.attributes["lepton.outcome"] for s in finished] == [
        "clean", "clean", "clean", "rejected", "duplicate"]
    assert finished[3].attributes["lepton.dlq.reason"] == "bad_json"
    assert all(s.attributes["lepton.dataset"] in ("transactions", "") for s in finished)
    assert all(s.name == f"process {RAW}" for s in finished)
    for span, out in zip(finished[:3], result.outputs[:3], strict=True):
        traceparent = dict(out.headers)["traceparent"].decode()
        assert traceparent.split("-")[2] == format(span.context.span_id, "016x")
        assert span.parent is not None
        assert format(span.parent.span_id, "016x") == "b7ad6b7169203331"


def test_a_record_too_big_to_dead_letter_whole_is_truncated_not_stuck(
    processor: Processor, settings: IngestSettings
) -> None:
    huge = b'{"blob": "' + b"x" * 2_500_000 + b'"}'
    result = processor.process([record(huge, 7)])
    (out,) = result.outputs
    headers = dict(out.headers)
    assert headers[Header.DLQ_REASON] == b"too_large"
    assert headers["lepton.dlq.truncated"] == str(len(huge)).encode()
    opened = DeadLetterOpener.load(settings, KeyStore(settings).open_bytes).open(out.value)
    assert opened == huge[: len(opened)]
    assert len(out.value) < 2_000_000


def test_a_spec_whose_impute_value_misfits_its_field_is_an_internal_error(
    processor: Processor, settings: IngestSettings
) -> None:
    assert settings.ingest_specs_dir is not None
    spec = (Path(__file__).parents[3] / "shared/datasets/transactions.yaml").read_text()
    bad = spec.replace("name: transactions", "name: bad_impute").replace(
        "impute: {strategy: median, value: 42.0}", "impute: {strategy: median, value: lots}")
    assert bad != spec
    (settings.ingest_specs_dir / "bad_impute.yaml").write_text(bad)
    doc = {**valid_docs(1)[0], "dataset": "bad_impute"}
    (out,) = processor.process([record(orjson.dumps(doc), 3)]).outputs
    headers = dict(out.headers)
    assert headers[Header.DLQ_REASON] == b"internal_error"
    assert headers[Header.DLQ_EXCEPTION] == b"ValueError"


def _subject_of(value: bytes | None) -> str | None:
    try:
        obj = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return None
    subject = obj.get("subject_id") if isinstance(obj, dict) else None
    return subject if isinstance(subject, str) and subject else None


def test_a_replayed_record_is_a_new_attempt_of_the_same_event(
    processor: Processor, settings: IngestSettings
) -> None:
    doc = valid_docs(1)[0]
    del doc["event_id"]  # ingest derives it from where the record first arrived
    doc["payload"]["hour"] = 24
    first = processor.process([record(orjson.dumps(doc), 5)]).outputs[0]
    replayed = Message(topic=RAW, partition=0, offset=900, key=None, value=orjson.dumps(doc),
                       headers=[("lepton.replay.origin", f"{RAW}/1/5".encode()),
                                ("lepton.replay.attempt", b"1")],
                       timestamp=(1, 1_767_225_600_000))
    again = processor.process([replayed]).outputs[0]
    assert dict(again.headers)[Header.DLQ_ATTEMPT] == b"2"
    assert dict(again.headers)[Header.DLQ_OFFSET] == b"900"
    opener = DeadLetterOpener.load(settings, KeyStore(settings).open_bytes)
    assert opener.open(again.value) == opener.open(first.value)
    doc["payload"]["hour"] = 3  # fixed: the same derived event id as its first arrival
    fixed = Message(topic=RAW, partition=0, offset=901, key=None, value=orjson.dumps(doc),
                    headers=[("lepton.replay.origin", f"{RAW}/1/5".encode())],
                    timestamp=(1, 1_767_225_600_000))
    (out,) = processor.process([fixed]).outputs
    assert decode(Envelope, out.value).event_id == derived_event_id(RAW, 1, 5)


def test_a_forgotten_subjects_rejected_bytes_are_discarded(
    processor: Processor, settings: IngestSettings
) -> None:
    doc = valid_docs(1)[0]
    KeyStore(settings).forget(str(doc["subject_id"]))
    doc["payload"]["hour"] = 24
    (out,) = processor.process([record(orjson.dumps(doc), 8)]).outputs
    headers = dict(out.headers)
    assert (headers[Header.DLQ_REASON], headers[SEALED_HEADER], out.value) == (
        b"out_of_range", b"discarded", b"")
