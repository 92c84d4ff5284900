"""W3C trace context in Kafka headers: consumes header lists (or dicts) and span contexts,
produces injected headers, extracted contexts, `traceparent` strings, and the unsampled remote
parent a consumer may continue without building a span. Propagation errors are logged and
ignored."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanContext, TraceFlags, TraceState

from shared.events import HeaderList
from shared.tracing.sampling import parent_decides

log = logging.getLogger(__name__)


class _HeaderGetter:
    def get(self, carrier: dict[str, bytes], key: str) -> list[str] | None:
        value = carrier.get(key)
        return None if value is None else [value.decode("ascii", "replace")]

    def keys(self, carrier: dict[str, bytes]) -> list[str]:
        return list(carrier)


_GETTER = _HeaderGetter()


def inject_headers(headers: HeaderList, ctx: otel_context.Context | None = None) -> HeaderList:
    """Append W3C trace headers for `ctx` (default: current) to `headers`; returns `headers`."""
    try:
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=ctx)
        headers.extend((k, v.encode("ascii")) for k, v in carrier.items())
    except Exception:
        log.debug("trace context injection failed", exc_info=True)
    return headers


def extract_context(
    headers: Sequence[tuple[str, bytes | str | None]] | dict[str, bytes] | None,
) -> otel_context.Context:
    """The trace context carried in Kafka headers (an empty context when absent or bad)."""
    try:
        if isinstance(headers, dict):
            carrier = headers
        else:
            carrier = {
                k: (v.encode() if isinstance(v, str) else v)
                for k, v in (headers or ())
                if v is not None
            }
        return propagate.extract(carrier, getter=_GETTER)  # type: ignore[arg-type]
    except Exception:
        log.debug("trace context extraction failed", exc_info=True)
        return otel_context.Context()


def remote_parent(
    headers: Sequence[tuple[str, bytes | str | None]] | dict[str, bytes] | dict[str, str],
) -> SpanContext | None:
    """The remote parent in W3C headers, exactly as the SDK's W3C propagator reads it (the
    last `traceparent` and `tracestate` win); None when there is none, it is invalid, or it is
    a shape this reading leaves to the propagator (a tracestate over 512 characters)."""
    items = headers.items() if isinstance(headers, dict) else headers
    found: dict[str, str] = {}
    for key, value in items:
        if key in _W3C and value is not None:
            found[key] = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    text = found.get("traceparent")
    if text is None or len(text) > _MAX_LENGTH:
        return None
    match = _TRACEPARENT.fullmatch(text)
    if match is None or match["version"] == "ff" or (match["version"] == "00" and match["rest"]):
        return None
    trace_id, span_id = int(match["trace"], 16), int(match["span"], 16)
    if not trace_id or not span_id:
        return None
    state = found.get("tracestate")
    if state is not None and len(state) > _MAX_LENGTH:
        return None
    return SpanContext(trace_id, span_id, is_remote=True,
                       trace_flags=TraceFlags(int(match["flags"], 16)),
                       trace_state=None if state is None else TraceState.from_header([state]))


def unsampled_parent(
    tracer: trace.Tracer,
    headers: Sequence[tuple[str, bytes | str | None]] | dict[str, bytes] | dict[str, str] | None,
) -> SpanContext | None:
    """The remote parent in `headers` when it is valid, not sampled, and the sampler follows
    it; None when the SDK must decide."""
    if headers is None or not parent_decides(tracer):
        return None
    parent = remote_parent(headers)
    return parent if parent is not None and not parent.trace_flags.sampled else None


_W3C = ("traceparent", "tracestate")
# the W3C propagator's pattern and its traceparent limit (512 is also the tracestate length
# every SDK version reads; a longer one is left to the propagator)
_TRACEPARENT = re.compile(
    r"[ \t]*(?P<version>[0-9a-f]{2})-(?P<trace>[0-9a-f]{32})-(?P<span>[0-9a-f]{16})"
    r"-(?P<flags>[0-9a-f]{2})(?:(?P<rest>-.*)|[ \t]*)")
_MAX_LENGTH = 512


def traceparent(span_context: SpanContext | None) -> str | None:
    """The W3C `traceparent` of a span context (None when it is not valid)."""
    if span_context is None or not span_context.is_valid:
        return None
    return (f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-"
            f"{int(span_context.trace_flags):02x}")
