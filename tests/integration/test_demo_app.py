"""`lepton demo-app` against a real server: it takes turns between gRPC, HTTP and Kafka, every
call is answered (the Kafka ones on predictions.results), and it scores the events of the
producer stream it is given, each under its id, so the monitor can join their labels."""

from __future__ import annotations

import threading

import orjson

from lepton.demo_app import DemoApp
from lepton.generators import generate
from shared.config import LeptonSettings
from shared.models.registry import Registry
from shared.topics import Topics
from tests.helpers import read_topic
from tests.unit.serving.support import MODEL, TOKEN, running, save_model, serving_settings


def test_demo_app_calls_over_grpc_http_and_kafka(lepton_env: LeptonSettings) -> None:
    settings = serving_settings(serving_auth_token=TOKEN, serving_kafka=True)
    card = save_model(settings)
    Registry(settings).set_live(MODEL, card.version)
    with running(settings, kafka=True) as server:
        app = DemoApp(serving_settings(serving_addr=server.addr), dataset="transactions",
                      model=MODEL, rate=50.0, http_url=server.http_url, token=TOKEN,
                      seed=41, stream_count=500)
        report = app.run(threading.Event(), count=9)
        assert dict(report.sent) == {"grpc": 3, "http": 3, "kafka": 3}
        assert not report.failed
        topics = Topics(settings.topic_prefix)
        results = read_topic(settings, topics.predict_results, expect=3, timeout=30)
        assert len(results) == 3
        logged = [orjson.loads(r.value) for r in
                  read_topic(settings, topics.prediction_log, expect=9, timeout=30)]
    stream = [e.payload["transaction_id"] for e in generate("transactions", 500, 41)][:9]
    keys = {r["inputs"].get("transaction_id") or r["request_id"] for r in logged}
    assert keys == set(stream)  # the producer's events, each joinable to its label
