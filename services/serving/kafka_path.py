"""The Kafka prediction path: consume `predictions.requests` (PredictRequest JSON, key =
request id) in batches, score them, produce `predictions.results` (PredictResult JSON with the
model version; trace context continued from the request's headers: each request's `process`
span, built only when it is recorded (shared.record_trace), parents its result), then commit: a
stage on the shared at-least-once runtime (shared/stage).

Results are delivered BEFORE the request ids are marked done in Redis and BEFORE offsets are
committed, so a crash re-delivers rather than loses;
on re-delivery, ids already marked done are skipped (a crash between flush and mark can still
emit a result twice; results are keyed by request id so consumers can dedup too)."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from opentelemetry import metrics
from pydantic import ValidationError

from services.serving.errors import ServingError
from services.serving.predictor import Call, Prediction, Predictor, Request
from services.serving.wire import message_headers
from shared.dlq import SEALED_HEADER, DeadLetterSealer
from shared.events import (
    CONTENT_TYPE_JSON,
    EnvelopeError,
    Header,
    HeaderList,
    decode,
    dlq_headers,
    encode,
)
from shared.models.predictions import PredictRequest, PredictResult
from shared.record_trace import record_trace
from shared.stage import Output
from shared.state import make_redis, rkey
from shared.topics import Topics
from shared.tracing import get_tracer

if TYPE_CHECKING:
    from confluent_kafka import Message

    from services.serving.config import ServingSettings

log = logging.getLogger(__name__)
_tracer = get_tracer(__name__)
_dead_letters = metrics.get_meter("lepton.serving").create_counter(
    "lepton.serving.requests.rejected", unit="{request}",
    description="Kafka prediction requests sent to events.rejected (unreadable), by reason")


@dataclass
class _Item:
    message: Message
    request_id: str
    request: PredictRequest | None = None
    error: ServingError | EnvelopeError | None = None


class KafkaPredictions:
    """The prediction stage, run by the at-least-once runtime in its own thread."""

    name = "serving"
    # any failure retries the batch with back-off: it is consumed again, never dropped
    waits_out: tuple[type[BaseException], ...] = (Exception,)

    def __init__(self, settings: ServingSettings, predictor: Predictor,
                 stop: threading.Event) -> None:
        self.settings = settings
        self.predictor = predictor
        self.stop = stop
        topics = Topics(settings.topic_prefix)
        self.requests_topic = topics.predict_requests
        self.results_topic = topics.predict_results
        self.rejected_topic = topics.rejected
        self.inputs = [self.requests_topic]
        self.outputs = [self.results_topic, self.rejected_topic]
        self._answered: list[str] = []
        self._dead: list[str] = []  # reasons of this batch's dead letters
        self._fresh = 0
        self.redis = make_redis(settings)
        self._sealer = DeadLetterSealer.load(settings)  # the DLQ public key: fail at start
        self.served = 0
        self.duplicates = 0
        self._thread = threading.Thread(target=self._run, name="serving-kafka", daemon=True)

    def start(self) -> None:
        """Start consuming."""
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the loop to finish its batch after `stop` is set."""
        self._thread.join(timeout)

    def _done_key(self, request_id: str) -> str:
        return rkey(self.settings, "serving", "done", request_id)

    def _run(self) -> None:
        from shared.stage import AtLeastOnceRuntime

        while not self.predictor.fleet.ready and not self.stop.wait(0.1):
            pass
        AtLeastOnceRuntime(
            self.settings, self, self.stop, group_id=f"{self.settings.serving_group}-predictions",
            batch_size=self.settings.serving_kafka_batch, poll_timeout_s=0.2,
            consumer_config={"fetch.wait.max.ms": 50}).run()

    def _parse(self, messages: list[Message]) -> list[_Item]:
        items: list[_Item] = []
        for message in messages:
            key = (message.key() or b"").decode("utf-8", "replace")
            try:
                request = decode(PredictRequest, message.value() or b"")
                items.append(_Item(message, request.request_id, request))
            except EnvelopeError as error:
                items.append(_Item(message, key, error=error))
        return items

    def process(self, messages: list[Message]) -> list[Output]:
        """Results (and dead letters) of one consumed batch; requests already answered are
        skipped."""
        items = self._parse(messages)
        self._dead = []
        ids = [item.request_id for item in items if item.request_id]
        done = self.redis.mget([self._done_key(i) for i in ids]) if ids else []
        seen = {i for i, flag in zip(ids, done, strict=True) if flag is not None}
        fresh: list[_Item] = []
        for item in items:
            if item.request_id and item.request_id in seen:
                self.duplicates += 1
                continue
            if item.request_id:
                seen.add(item.request_id)
            fresh.append(item)
        outputs: list[Output] = []
        scorable = [i for i in fresh if i.request is not None]
        started_ns = time.time_ns()  # the requests' process spans start with the scoring
        started = time.perf_counter()
        outcomes = self.predictor.predict_many([
            Request(i.request_id, i.request.model or "", i.request.version or 0,
                    i.request.features, Call("kafka", _traceparent(i.message), started))
            for i in scorable if i.request is not None
        ])
        for item, outcome in zip(scorable, outcomes, strict=True):
            if isinstance(outcome, ServingError):
                item.error = outcome
            else:
                outputs.append(self._emit(item, _result(item.request_id, outcome), started_ns))
        for item in fresh:
            if item.error is not None and item.request is None:
                outputs.append(self._reject(item, started_ns))
            elif item.error is not None:
                outputs.append(self._emit(item, _error_result(item.request_id, item.error),
                                          started_ns))
        self._answered = [i.request_id for i in fresh if i.request_id]
        self._fresh = len(fresh)
        return outputs

    def due(self, final: bool) -> list[Output]:
        """Nothing is due without requests."""
        return []

    def committed(self, batch: list[Message], seconds: float) -> None:
        """The batch's results are delivered: mark its requests answered (dedup on redelivery)."""
        if self._answered:
            pipe = self.redis.pipeline(transaction=False)
            for request_id in self._answered:
                pipe.set(self._done_key(request_id), b"1", ex=self.settings.serving_dedup_ttl_s)
            pipe.execute()
        self.served += self._fresh
        for reason in self._dead:
            _dead_letters.add(1, {"reason": reason})

    def aborted(self, batch: list[Message]) -> None:
        """Nothing: an undelivered batch is consumed again."""

    def _emit(self, item: _Item, result: PredictResult, started_ns: int) -> Output:
        message = item.message
        span, trace = record_trace(
            _tracer, self.requests_topic, message_headers(message),
            partition=message.partition(), offset=message.offset(),
            group=f"{self.settings.serving_group}-predictions",
            attributes={"messaging.kafka.message.key": item.request_id,
                        "lepton.model.version": result.version or 0},
            start_time=started_ns)
        try:
            headers: HeaderList = [(Header.CONTENT_TYPE, CONTENT_TYPE_JSON), *trace]
            return Output(self.results_topic, item.request_id.encode(), encode(result), headers)
        finally:
            if span is not None:
                span.end()

    def _reject(self, item: _Item, started_ns: int) -> Output:
        message = item.message
        error = item.error
        try:
            result = _error_result(item.request_id, error)
        except ValidationError:
            result = None
        if result is not None:
            return self._emit(item, result, started_ns)
        reason = getattr(error, "kind", "invalid")
        self._dead.append(reason)
        headers = dlq_headers(message_headers(message), reason=reason,
                              detail=str(error), stage="serving",
                              exception=type(error).__name__, topic=self.requests_topic,
                              partition=message.partition() or 0,
                              offset=message.offset() or 0, service="serving")
        value, how = self._sealer.seal(message.value() or b"")  # requests may carry PII
        headers.append((SEALED_HEADER, how.value.encode()))
        return Output(self.rejected_topic, message.key(), value, headers)


def _result(request_id: str, prediction: Prediction) -> PredictResult:
    return PredictResult(request_id=request_id, model=prediction.model,
                         version=prediction.version, score=prediction.score,
                         label=prediction.label, route=prediction.route.value)


def _error_result(request_id: str, error: ServingError | EnvelopeError | None) -> PredictResult:
    code = error.code if isinstance(error, ServingError) else "invalid_argument"
    return PredictResult(request_id=request_id, error=str(error), error_code=code)


def _traceparent(message: Message) -> str | None:
    for key, value in message_headers(message):
        if key == "traceparent" and value:
            return value.decode("ascii", "replace") if isinstance(value, bytes) else value
    return None
