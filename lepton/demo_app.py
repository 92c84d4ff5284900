"""`lepton demo-app`: play a downstream app at a low rate, rotating between the three ways in:
gRPC (`lepton.serving.v1` Predict), HTTP (OIP v2 infer) and Kafka (`predictions.requests`).
Records are a `lepton produce` stream's events (its dataset, count and seed) with the label
removed, each carrying its id: given the producer's seed, the app scores the events the
producer sends, so their labels reach the monitor's live-quality join. Until serving has a
model the calls fail; they are counted and retried, so the demo can start with everything
else."""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from lepton.generators import generate
from shared.datasets import Role, load_spec
from shared.events import CONTENT_TYPE_JSON, Envelope, Header, Scalar, encode
from shared.models.predictions import PredictRequest
from shared.topics import Topics

log = logging.getLogger(__name__)
ROUTES = ("grpc", "http", "kafka")


@dataclass
class DemoReport:
    """Sent and failed calls per route."""

    sent: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)


def _v2_body(record: dict[str, Scalar], inputs: list[dict[str, Any]]) -> dict[str, Any]:
    tensors = [{"name": i["name"], "datatype": i["datatype"], "shape": [1],
                "data": [record[i["name"]]]} for i in inputs if record.get(i["name"]) is not None]
    return {"inputs": tensors}


class DemoApp:
    """One client per route, taking turns at `rate` calls a second."""

    def __init__(self, settings: Any, *, dataset: str, model: str, rate: float,
                 http_url: str, token: str | None, seed: int | None = None,
                 stream_count: int = 100_000) -> None:
        import httpx

        from services.serving.client import ServingClient

        self.settings = settings
        self.model = model
        self.rate = rate
        spec = load_spec(dataset)
        self.label = next(f.name for f in spec.fields if f.role is Role.LABEL)
        self.id_field = next((f.name for f in spec.fields if f.role is Role.ID), None)
        self.dataset = dataset
        self.seed = secrets.randbelow(2**31) if seed is None else seed
        self.stream_count = stream_count
        self._stream: Iterator[Envelope] = iter(())
        self.grpc = ServingClient(settings.serving_addr, token=token, timeout=5.0)
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=http_url, headers=headers, timeout=5.0)
        self.topic = Topics(settings.topic_prefix).predict_requests
        self.inputs: list[dict[str, Any]] | None = None
        self.report = DemoReport()

    def _record(self) -> dict[str, Scalar]:
        """The stream's next event without its label (from the start again after the last)."""
        event = next(self._stream, None)
        if event is None:
            self._stream = generate(self.dataset, self.stream_count, self.seed)
            event = next(self._stream)
        return {k: v for k, v in event.payload.items() if k != self.label}

    def _http(self, record: dict[str, Scalar]) -> None:
        if self.inputs is None:
            meta = self.http.get(f"/v2/models/{self.model}")
            meta.raise_for_status()
            self.inputs = meta.json()["inputs"]
        body = _v2_body(record, self.inputs)
        if self.id_field is not None and record.get(self.id_field) is not None:
            body["id"] = str(record[self.id_field])  # v2 tensors carry model inputs only
        reply = self.http.post(f"/v2/models/{self.model}/infer", json=body)
        reply.raise_for_status()

    def run(self, stop: threading.Event, count: int | None = None) -> DemoReport:
        """Send until `stop` is set (or `count` calls are made)."""
        from shared.kafka import make_producer

        producer = make_producer(self.settings)
        i = 0
        try:
            while not stop.is_set() and (count is None or i < count):
                route = ROUTES[i % len(ROUTES)]
                record = self._record()
                try:
                    if route == "grpc":
                        self.grpc.predict([record], model=self.model, request_id=f"demo-{i}")
                    elif route == "http":
                        self._http(record)
                    else:
                        request = PredictRequest(request_id=f"demo-{time.time_ns()}-{i}",
                                                 model=self.model, features=record)
                        producer.produce(self.topic, key=request.request_id.encode(),
                                         value=encode(request),
                                         headers=[(Header.CONTENT_TYPE, CONTENT_TYPE_JSON)])
                        producer.poll(0)
                    self.report.sent[route] += 1
                except Exception as error:  # serving not ready yet, or restarting
                    self.report.failed[route] += 1
                    log.debug("demo %s call failed: %s", route, error)
                i += 1
                stop.wait(1.0 / self.rate)
        finally:
            producer.flush(5)
            self.grpc.close()
            self.http.close()
        return self.report


def demo_app(*, dataset: str, model: str, rate: float, stop: threading.Event,
             count: int | None = None, seed: int | None = None,
             stream_count: int = 100_000) -> DemoReport:
    """Run the demo app with the serving addresses and token from the environment."""
    from services.serving.client import target
    from services.serving.config import ServingSettings

    serving = ServingSettings()
    http = f"http://{target(serving.serving_http_addr)}" if serving.serving_http_addr else ""
    app = DemoApp(serving, dataset=dataset, model=model, rate=rate, http_url=http,
                  token=serving.predict_token(), seed=seed, stream_count=stream_count)
    return app.run(stop, count)
