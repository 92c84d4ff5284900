"""The `lepton.serving.v1.PredictionService` handlers: protobuf <-> Predictor, spans that
continue the caller's W3C context from gRPC metadata, deadlines, and one clear status code
per failure (INVALID_ARGUMENT, NOT_FOUND, UNAVAILABLE, FAILED_PRECONDITION, ...)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from services.serving.control import RolloutControl
from services.serving.errors import InvalidInput, ServingError
from services.serving.explain import Explanation, explain_predictions
from services.serving.fleet import Action, Fleet
from services.serving.gen import serving_pb2 as pb
from services.serving.gen import serving_pb2_grpc
from services.serving.predictor import Call, Prediction, Predictor, Request
from services.serving.router import Mode, ModelHost, Route
from shared.events import Scalar
from shared.record_trace import server_span
from shared.tracing import get_tracer, traceparent

SERVICE = "lepton.serving.v1.PredictionService"
_tracer = get_tracer(__name__)
_ROUTES = {Route.LIVE: pb.ROUTE_LIVE, Route.CANARY: pb.ROUTE_CANARY,
           Route.PINNED: pb.ROUTE_PINNED}
_MODES = {None: pb.CANDIDATE_MODE_UNSPECIFIED, Mode.CANARY: pb.CANDIDATE_MODE_CANARY,
          Mode.SHADOW: pb.CANDIDATE_MODE_SHADOW}
_ACTIONS = {pb.ROLLOUT_ACTION_PROMOTE: Action.PROMOTE, pb.ROLLOUT_ACTION_CANARY: Action.CANARY,
            pb.ROLLOUT_ACTION_SHADOW: Action.SHADOW, pb.ROLLOUT_ACTION_ROLLBACK: Action.ROLLBACK,
            pb.ROLLOUT_ACTION_CLEAR: Action.CLEAR}
_TRACE_KEYS = ("traceparent", "tracestate", "baggage")
_LEAN_ATTRIBUTES = {m: {"rpc.system": "grpc", "rpc.service": SERVICE, "rpc.method": m}
                    for m in ("Predict", "PredictBatch")}


def _record(features: Any) -> dict[str, Scalar]:
    record: dict[str, Scalar] = {}
    for name, value in features.items():
        kind = value.WhichOneof("kind")
        if kind == "number_value":
            record[name] = value.number_value
        elif kind == "string_value":
            record[name] = value.string_value
        elif kind == "bool_value":
            record[name] = value.bool_value
        elif kind == "null_value" or kind is None:
            record[name] = None
        else:
            raise InvalidInput(f"field {name[:100]!r} must be a string, number, boolean or null")
    return record


def to_request(message: Any, call: Call | None = None) -> Request:
    """A Predictor Request from a `PredictRequest` message."""
    return Request(message.request_id, message.model, message.version, _record(message.features),
                   call)


def to_response(prediction: Prediction, explanation: Explanation | None = None) -> Any:
    """A `PredictResponse` message from a Prediction (and its explanation)."""
    response = pb.PredictResponse(
        request_id=prediction.request_id, model=prediction.model, version=prediction.version,
        score=prediction.score, label=prediction.label, route=_ROUTES[prediction.route],
    )
    if explanation is not None:
        response.explanation.CopyFrom(pb.Explanation(
            method=explanation.method, baseline=explanation.baseline, logit=explanation.logit,
            baseline_logit=explanation.baseline_logit, attributions=explanation.attributions,
            version=explanation.version))
    return response


def trace_carrier(context: grpc.aio.ServicerContext[Any, Any]) -> dict[str, str]:
    """The call's W3C trace headers (traceparent, tracestate, baggage) from its metadata."""
    return {k: v for k, v in context.invocation_metadata() or ()
            if k in _TRACE_KEYS and isinstance(v, str)}


def trace_parent(context: grpc.aio.ServicerContext[Any, Any]) -> otel_context.Context | None:
    """The OTel context the call's W3C headers carry, or None when they carry none."""
    carrier = trace_carrier(context)
    return propagate.extract(carrier) if carrier else None


@contextlib.contextmanager
def _span(method: str, context: grpc.aio.ServicerContext[Any, Any]) -> Iterator[Span]:
    attributes = {"rpc.system": "grpc", "rpc.service": SERVICE, "rpc.method": method}
    with _tracer.start_as_current_span(f"{SERVICE}/{method}", context=trace_parent(context),
                                       kind=SpanKind.SERVER, attributes=attributes,
                                       record_exception=False,
                                       set_status_on_exception=False) as span:
        yield span


@contextlib.contextmanager
def _lean_span(method: str, context: grpc.aio.ServicerContext[Any, Any]) -> Iterator[Span]:
    """A server span that is not made current and costs no SDK objects when the sampler drops
    it (for the hot predict methods)."""
    span = server_span(_tracer, f"{SERVICE}/{method}", trace_carrier(context),
                       _LEAN_ATTRIBUTES[method])
    try:
        yield span
    finally:
        span.end()


def _link_model(span: Span, prediction: Prediction) -> None:
    """Link a predict span to the swap that loaded the model version which answered."""
    if prediction.origin is not None:
        span.add_link(prediction.origin, {"lepton.link": "model.swap"})


async def _fail(context: grpc.aio.ServicerContext[Any, Any], span: Span, status: grpc.StatusCode,
                message: str) -> None:
    span.set_status(Status(StatusCode.ERROR, message))
    span.set_attribute("rpc.grpc.status_code", status.value[0])
    await context.abort(status, message)


async def _check_deadline(context: grpc.aio.ServicerContext[Any, Any], span: Span) -> None:
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        await _fail(context, span, grpc.StatusCode.DEADLINE_EXCEEDED,
                    "deadline passed before the request was scored")


def _status(host: ModelHost) -> Any:
    state = host.rollout
    return pb.ModelStatus(
        model=host.name,
        live_version=state.live.version if state else 0,
        previous_version=(state.rollback_target() or 0) if state else 0,
        candidate_version=state.candidate.version if state and state.candidate else 0,
        candidate_mode=_MODES[state.mode if state else None],
        canary_share=state.share if state else 0.0,
        loaded_versions=sorted(m.version for m in host.loaded()),
    )


class PredictionService(serving_pb2_grpc.PredictionServiceServicer):
    """gRPC servicer for lepton.serving.v1.PredictionService."""

    def __init__(self, predictor: Predictor, fleet: Fleet, control: RolloutControl,
                 max_batch_items: int) -> None:
        self.predictor = predictor
        self.fleet = fleet
        self.control = control
        self.max_batch_items = max_batch_items

    async def Predict(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        """Score one record."""
        with _lean_span("Predict", context) as span:
            try:
                call = Call.now("grpc", traceparent(span.get_span_context()))
                await _check_deadline(context, span)
                scoring = to_request(request, call)
                prediction = await self.predictor.predict(scoring)
                reasons = await asyncio.to_thread(explain_predictions, self.fleet,
                                                  [scoring.record], [prediction]) \
                    if request.explain else [None]
            except ServingError as error:
                await _fail(context, span, error.status, str(error))
            span.set_attributes({"lepton.model": prediction.model,
                                 "lepton.model.version": prediction.version})
            _link_model(span, prediction)
            return to_response(prediction, reasons[0])

    async def PredictBatch(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        """Score many records; any bad item fails the call naming its index."""
        with _lean_span("PredictBatch", context) as span:
            items = request.requests
            span.set_attribute("lepton.batch.size", len(items))
            try:
                if len(items) > self.max_batch_items:
                    raise InvalidInput(f"batch has {len(items)} requests, over the limit of "
                                       f"{self.max_batch_items}")
                call = Call.now("grpc", traceparent(span.get_span_context()))
                await _check_deadline(context, span)
                requests = []
                for i, item in enumerate(items):
                    try:
                        requests.append(to_request(item, call))
                    except InvalidInput as error:
                        raise InvalidInput(f"requests[{i}]: {error}") from None
                results = await self.predictor.predict_batch(requests)
                for i, result in enumerate(results):
                    if isinstance(result, ServingError):
                        raise type(result)(f"requests[{i}]: {result}")
                scored = [r for r in results if isinstance(r, Prediction)]
                asked = [i for i, item in enumerate(items) if item.explain]
                reasons: dict[int, Explanation] = dict(zip(asked, await asyncio.to_thread(
                    explain_predictions, self.fleet, [requests[i].record for i in asked],
                    [scored[i] for i in asked]), strict=True)) if asked else {}
            except ServingError as error:
                await _fail(context, span, error.status, str(error))
            answered = {r.version: r for r in scored}
            span.set_attribute("lepton.model.versions", sorted(answered))
            for prediction in answered.values():
                _link_model(span, prediction)
            return pb.PredictBatchResponse(
                responses=[to_response(r, reasons.get(i)) for i, r in enumerate(scored)])

    async def PredictStream(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        """Score a stream of records, pipelined, answering in request order."""
        with _span("PredictStream", context) as span:
            pending: asyncio.Queue[asyncio.Future[Prediction] | None] = asyncio.Queue(256)
            trace = traceparent(span.get_span_context())

            async def read() -> None:
                try:
                    async for message in requests:
                        try:
                            request = to_request(message, Call.now("grpc", trace))
                        except InvalidInput as error:
                            failed: asyncio.Future[Prediction] = \
                                asyncio.get_running_loop().create_future()
                            failed.set_exception(error)
                            await pending.put(failed)
                            continue
                        await pending.put(asyncio.ensure_future(self.predictor.predict(request)))
                finally:
                    await pending.put(None)

            reader = asyncio.create_task(read())
            count = 0
            try:
                while (future := await pending.get()) is not None:
                    try:
                        prediction = await future
                    except ServingError as error:
                        await _fail(context, span, error.status,
                                    f"stream item {count}: {error}")
                    count += 1
                    yield to_response(prediction)
            finally:
                reader.cancel()
                while not pending.empty():
                    leftover = pending.get_nowait()
                    if leftover is not None:
                        leftover.cancel()
                span.set_attribute("lepton.stream.count", count)

    async def GetModelMetadata(self, request: Any,
                               context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        """The signed model card of a hosted version (0: the live one)."""
        with _span("GetModelMetadata", context) as span:
            try:
                host = self.fleet.host(request.model)
                if request.version:
                    model = await asyncio.to_thread(self.fleet.load_pinned, host.name,
                                                    request.version)
                else:
                    model, _, _ = host.choose("", None)
            except ServingError as error:
                await _fail(context, span, error.status, str(error))
            card = model.card
            return pb.ModelMetadata(
                model=card.model, version=card.version, dataset=card.dataset,
                spec_hash=card.spec_hash,
                feature_names=[f.name for f in model.schema.spec.features],
                feature_dim=int(model.transform.dim),
                metrics={k: float(v) for k, v in card.metrics.items()},
                epsilon=float(card.epsilon or 0.0), sha256=card.sha256, key_id=card.key_id,
                created_at=str(card.created_at), card_json=card.model_dump_json(),
                variant=model.variant,
            )

    async def ListModels(self, request: Any,
                         context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        """Every hosted model's rollout."""
        with _span("ListModels", context):
            hosts = sorted(self.fleet.hosts.values(), key=lambda h: h.name)
            return pb.ListModelsResponse(models=[_status(h) for h in hosts])

    async def SetRollout(self, request: Any,
                         context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        """Promote, canary, shadow, roll back or clear; announced to every replica."""
        with _span("SetRollout", context) as span:
            try:
                action = _ACTIONS.get(request.action)
                if action is None:
                    raise InvalidInput("action must be PROMOTE, CANARY, SHADOW, ROLLBACK or CLEAR")
                if not 0.0 <= request.share <= 1.0:
                    raise InvalidInput("share must be between 0 and 1")
                host = self.fleet.host(request.model)
                await asyncio.to_thread(self.control.change, action, host.name,
                                        request.version or None, request.share or None)
            except ServingError as error:
                await _fail(context, span, error.status, str(error))
            return _status(host)
