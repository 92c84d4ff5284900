"""The prediction log on the embedded broker: N answered predictions across gRPC (lepton and
OIP v2), HTTP (v2 and v1) and Kafka become N `predictions.log` records with the version, route,
entry point, latency and trace context and no PII in clear; a full queue drops and counts
without slowing requests."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import httpx
import numpy as np
import tritonclient.grpc as triton

from services.serving.config import ServingSettings
from services.serving.prediction_log import PredictionLog
from services.serving.predictor import Call, Prediction
from services.serving.router import Route
from shared.config import LeptonSettings
from shared.events import CONTENT_TYPE_JSON, Header, decode, encode
from shared.kafka import make_producer
from shared.models.predictions import PredictionLogRecord, PredictRequest
from shared.models.registry import Registry
from shared.topics import Topics
from tests.helpers import read_topic
from tests.integration.test_serving_oip_grpc import HEADERS, full_records, v2_inputs
from tests.unit.serving.support import (
    MODEL,
    TOKEN,
    call_predict,
    running,
    save_model,
    serving_settings,
    span_exporter,
    stub,
)

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PII = ("card_number", "email", "name", "customer_id")


def test_every_entry_point_lands_in_the_prediction_log_without_pii(
    lepton_env: LeptonSettings,
) -> None:
    span_exporter()  # the real OTel SDK: every entry point has a trace to log
    settings = serving_settings(serving_auth_token=TOKEN, serving_kafka=True)
    card = save_model(settings)
    Registry(settings).set_live(MODEL, card.version)
    topics = Topics(settings.topic_prefix)
    records = full_records(12)
    features = [dict(r) for r in records]
    with running(settings, kafka=True) as server:
        channel, lepton = stub(server.addr)
        try:
            for i in range(3):
                call_predict(lepton, features[i], request_id=f"grpc-{i}")
        finally:
            channel.close()
        client = triton.InferenceServerClient(server.addr)
        meta = client.get_model_metadata(MODEL, headers=HEADERS, as_json=True)
        client.infer(MODEL, v2_inputs(records[3:6], meta), request_id="v2", headers=HEADERS)
        auth = {"authorization": f"Bearer {TOKEN}",
                "traceparent": f"00-{TRACE_ID}-b7ad6b7169203331-01"}
        with httpx.Client(base_url=server.http_url, headers=auth, timeout=10) as http:
            assert http.post(f"/v1/models/{MODEL}:predict",
                             json=features[6:8]).status_code == 200
        producer = make_producer(settings)
        for i in range(8, 12):
            request = PredictRequest(request_id=f"kafka-{i}", features=features[i])
            producer.produce(topics.predict_requests, key=request.request_id.encode(),
                             value=encode(request),
                             headers=[(Header.CONTENT_TYPE, CONTENT_TYPE_JSON),
                                      ("traceparent", auth["traceparent"].encode())])
        assert producer.flush(10) == 0
        logged = read_topic(settings, topics.prediction_log, expect=12, timeout=60)
    entries = [decode(PredictionLogRecord, m.value) for m in logged]
    assert len(entries) == 12
    assert Counter(e.entry for e in entries) == {"grpc": 3, "v2-grpc": 3, "http": 2, "kafka": 4}
    assert all(e.version == card.version and e.model == MODEL and e.route == "live"
               for e in entries)
    assert all(e.latency_ms >= 0 and 0 <= e.score <= 1 for e in entries)
    assert {e.request_id for e in entries if e.entry == "v2-grpc"} == {"v2.0", "v2.1", "v2.2"}
    assert all(e.traceparent for e in entries)
    assert all(TRACE_ID in (e.traceparent or "") for e in entries if e.entry in ("http", "kafka"))
    raw = b"".join(m.value for m in logged)
    for rec in records:
        for field in PII:
            value = rec.get(field)
            if isinstance(value, str):
                assert value.encode() not in raw, field
    for entry in entries:
        assert not {"email", "name", "customer_id"} & set(entry.inputs)
        assert entry.inputs["amount"] is not None


def test_a_full_queue_drops_and_counts_without_blocking(lepton_env: LeptonSettings) -> None:
    log = PredictionLog(ServingSettings(), capacity=8)
    prediction = Prediction("r", MODEL, 1, 0.5, True, Route.LIVE)
    call = Call.now("grpc")
    timings = []
    for _ in range(2000):
        start = time.perf_counter()
        log.record(call, prediction, {"amount": 1.0})
        timings.append(time.perf_counter() - start)
    assert log.dropped == 2000 - 8
    assert float(np.percentile(timings, 99)) < 1e-3  # never waits for room


def test_a_full_queue_leaves_request_latency_unchanged(lepton_env: LeptonSettings) -> None:
    settings = serving_settings(serving_auth_token=TOKEN, serving_log_queue=1)
    card = save_model(settings)
    Registry(settings).set_live(MODEL, card.version)
    records = full_records(1)

    def p50(server: Any) -> float:
        channel, lepton = stub(server.addr)
        try:
            for _ in range(30):
                call_predict(lepton, records[0])
            took = []
            for _ in range(300):
                start = time.perf_counter()
                call_predict(lepton, records[0])
                took.append(time.perf_counter() - start)
        finally:
            channel.close()
        return float(np.percentile(took, 50))

    with running(settings) as server:
        log = server.app.prediction_log
        assert log is not None
        log._stop.set()  # the publisher stops: the one-slot queue stays full
        log._thread.join(5)
        full = p50(server)
        assert log.dropped >= 299
    with running(serving_settings(serving_auth_token=TOKEN, serving_log_sample=0.0)) as server:
        assert server.app.prediction_log is None
        without = p50(server)
    assert full < without * 1.5 + 0.002, (full, without)
