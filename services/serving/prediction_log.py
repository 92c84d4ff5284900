"""The prediction log: every answered prediction (gRPC, OIP v2, HTTP, Kafka), sampled by
`LEPTON_SERVING_LOG_SAMPLE`, published to `predictions.log` as PredictionLogRecord JSON (key =
request id). Off the request path: a request only appends a tuple to a bounded deque (no lock,
no wake-up); when it is full the record is dropped and counted (`dropped`, metric
`lepton.serving.prediction_log.dropped`), never blocking. A thread drains the deque every
`DRAIN_S` seconds, builds each record, encodes and produces."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
from opentelemetry import metrics

from shared.events import CONTENT_TYPE_JSON, Header, HeaderList, Scalar
from shared.topics import Topics

if TYPE_CHECKING:
    from confluent_kafka import Producer

    from services.serving.config import ServingSettings
    from services.serving.predictor import Call, Prediction

log = logging.getLogger(__name__)
_meter = metrics.get_meter("lepton.serving")
_logged = _meter.create_counter("lepton.serving.prediction_log.records",
                                description="Prediction-log records published")
_dropped = _meter.create_counter("lepton.serving.prediction_log.dropped",
                                 description="Prediction-log records dropped: queue full")
_Item = tuple["Call", "Prediction", dict[str, Scalar], float]
DRAIN_S = 0.02  # how often the thread takes what requests appended


def entry_json(call: Call, prediction: Prediction, record: dict[str, Scalar],
               answered: float) -> bytes:
    """One PredictionLogRecord as JSON, byte for byte what `encode(PredictionLogRecord(...))`
    gives, without the model's validation (the values are serving's own, typed) at a seventh
    of the cost."""
    return orjson.dumps({
        "request_id": prediction.request_id, "model": prediction.model,
        "version": prediction.version, "route": prediction.route.value, "entry": call.entry,
        "inputs": record, "score": prediction.score, "label": prediction.label,
        "latency_ms": round((answered - call.started) * 1000, 3),
        "traceparent": call.traceparent, "logged_at": datetime.now(UTC)},
        option=orjson.OPT_UTC_Z)


class PredictionLog:
    """A bounded queue of answered predictions and the thread that publishes them."""

    def __init__(self, settings: ServingSettings, *, producer: Producer | None = None,
                 capacity: int | None = None, sample: float | None = None) -> None:
        self.settings = settings
        self.topic = Topics(settings.topic_prefix).prediction_log
        self.sample = settings.serving_log_sample if sample is None else sample
        self.capacity = capacity or settings.serving_log_queue
        self._queue: deque[_Item] = deque()
        self._producer = producer
        self._stop = threading.Event()
        self._flush_s = 5.0
        self._thread = threading.Thread(target=self._run, name="serving-prediction-log",
                                        daemon=True)
        self.published = 0
        self.dropped = 0
        self.failed = 0

    def wanted(self) -> bool:
        """Whether this prediction is in the sample."""
        return self.sample >= 1.0 or (self.sample > 0.0 and random.random() < self.sample)

    def record(self, call: Call, prediction: Prediction, record: dict[str, Scalar]) -> None:
        """Queue one answered prediction (never blocks; drops and counts when full)."""
        if len(self._queue) >= self.capacity:
            self.dropped += 1
            _dropped.add(1)
            return
        self._queue.append((call, prediction, record, time.perf_counter()))

    def start(self) -> None:
        """Start publishing."""
        self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Publish what is queued (up to `timeout` s) and stop."""
        self._flush_s = max(0.1, timeout - 0.2)
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        from shared.kafka import make_producer

        overrides: dict[str, Any] = {"linger.ms": 20}
        producer = self._producer or make_producer(self.settings, **overrides)
        headers: HeaderList = [(Header.CONTENT_TYPE, CONTENT_TYPE_JSON)]
        pending = self._queue
        try:
            while True:
                stopping = self._stop.wait(DRAIN_S)
                published = 0
                while pending:
                    published += self._publish(producer, pending.popleft(), headers)
                if published:
                    self.published += published
                    _logged.add(published)
                producer.poll(0)
                if stopping:
                    break
        finally:
            producer.flush(self._flush_s)

    def _publish(self, producer: Producer, item: _Item,
                 headers: HeaderList) -> bool:
        try:
            producer.produce(self.topic, key=item[1].request_id.encode(),
                             value=entry_json(*item), headers=headers)
        except BufferError:
            self.failed += 1
            _dropped.add(1)
            return False
        except Exception:
            self.failed += 1
            log.exception("prediction log: cannot publish")
            return False
        return True
