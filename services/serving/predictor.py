"""Turn prediction requests into predictions: route each to a version, clean its record
against that version's dataset spec, score it (dynamically batched, or as a batch), score the
shadow candidate off the response path and log its result, and name the version in every
answer. Shared by the gRPC APIs (lepton and OIP v2), the HTTP API (event loop) and the Kafka path
(its own thread). Every answered prediction is handed to the prediction log when one is set."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import SpanContext

from services.serving.batching import Batcher
from services.serving.errors import InvalidInput, ServingError
from services.serving.fleet import Fleet
from services.serving.model import LoadedModel
from services.serving.router import ModelHost, PinMiss, Route
from shared.events import Scalar
from shared.models.predictions import EntryName
from shared.service_record import count_work

log = logging.getLogger(__name__)
shadow_log = logging.getLogger("services.serving.shadow")
_meter = metrics.get_meter("lepton.serving")


class _Tally:
    """Scored records per (model, version, route), reported as a cumulative observable
    counter: a request adds to a dict under a lock instead of paying the SDK's per-call
    `Counter.add` (≈ 7 µs with its attributes)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, int, str]] = Counter()

    def add(self, count: int, model: str, version: int, route: Route) -> None:
        """Count `count` records scored by `model` v`version` on `route`."""
        with self._lock:
            self._counts[model, version, route.value] += count

    def observe(self, _options: CallbackOptions) -> Iterable[Observation]:
        """The totals so far (called by the metric readers)."""
        with self._lock:
            counts = list(self._counts.items())
        return [Observation(n, {"model": m, "version": v, "route": r})
                for (m, v, r), n in counts]


_predictions = _Tally()
_meter.create_observable_counter("lepton.serving.predictions", [_predictions.observe],
                                 description="Scored records")
_shadow = _meter.create_counter("lepton.serving.shadow_predictions",
                                description="Records also scored by a shadow candidate")


@dataclass(frozen=True, slots=True)
class Call:
    """Where and when a request arrived (for the prediction log)."""

    entry: EntryName
    traceparent: str | None = None
    started: float = 0.0  # time.perf_counter() on arrival

    @staticmethod
    def now(entry: EntryName, traceparent: str | None = None) -> Call:
        """A Call that starts now."""
        return Call(entry, traceparent, time.perf_counter())


@dataclass(frozen=True, slots=True)
class Request:
    """One record to score; `version` 0 lets the rollout choose."""

    request_id: str
    model: str
    version: int
    record: dict[str, Scalar]
    call: Call | None = None


@dataclass(frozen=True, slots=True)
class Prediction:
    """A score and the model version that produced it."""

    request_id: str
    model: str
    version: int
    score: float
    label: bool
    route: Route
    origin: SpanContext | None = None


@dataclass(frozen=True, slots=True)
class Rows:
    """The answer to many rows scored together by one version (columnar APIs)."""

    model: LoadedModel
    route: Route
    records: list[dict[str, Scalar]]  # cleaned: PII dropped
    predictions: list[Prediction]


class PredictionSink(Protocol):
    """Receives every answered prediction (the prediction log); must never block."""

    def wanted(self) -> bool:
        """Whether to record this one (sampling)."""

    def record(self, call: Call, prediction: Prediction, record: dict[str, Scalar]) -> None:
        """Take one answered prediction with its cleaned record."""


class Predictor:
    """Routes, validates and scores requests against the fleet."""

    def __init__(self, fleet: Fleet, threshold: float, batcher: Batcher | None = None,
                 sink: PredictionSink | None = None) -> None:
        self.fleet = fleet
        self.threshold = threshold
        self.batcher = batcher
        self.sink = sink

    def _choose(self, request: Request) -> tuple[ModelHost, LoadedModel, Route,
                                                  LoadedModel | None]:
        host = self.fleet.host(request.model)
        model, route, shadow = host.choose(request.request_id, request.version or None)
        return host, model, route, shadow

    def _prediction(self, request_id: str, model: LoadedModel, score: float,
                    route: Route) -> Prediction:
        threshold = model.card.metrics.get("threshold", self.threshold)
        return Prediction(request_id, model.name, model.version, score, score >= threshold, route,
                          model.origin)

    async def predict(self, request: Request) -> Prediction:
        """Score one request (awaits a pinned version's load when it is not in memory)."""
        request_id = request.request_id or uuid.uuid4().hex
        try:
            _, model, route, shadow = self._choose(request)
        except PinMiss as miss:
            await asyncio.to_thread(self.fleet.load_pinned, miss.model, miss.version)
            _, model, route, shadow = self._choose(request)
        record = model.schema.clean(request.record)
        model.acquire()
        try:
            if self.batcher is not None:
                score = await self.batcher.submit(model, record)
            else:
                score = float(model.score([record])[0])
        finally:
            model.release()
        prediction = self._prediction(request_id, model, score, route)
        _predictions.add(1, model.name, model.version, route)
        count_work(1, key=f"{model.name}:{model.version}")
        self._log(request.call, model, prediction, record)
        if shadow is not None:
            asyncio.get_running_loop().call_soon(self._score_shadow, shadow, [record],
                                                 [prediction])
        return prediction

    async def predict_batch(self, requests: list[Request]) -> list[Prediction | ServingError]:
        """Score many requests; loads missing pinned versions first, off the event loop."""
        for model, version in {(r.model, r.version) for r in requests if r.version}:
            try:
                self.fleet.host(model).choose("", version)
            except PinMiss:
                await asyncio.to_thread(self.fleet.load_pinned, model, version)
            except ServingError:
                continue
        return self.predict_many(requests, load_missing=False)

    def predict_many(
        self, requests: list[Request], *, load_missing: bool = True
    ) -> list[Prediction | ServingError]:
        """Score many requests synchronously; each item gets a Prediction or its error."""
        results: list[Prediction | ServingError | None] = [None] * len(requests)
        groups: dict[LoadedModel, list[tuple[int, dict[str, Scalar], Route]]] = defaultdict(list)
        shadows: dict[LoadedModel, list[int]] = defaultdict(list)
        ids = [r.request_id or uuid.uuid4().hex for r in requests]
        for i, request in enumerate(requests):
            try:
                try:
                    _, model, route, shadow = self._choose(request)
                except PinMiss as miss:
                    if not load_missing:
                        raise
                    self.fleet.load_pinned(miss.model, miss.version)
                    _, model, route, shadow = self._choose(request)
                cleaned_record = model.schema.clean(request.record)  # before groups[model]:
                groups[model].append((i, cleaned_record, route))  # no empty group on error
                if shadow is not None:
                    shadows[shadow].append(i)
            except ServingError as error:
                results[i] = error
        cleaned: dict[int, dict[str, Scalar]] = {}
        for model, items in groups.items():
            model.acquire(len(items))
            try:
                scores = model.score([record for _, record, _ in items]).tolist()
            finally:
                model.release(len(items))
            for (i, record, route), score in zip(items, scores, strict=True):
                results[i] = prediction = self._prediction(ids[i], model, score, route)
                cleaned[i] = record
                self._log(requests[i].call, model, prediction, record)
            for route, count in Counter(route for _, _, route in items).items():
                _predictions.add(count, model.name, model.version, route)
                count_work(count, key=f"{model.name}:{model.version}")
        for shadow, indexes in shadows.items():
            done = [i for i in indexes if isinstance(results[i], Prediction)]
            self._score_shadow(shadow, [cleaned[i] for i in done],
                               [results[i] for i in done])  # type: ignore[misc]
        return [r for r in results if r is not None]

    async def predict_rows(self, request_id: str, model_name: str, version: int,
                           records: list[dict[str, Scalar]], call: Call | None = None) -> Rows:
        """Score rows as one request: one routing decision, one version for every row; a bad
        row fails the whole request naming its index. Row i's request id is `<id>.<i>`."""
        request_id = request_id or uuid.uuid4().hex
        try:
            model, route, shadow = self.fleet.host(model_name).choose(request_id, version or None)
        except PinMiss as miss:
            await asyncio.to_thread(self.fleet.load_pinned, miss.model, miss.version)
            model, route, shadow = self.fleet.host(model_name).choose(request_id, version or None)
        cleaned: list[dict[str, Scalar]] = []
        for i, record in enumerate(records):
            try:
                cleaned.append(model.schema.clean(record))
            except InvalidInput as error:
                raise InvalidInput(f"row {i}: {error}") from None
        model.acquire(len(cleaned))
        try:
            scores = model.score(cleaned).tolist() if cleaned else []
        finally:
            model.release(len(cleaned))
        ids = [request_id] if len(cleaned) == 1 else \
            [f"{request_id}.{i}" for i in range(len(cleaned))]
        predictions = [self._prediction(i, model, s, route)
                       for i, s in zip(ids, scores, strict=True)]
        _predictions.add(len(predictions), model.name, model.version, route)
        count_work(len(predictions), key=f"{model.name}:{model.version}")
        for prediction, record in zip(predictions, cleaned, strict=True):
            self._log(call, model, prediction, record)
        if shadow is not None and cleaned:
            asyncio.get_running_loop().call_soon(self._score_shadow, shadow, cleaned,
                                                 predictions)
        return Rows(model, route, cleaned, predictions)

    def _log(self, call: Call | None, model: LoadedModel, prediction: Prediction,
             record: dict[str, Scalar]) -> None:
        sink = self.sink
        if sink is not None and call is not None and sink.wanted():
            sink.record(call, prediction, model.schema.loggable(record))

    def _score_shadow(self, shadow: LoadedModel, records: list[dict[str, Scalar]],
                      answered: list[Prediction]) -> None:
        if not records:
            return
        try:
            scores = shadow.score(records).tolist()
        except Exception:
            log.exception("shadow %s v%d failed to score", shadow.name, shadow.version)
            return
        _shadow.add(len(records), {"model": shadow.name, "version": shadow.version})
        for prediction, score in zip(answered, scores, strict=True):
            shadow_log.info(
                "shadow model=%s request_id=%s live=v%d:%.6f candidate=v%d:%.6f",
                shadow.name, prediction.request_id, prediction.version, prediction.score,
                shadow.version, score,
            )
