"""The trace of one consumed record in a batch stage (its `"process {topic}"` span when that
span would be recorded, and the W3C headers its outputs carry) and of one served request (its
SERVER span), without SDK span objects when it would not be recorded (the issue's "tracing
that costs nothing when not sampled"):

- an unsampled parent under a sampler that follows its parent: its context is passed on;
- no parent, under a sampler whose root decision depends on the trace id alone (the SDK's
  TraceIdRatioBased, AlwaysOn/Off, parent-based or not) and the ids of `setup_telemetry`
  (`PrimedIds`): the decision is made first with a fresh trace id, and only a sampled root asks
  the SDK for a span, with that very trace id; an unsampled one gets a fresh span id;
- anything else: the SDK's span.

The span is started, not made current (nothing runs inside it); the caller ends it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    TraceFlags,
    TraceState,
)

from shared.events import HeaderList
from shared.tracing import (
    PrimedIds,
    extract_context,
    inject_headers,
    messaging_attributes,
    parent_decides,
    span_name,
    unsampled_parent,
)

Headers = Sequence[tuple[str, bytes | str | None]]
_W3C_HEADERS = ("traceparent", "tracestate")
# what `context_headers` writes for an unsampled parent: version 00, non-zero ids, flags even
_UNSAMPLED = re.compile(rb"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f][02468ace]")
_BY_TRACE_ID = ("TraceIdRatioBased", "AlwaysOnSampler", "AlwaysOffSampler")
_W3C_ONLY = os.environ.get("OTEL_PROPAGATORS", "tracecontext,baggage").replace(" ", "") in (
    "tracecontext,baggage", "tracecontext", "baggage,tracecontext")
_ROOT_DECIDES: dict[int, bool] = {}


def record_trace(tracer: trace.Tracer, topic: str, headers: Headers, *,
                 partition: int | None = None, offset: int | None = None,
                 group: str | None = None, attributes: dict[str, Any] | None = None,
                 start_time: int | None = None) -> tuple[Span | None, HeaderList]:
    """(the record's recording process span or None, the trace headers for its outputs)."""
    name = span_name("process", topic)
    context = [(key, value) for key, value in headers if key in _W3C_HEADERS]
    has_parent = any(key == "traceparent" for key, _ in context)
    if has_parent:
        # the common case, a lone canonical unsampled traceparent, is passed on as it is
        value = context[0][1]
        if len(context) == 1 and isinstance(value, bytes) and _W3C_ONLY \
                and _UNSAMPLED.fullmatch(value) and parent_decides(tracer):
            return None, [("traceparent", value)]
        parent = unsampled_parent(tracer, headers)
        if parent is not None:
            return None, context_headers(parent)
    else:
        unsampled = _unsampled_root(tracer, name)
        if unsampled is not None:
            return None, unsampled
    attrs = messaging_attributes(topic, "process", **{
        "messaging.destination.partition.id": None if partition is None else str(partition),
        "messaging.kafka.offset": offset, "messaging.consumer.group.name": group})
    attrs.update(attributes or {})
    span = tracer.start_span(name, context=extract_context(headers) if has_parent else Context(),
                             kind=SpanKind.CONSUMER, attributes=attrs, start_time=start_time)
    out = context_headers(span.get_span_context(), span)
    return (span if span.is_recording() else None), out


def _unsampled_root(tracer: trace.Tracer, name: str) -> HeaderList | None:
    """The headers of a root span the sampler drops, decided without the SDK; None when the
    SDK must start the span (it then gets the trace id the decision was made with)."""
    dropped = _dropped_root(tracer, name, SpanKind.CONSUMER)
    if dropped is None:
        return None
    trace_id, span_id, flags, state = dropped
    if not _W3C_ONLY or state:
        return context_headers(SpanContext(trace_id, span_id, is_remote=False,
                                           trace_flags=TraceFlags(flags), trace_state=state))
    return [("traceparent", f"00-{trace_id:032x}-{span_id:016x}-{flags:02x}".encode())]


def _dropped_root(tracer: trace.Tracer, name: str,
                  kind: SpanKind) -> tuple[int, int, int, TraceState | None] | None:
    """(trace id, span id, flags, trace state) of a root span the sampler drops, decided
    without the SDK; None when the SDK must decide or start the span (a sampled root: the id
    generator is primed with the trace id the decision was made with)."""
    # an SDK tracer, or a module's proxy tracer: then the global provider's ids and sampler
    source: object = tracer if hasattr(tracer, "id_generator") else trace.get_tracer_provider()
    ids, sampler = getattr(source, "id_generator", None), getattr(source, "sampler", None)
    enabled = getattr(tracer, "_is_enabled", None)  # the SDK's per-tracer switch
    if not isinstance(ids, PrimedIds) or sampler is None or (enabled and not enabled()):
        return None
    decides = _ROOT_DECIDES.get(id(sampler))
    if decides is None:
        description = sampler.get_description()
        decides = description.startswith(_BY_TRACE_ID) or description.startswith(
            tuple(f"ParentBased{{root:{root}" for root in _BY_TRACE_ID))
        _ROOT_DECIDES.clear()
        _ROOT_DECIDES[id(sampler)] = decides
    if not decides:
        return None
    trace_id = ids.generate_trace_id()
    result = sampler.should_sample(Context(), trace_id, name, kind)
    if result.decision.is_recording():
        ids.prime(trace_id)
        return None
    flags = TraceFlags.RANDOM_TRACE_ID if ids.is_trace_id_random() else TraceFlags.DEFAULT
    return trace_id, ids.generate_span_id(), flags, result.trace_state or None


def server_span(tracer: trace.Tracer, name: str, carrier: dict[str, str],
                attributes: dict[str, Any]) -> Span:
    """A started SERVER span for a request whose W3C headers are `carrier`, not made current.
    When the sampler would drop it (an unsampled parent it follows, or a root it rejects) it
    is a NonRecordingSpan built without the SDK, carrying the parent's context or a fresh
    one; the caller ends it either way."""
    if "traceparent" in carrier:
        parent = unsampled_parent(tracer, list(carrier.items()))
        if parent is not None:
            return NonRecordingSpan(parent)
        context = propagate.extract(carrier)
    else:
        dropped = _dropped_root(tracer, name, SpanKind.SERVER)
        if dropped is not None:
            trace_id, span_id, flags, state = dropped
            return NonRecordingSpan(SpanContext(trace_id, span_id, is_remote=False,
                                                trace_flags=TraceFlags(flags),
                                                trace_state=state))
        context = Context()
    return tracer.start_span(name, context=context, kind=SpanKind.SERVER, attributes=attributes,
                             record_exception=False, set_status_on_exception=False)


def context_headers(context: SpanContext, span: Span | None = None) -> HeaderList:
    """The trace headers that carry `context` to the next hop: what the W3C propagator writes
    for it (formatted directly: a fraction of `propagate.inject`'s cost), or what the
    configured propagators (OTEL_PROPAGATORS) inject."""
    if not _W3C_ONLY:
        return inject_headers([], trace.set_span_in_context(span or NonRecordingSpan(context)))
    if not context.is_valid:
        return []
    headers: HeaderList = [("traceparent", (
        f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    ).encode("ascii"))]
    if context.trace_state:
        headers.append(("tracestate", context.trace_state.to_header().encode("ascii")))
    return headers
