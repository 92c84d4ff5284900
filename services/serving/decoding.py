"""Request decoding with a clear status: a request that is not a valid protobuf message of the
method's type is answered INVALID_ARGUMENT (grpc.aio would answer UNKNOWN "Unexpected
DecodeError" and log a traceback per bad message). A server interceptor takes over the
method's request deserialiser and decodes inside the handler, where it can abort."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

GUARDED_PREFIX = ("/lepton.serving.v1.", "/inference.GRPCInferenceService/")


async def _decode(deserializer: Callable[[bytes], Any], raw: bytes,
                  context: grpc.aio.ServicerContext[Any, Any]) -> Any:
    try:
        return deserializer(raw)
    except DecodeError:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                            "the request is not a valid protobuf message of this method's type")


def _guarded(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    decode_one = handler.request_deserializer
    serialize = handler.response_serializer
    if handler.request_streaming:
        inner = handler.stream_stream or handler.stream_unary

        async def requests(raw: AsyncIterator[bytes],
                           context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            async for item in raw:
                yield await _decode(decode_one, item, context)

        if handler.response_streaming:
            async def stream_stream(raw: AsyncIterator[bytes],
                                    context: grpc.aio.ServicerContext[Any, Any]
                                    ) -> AsyncIterator[Any]:
                async for item in inner(requests(raw, context), context):
                    yield item

            return grpc.stream_stream_rpc_method_handler(
                stream_stream, request_deserializer=None, response_serializer=serialize)

        async def stream_unary(raw: AsyncIterator[bytes],
                               context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            return await inner(requests(raw, context), context)

        return grpc.stream_unary_rpc_method_handler(
            stream_unary, request_deserializer=None, response_serializer=serialize)
    if handler.response_streaming:
        inner_stream = handler.unary_stream

        async def unary_stream(raw: bytes,
                               context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            request = await _decode(decode_one, raw, context)
            async for item in inner_stream(request, context):
                yield item

        return grpc.unary_stream_rpc_method_handler(
            unary_stream, request_deserializer=None, response_serializer=serialize)
    inner_unary = handler.unary_unary

    async def unary_unary(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return await inner_unary(await _decode(decode_one, raw, context), context)

    return grpc.unary_unary_rpc_method_handler(
        unary_unary, request_deserializer=None, response_serializer=serialize)


class DecodeGuard(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Undecodable requests → INVALID_ARGUMENT, for every method with a request deserialiser."""

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """Wrap the handler so that it decodes (and may reject) its own requests."""
        handler = await continuation(details)
        if (handler is None or handler.request_deserializer is None
                or not details.method.startswith(GUARDED_PREFIX)):
            return handler
        cached = self._wrapped.get(details.method)
        if cached is not None and cached[0] is handler:  # the same handler on every call
            return cached[1]
        wrapped = _guarded(handler)
        self._wrapped[details.method] = (handler, wrapped)
        return wrapped
