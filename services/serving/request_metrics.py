"""`lepton.serving.request.duration`: a histogram (seconds, sub-second buckets) of every unary
gRPC call, by method and status code, recorded by a server interceptor, and of every HTTP
request (recorded by the HTTP API's middleware: method "<VERB> <route template>", the status as
the gRPC code it stands for), so the p99 and the error rate of Predict, PredictBatch, the OIP
v2 ModelInfer and their HTTP routes come from one instrument. Streaming calls are not timed (a
stream's length is the client's choice)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from opentelemetry import metrics

_duration = metrics.get_meter("lepton.serving").create_histogram(
    "lepton.serving.request.duration", unit="s",
    description="gRPC unary call and HTTP request duration, by rpc.method and "
    "rpc.grpc.status_code")
# the HTTP API's answers as the gRPC codes of the same outcome (http_api._STATUS: the other way)
_HTTP_CODES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 404: "NOT_FOUND",
               405: "UNIMPLEMENTED", 413: "RESOURCE_EXHAUSTED", 415: "INVALID_ARGUMENT",
               422: "INVALID_ARGUMENT", 503: "UNAVAILABLE"}


def record_http(method: str, route: str, status: int, seconds: float) -> None:
    """Time one HTTP request: `route` is the matched route's template, never the raw path."""
    code = "OK" if status < 400 else _HTTP_CODES.get(status, "INTERNAL" if status >= 500
                                                     else "FAILED_PRECONDITION")
    _duration.record(seconds, {"rpc.method": f"{method} {route}", "rpc.grpc.status_code": code})


def _status(context: grpc.aio.ServicerContext[Any, Any], failed: bool) -> str:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    if isinstance(code, int):
        return next((c.name for c in grpc.StatusCode if c.value[0] == code), "UNKNOWN")
    return "UNKNOWN" if failed else "OK"


def _timed(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    inner = handler.unary_unary

    async def unary_unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        started = time.perf_counter()
        failed = False
        try:
            return await inner(request, context)
        except BaseException:
            failed = True
            raise
        finally:
            _duration.record(time.perf_counter() - started, {
                "rpc.method": method, "rpc.grpc.status_code": _status(context, failed)})

    return grpc.unary_unary_rpc_method_handler(
        unary_unary, request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer)


class RequestMetrics(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Times every unary call; put it first, so auth and decode refusals are counted too."""

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """Wrap the method's handler when it is unary-unary."""
        handler = await continuation(details)
        if handler is None or handler.request_streaming or handler.response_streaming:
            return handler
        cached = self._wrapped.get(details.method)
        if cached is not None and cached[0] is handler:  # the same handler on every call
            return cached[1]
        wrapped = _timed(handler, str(details.method).rsplit("/", 1)[-1])
        self._wrapped[details.method] = (handler, wrapped)
        return wrapped
