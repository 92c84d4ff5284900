"""The Kafka prediction path on the embedded broker and real Redis: request → result with the
model version and the trace continued (each result is the child of its request's `process`
span, on the real OTel SDK), error results for bad requests, dedup by request id."""

from __future__ import annotations

from collections import Counter

import orjson

from shared.config import LeptonSettings
from shared.dlq import SEALED_HEADER
from shared.events import CONTENT_TYPE_JSON, Header, decode, encode
from shared.kafka import make_producer
from shared.models.predictions import PredictRequest, PredictResult
from shared.models.registry import Registry
from shared.state import make_redis, rkey
from shared.topics import Topics
from shared.tracing import span_name
from tests.helpers import open_dead_letter, read_topic
from tests.unit.serving.support import (
    MODEL,
    record,
    running,
    save_model,
    serving_settings,
    span_exporter,
)

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_SPAN = "b7ad6b7169203331"


def _send(producer: object, topic: str, key: str, value: bytes) -> None:
    headers = [(Header.CONTENT_TYPE, CONTENT_TYPE_JSON),
               ("traceparent", f"00-{TRACE_ID}-{PARENT_SPAN}-01".encode())]
    producer.produce(topic, key=key.encode(), value=value, headers=headers)  # type: ignore[attr-defined]


def test_kafka_round_trip_with_errors_and_dedup(lepton_env: LeptonSettings) -> None:
    settings = serving_settings(serving_kafka=True)
    card = save_model(settings)
    Registry(settings).set_live(MODEL, card.version)
    topics = Topics(settings.topic_prefix)
    exporter = span_exporter()
    producer = make_producer(settings)
    good = [PredictRequest(request_id=f"r{i}", features=record(i)) for i in range(5)]
    for request in good:
        _send(producer, topics.predict_requests, request.request_id, encode(request))
    _send(producer, topics.predict_requests, good[0].request_id, encode(good[0]))
    _send(producer, topics.predict_requests, "r-bad",
          encode(PredictRequest(request_id="r-bad", features={**record(), "amount": "x"})))
    _send(producer, topics.predict_requests, "r-json", b"{not json")
    poison = b'{"features": {"email": "dlq-secret@example.com"'  # no usable request id either
    _send(producer, topics.predict_requests, "has spaces!", poison)
    _send(producer, topics.predict_requests, "r-pin",
          encode(PredictRequest(request_id="r-pin", model=MODEL, version=7,
                                features=record())))
    assert producer.flush(10) == 0

    with running(settings, kafka=True) as server:
        records = read_topic(settings, topics.predict_results, expect=8, timeout=60)
        results = {r.key.decode(): decode(PredictResult, r.value) for r in records if r.key}
        assert len(records) == 8
        for request in good:
            result = results[request.request_id]
            assert result.ok
            assert (result.model, result.version, result.route) == (MODEL, card.version, "live")
            assert result.score is not None
            assert 0.0 <= result.score <= 1.0
        assert results["r-bad"].error_code == "invalid_argument"
        assert "amount" in (results["r-bad"].error or "")
        assert results["r-json"].error_code == "invalid_argument"
        assert results["r-pin"].error_code == "not_found"
        headers = [r.headers for r in records]
        assert all(h.get("traceparent", b"").decode().split("-")[1] == TRACE_ID for h in headers)
        spans = {s.attributes["messaging.kafka.message.key"]: s
                 for s in exporter.get_finished_spans()
                 if s.name == span_name("process", topics.predict_requests) and s.attributes}
        assert len(spans) == 8
        for r in records:
            span = spans[r.key.decode()]
            _, trace_id, parent_id, flags = r.headers["traceparent"].decode().split("-")
            assert (int(trace_id, 16), int(parent_id, 16), flags) == (
                span.context.trace_id, span.context.span_id, "01"), "not the process span's child"
            assert span.parent is not None and span.parent.span_id == int(PARENT_SPAN, 16)
            assert span.attributes["lepton.model.version"] == (
                card.version if results[r.key.decode()].ok else 0)
        [dead] = read_topic(settings, topics.rejected, expect=1, timeout=30)
        assert dead.headers[SEALED_HEADER] == b"dlq" and b"dlq-secret" not in dead.value
        assert dead.headers["__connect.errors.connector.name"] == b"serving"
        assert open_dead_letter(settings, dead.value) == poison
        # sealed holding neither the master keyring nor the platform key (no data key at all)
        assert not {"master-keys.json", "token.key", "datakeys"} & {
            p.name for p in settings.keys_path().iterdir()}

        redis = make_redis(settings)
        assert redis.exists(rkey(settings, "serving", "done", "r3")) == 1
        _send(producer, topics.predict_requests, "r3", encode(good[3]))
        _send(producer, topics.predict_requests, "r-last",
              encode(PredictRequest(request_id="r-last", features=record(9))))
        assert producer.flush(10) == 0
        records = read_topic(settings, topics.predict_results, expect=9, timeout=30)
        assert server.app.kafka is not None
        assert server.app.kafka.duplicates >= 2

    keys = Counter(r.key.decode() for r in records if r.key)
    assert keys["r-last"] == 1
    assert keys["r0"] == 1
    assert keys["r3"] == 1
    assert sum(keys.values()) == 9
    assert orjson.loads(records[0].value)["request_id"]
