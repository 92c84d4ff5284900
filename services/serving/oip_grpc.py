"""`inference.GRPCInferenceService` (Open Inference Protocol v2) on the serving gRPC server,
beside the lepton API: same interceptors (auth, decode guard), limits, TLS, spans that continue
the caller's W3C context, metrics and Predictor. ModelInfer takes columnar tensors (typed
contents or raw bytes) and answers raw little-endian outputs `score` (FP64), `label` (BOOL)
and, with the `explain` parameter, `attributions` (FP64 [N, fields]); response parameters name
the version and route. Unknown model -> NOT_FOUND, bad tensor or shape -> INVALID_ARGUMENT."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from services.serving import oip
from services.serving.errors import InvalidInput, ModelNotFound, ServingError
from services.serving.fleet import Fleet
from services.serving.gen import grpc_service_pb2 as pb
from services.serving.gen import grpc_service_pb2_grpc
from services.serving.grpc_api import trace_carrier, trace_parent
from services.serving.predictor import Call, Predictor
from shared.record_trace import server_span
from shared.tracing import get_tracer, traceparent

SERVICE = "inference.GRPCInferenceService"
_tracer = get_tracer(__name__)
_INFER_SPAN = f"{SERVICE}/ModelInfer"
_INFER_ATTRIBUTES = {"rpc.system": "grpc", "rpc.service": SERVICE, "rpc.method": "ModelInfer"}
_CONTENTS = {"FP64": "fp64_contents", "FP32": "fp32_contents", "INT64": "int64_contents",
             "INT32": "int_contents", "INT16": "int_contents", "INT8": "int_contents",
             "UINT64": "uint64_contents", "UINT32": "uint_contents", "UINT16": "uint_contents",
             "UINT8": "uint_contents", "BOOL": "bool_contents", "BYTES": "bytes_contents"}


@contextlib.contextmanager
def _span(method: str, context: grpc.aio.ServicerContext[Any, Any]) -> Iterator[Span]:
    span = _tracer.start_span(f"{SERVICE}/{method}", context=trace_parent(context),
                              kind=SpanKind.SERVER,
                              attributes={"rpc.system": "grpc", "rpc.service": SERVICE,
                                          "rpc.method": method},
                              record_exception=False, set_status_on_exception=False)
    try:
        yield span
    finally:
        span.end()


async def _fail(context: grpc.aio.ServicerContext[Any, Any], span: Span,
                error: ServingError) -> None:
    span.set_status(Status(StatusCode.ERROR, str(error)))
    span.set_attribute("rpc.grpc.status_code", error.status.value[0])
    await context.abort(error.status, str(error))


def _param(value: Any) -> Any:
    kind = value.WhichOneof("parameter_choice")
    return getattr(value, kind) if kind else None


def _to_param(value: Any) -> Any:
    if isinstance(value, bool):
        return pb.InferParameter(bool_param=value)
    if isinstance(value, int):
        return pb.InferParameter(int64_param=value)
    if isinstance(value, float):
        return pb.InferParameter(double_param=value)
    return pb.InferParameter(string_param=str(value))


def _raw_tensor(item: Any, data: bytes) -> oip.Tensor:
    name, datatype = item.name, item.datatype  # each read of a field makes a new str
    return oip.Tensor(name, datatype, tuple(item.shape), oip.decode_raw(name, datatype, data))


def _tensors(request: Any) -> list[oip.Tensor]:
    raw = request.raw_input_contents
    inputs = request.inputs
    if raw:
        if len(raw) != len(inputs):
            raise InvalidInput(f"raw_input_contents has {len(raw)} entries for "
                               f"{len(inputs)} inputs")
        return [_raw_tensor(item, data) for item, data in zip(inputs, raw, strict=True)]
    tensors = []
    for item in inputs:
        name, datatype = item.name, item.datatype
        field = _CONTENTS.get(datatype)
        if field is None:
            raise InvalidInput(f"input {name[:100]!r}: unsupported datatype {datatype[:20]!r}")
        values = oip.typed_values(name, datatype, list(getattr(item.contents, field)))
        tensors.append(oip.Tensor(name, datatype, tuple(item.shape), values))
    return tensors


def _outputs(request: Any, answer: oip.Answer) -> list[tuple[str, str, list[int], bytes]]:
    rows = answer.rows
    n = len(rows.predictions)
    scores = [p.score for p in rows.predictions]
    labels = [p.label for p in rows.predictions]
    outputs: list[tuple[str, str, list[int], bytes]] = [
        ("score", "FP64", [n], struct.pack(f"<{n}d", *scores) if n <= 64
         else np.asarray(scores, dtype="<f8").tobytes()),
        ("label", "BOOL", [n], struct.pack(f"<{n}?", *labels) if n <= 64
         else np.asarray(labels, "?").tobytes()),
    ]
    if answer.explanations:
        matrix = np.asarray([list(e.attributions.values()) for e in answer.explanations],
                            dtype="<f8")
        outputs.append(("attributions", "FP64", list(matrix.shape), matrix.tobytes()))
    wanted = [o.name for o in request.outputs]
    known = {name for name, *_ in outputs}
    for name in wanted:
        if name not in known:
            raise InvalidInput(f"unknown output {name[:100]!r} (score, label, attributions "
                               "with the explain parameter)")
    return [o for o in outputs if not wanted or o[0] in wanted]


def _template(answer: oip.Answer, chosen: list[tuple[str, str, list[int], bytes]]) -> Any:
    """The response without id and tensor bytes: the same for every call answered by one
    version on one route with the same output shapes, so it is built once."""
    rows = answer.rows
    key = ("v2-grpc", rows.route, tuple((o[0], *o[2]) for o in chosen))
    template = rows.model.memo.get(key)
    if template is None:
        template = pb.ModelInferResponse(
            model_name=rows.model.name, model_version=str(answer.version),
            outputs=[pb.ModelInferResponse.InferOutputTensor(name=name, datatype=datatype,
                                                             shape=shape)
                     for name, datatype, shape, _ in chosen])
        for name, value in oip.Answer(rows, None).parameters().items():
            template.parameters[name].CopyFrom(_to_param(value))
        rows.model.remember(key, template)
    return template


def _response(request: Any, answer: oip.Answer) -> Any:
    chosen = _outputs(request, answer)
    response = pb.ModelInferResponse()
    if answer.explanations:  # parameters name the explanation: not cached
        response.CopyFrom(_template(answer, chosen))
        for key, value in answer.parameters().items():
            response.parameters[key].CopyFrom(_to_param(value))
        response.parameters["baseline_logit"].CopyFrom(
            _to_param(answer.explanations[0].baseline_logit))
    else:
        response.CopyFrom(_template(answer, chosen))
    response.id = request.id
    response.raw_output_contents.extend([data for *_, data in chosen])
    return response


class InferenceService(grpc_service_pb2_grpc.GRPCInferenceServiceServicer):
    """gRPC servicer for inference.GRPCInferenceService (OIP v2)."""

    def __init__(self, predictor: Predictor, fleet: Fleet) -> None:
        self.predictor = predictor
        self.fleet = fleet

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        """Always live while the process answers."""
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any,
                          context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        """Ready once a model has a live version."""
        return pb.ServerReadyResponse(ready=self.fleet.ready)

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        """Whether the model (or the given version) is loaded and can answer now."""
        with _span("ModelReady", context) as span:
            try:
                host = self.fleet.host(request.name)
                pin = oip.parse_version(request.version)
            except ModelNotFound:
                return pb.ModelReadyResponse(ready=False)
            except ServingError as error:
                await _fail(context, span, error)
            loaded = {m.version for m in host.loaded()}
            ready = host.rollout is not None and (not pin or pin in loaded)
            return pb.ModelReadyResponse(ready=ready)

    async def ServerMetadata(self, request: Any,
                             context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        """Server name, version and the protocol extensions it supports."""
        return pb.ServerMetadataResponse(name=oip.SERVER_NAME, version=oip.SERVER_VERSION,
                                         extensions=list(oip.EXTENSIONS))

    async def ModelMetadata(self, request: Any,
                            context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        """Versions, platform, one input per raw feature and the outputs."""
        with _span("ModelMetadata", context) as span:
            try:
                model = await asyncio.to_thread(oip.model_for, self.fleet, request.name,
                                                request.version)
            except ServingError as error:
                await _fail(context, span, error)
            doc = oip.metadata(self.fleet, model)
            tensor = pb.ModelMetadataResponse.TensorMetadata
            return pb.ModelMetadataResponse(
                name=doc["name"], versions=doc["versions"], platform=doc["platform"],
                inputs=[tensor(**t) for t in doc["inputs"]],
                outputs=[tensor(**t) for t in doc["outputs"]],
                parameters={k: _to_param(v) for k, v in doc["parameters"].items()})

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        """Score N rows given as columnar tensors, with one version."""
        # the hot path: a span started and ended here, not through _span's generator
        span = server_span(_tracer, _INFER_SPAN, trace_carrier(context), _INFER_ATTRIBUTES)
        try:
            call = Call.now("v2-grpc", traceparent(span.get_span_context()))
            try:
                remaining = context.time_remaining()
                if remaining is not None and remaining <= 0:
                    raise _Deadline("deadline passed before the request was scored")
                explain = oip.flag(_param(request.parameters["explain"])) \
                    if "explain" in request.parameters else False
                answer = await oip.infer(self.predictor, request.model_name,
                                         request.model_version, request.id, _tensors(request),
                                         explain_rows=explain, call=call)
                response = _response(request, answer)
            except ServingError as error:
                await _fail(context, span, error)
            span.set_attributes({"lepton.model": answer.rows.model.name,
                                 "lepton.model.version": answer.version,
                                 "lepton.batch.size": len(answer.rows.predictions)})
            origin = answer.rows.model.origin
            if origin is not None:
                span.add_link(origin, {"lepton.link": "model.swap"})
            return response
        finally:
            span.end()


class _Deadline(ServingError):
    status = grpc.StatusCode.DEADLINE_EXCEEDED
