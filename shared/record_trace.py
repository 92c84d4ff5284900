"""The trace of one consumed record in a batch stage (its `"process {topic}"` span when that
span would be recorded, and the W3C headers its outputs carry) and of one served request (its
SERVER span), without SDK span objects when it would not be recorded (the issue's "tracing
that costs nothing when not sampled"):

- an unsampled parent under a sampler that follows its parent: its context is passed on;
- no parent, under a sampler whose root decision depends on the trace id alone (the SDK's
  TraceIdRatioBased, AlwaysOn/Off, parent-based or not) and the ids of `setup_telemetry`
  (`PrimedIds`): the decision is made first with a fresh trace id, and only a sampled root
  gets a span, with that very trace id; an unsampled one gets a fresh span id;
- anything else: a span that records.

A recorded span is a `shared.tracing.recorded.RecordedSpan` (the SDK's exported span, built
without its per-span machinery: a third of the cost) for a sampled root decided above or a
sampled remote parent, where that is exactly what the SDK would export;
otherwise the SDK's own span. The span is started, not made current (nothing runs inside
it); the caller ends it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace.sampling import Decision, TraceIdRatioBased
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
    remote_parent,
    span_name,
)
from shared.tracing.recorded import RecordedSpan
from shared.tracing.recorded import recorder as recorder_for
from shared.tracing.sampling import ASK, sampler_facts, sdk_tracer

Headers = Sequence[tuple[str, bytes | str | None]]
_W3C_HEADERS = ("traceparent", "tracestate")
# what `context_headers` writes for an unsampled parent: version 00, non-zero ids, flags even
_UNSAMPLED = re.compile(rb"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f][02468ace]")
_W3C_ONLY = os.environ.get("OTEL_PROPAGATORS", "tracecontext,baggage").replace(" ", "") in (
    "tracecontext,baggage", "tracecontext", "baggage,tracecontext")


def record_trace(tracer: trace.Tracer, topic: str, headers: Headers, *,
                 partition: int | None = None, offset: int | None = None,
                 group: str | None = None, attributes: dict[str, Any] | None = None,
                 start_time: int | None = None) -> tuple[Span | None, HeaderList]:
    """(the record's recording process span or None, the trace headers for its outputs)."""
    context = [(key, value) for key, value in headers if key in _W3C_HEADERS]
    has_parent = _has_traceparent(context)
    # the common case, a lone canonical unsampled traceparent, is passed on as it is
    if has_parent and len(context) == 1 and isinstance(value := context[0][1], bytes) \
            and _W3C_ONLY and _UNSAMPLED.fullmatch(value) and parent_decides(tracer):
        return None, [("traceparent", value)]
    name = span_name("process", topic)
    root: _Root | None = None
    sampled: SpanContext | None = None
    if has_parent:
        parent = remote_parent(context)
        if parent is not None and parent.trace_flags.sampled:
            sampled = parent
        elif parent is not None and parent_decides(tracer):
            return None, context_headers(parent)
    else:
        root = _decided_root(tracer, name, SpanKind.CONSUMER)
        if root is not None and not root.sampled:
            return None, _unsampled_headers(root)
    attrs = messaging_attributes(topic, "process", **{
        "messaging.destination.partition.id": None if partition is None else str(partition),
        "messaging.kafka.offset": offset, "messaging.consumer.group.name": group})
    attrs.update(attributes or {})
    recorded = _recorded(tracer, name, SpanKind.CONSUMER, sampled, root, attrs, start_time)
    if recorded is not None:
        return recorded, context_headers(recorded.get_span_context())
    span = tracer.start_span(name, context=extract_context(headers) if has_parent else Context(),
                             kind=SpanKind.CONSUMER, attributes=attrs, start_time=start_time)
    out = context_headers(span.get_span_context(), span)
    return (span if span.is_recording() else None), out


def _has_traceparent(context: list[tuple[str, Any]]) -> bool:
    # a loop: `any()` over a generator costs ≈ 0.5 µs more per record here
    for key, _ in context:  # noqa: SIM110
        if key == "traceparent":
            return True
    return False


class _Root(NamedTuple):
    """A root span's sampling, decided without the SDK."""

    ids: PrimedIds
    trace_id: int
    sampled: bool
    trace_state: TraceState | None
    # RECORD_AND_SAMPLE with no attributes of the sampler's own: a recorded span is exact
    exact: bool


def _decided_root(tracer: trace.Tracer, name: str, kind: SpanKind) -> _Root | None:
    """The sampler's decision for a root span of a fresh trace id, made without the SDK; None
    when only the SDK can make it (then nothing was decided)."""
    real = sdk_tracer(tracer)
    if real is None or not isinstance(real.id_generator, PrimedIds):
        return None
    enabled = getattr(real, "_is_enabled", None)  # the SDK's per-tracer switch
    if enabled is not None and not enabled():
        return None
    ids, sampler = real.id_generator, real.sampler
    rule = sampler_facts(sampler).root_rule
    if rule is None:
        return None
    trace_id = ids.generate_trace_id()
    if rule != ASK:
        sampled = trace_id & TraceIdRatioBased.TRACE_ID_LIMIT < rule
        return _Root(ids, trace_id, sampled, None, sampled)
    result = sampler.should_sample(Context(), trace_id, name, kind)
    return _Root(ids, trace_id, result.decision is not Decision.DROP, result.trace_state or None,
                 result.decision is Decision.RECORD_AND_SAMPLE and not result.attributes)


def _dropped_flags(ids: PrimedIds) -> int:
    """The trace flags the SDK gives a root span its sampler dropped."""
    return TraceFlags.RANDOM_TRACE_ID if ids.is_trace_id_random() else TraceFlags.DEFAULT


def _root_context(root: _Root) -> SpanContext:
    """The context of a root span the sampler dropped, with a fresh span id."""
    return SpanContext(root.trace_id, root.ids.generate_span_id(), is_remote=False,
                       trace_flags=TraceFlags(_dropped_flags(root.ids)),
                       trace_state=root.trace_state)


def _unsampled_headers(root: _Root) -> HeaderList:
    """The trace headers of a root span the sampler dropped."""
    if not _W3C_ONLY or root.trace_state:
        return context_headers(_root_context(root))
    return [("traceparent", b"00-%032x-%016x-%02x" % (
        root.trace_id, root.ids.generate_span_id(), _dropped_flags(root.ids)))]


def _recorded(tracer: trace.Tracer, name: str, kind: SpanKind, parent: SpanContext | None,
              root: _Root | None, attributes: dict[str, Any],
              start_time: int | None) -> RecordedSpan | None:
    """The sampled span as a `RecordedSpan` (shared.tracing.recorded) where that is exactly
    the SDK's span: a sampled root decided above, or a child of a sampled remote `parent`
    (`remote_parent`) under a sampler that follows it. Otherwise None, and a root's decided
    trace id becomes the SDK's next one."""
    recorder = recorder_for(tracer) if _W3C_ONLY else None
    if root is not None:
        if recorder is not None and root.exact:
            return recorder.root(name, root.trace_id, root.trace_state, kind, attributes,
                                 start_time)
        root.ids.prime(root.trace_id)
        return None
    if recorder is None or parent is None or not recorder.follows_sampled_parent:
        return None
    return recorder.child(name, parent, kind, attributes, start_time)


def server_span(tracer: trace.Tracer, name: str, carrier: dict[str, str],
                attributes: dict[str, Any]) -> Span:
    """A started SERVER span for a request whose W3C headers are `carrier`, not made current.
    When the sampler would drop it (an unsampled parent it follows, or a root it rejects) it
    is a NonRecordingSpan built without the SDK, carrying the parent's context or a fresh
    one; when it records, a `RecordedSpan` where that is exactly the SDK's span. The caller
    ends it either way."""
    root: _Root | None = None
    sampled: SpanContext | None = None
    if "traceparent" in carrier:
        parent = remote_parent(carrier)
        if parent is not None and parent.trace_flags.sampled:
            sampled = parent
        elif parent is not None and parent_decides(tracer):
            return NonRecordingSpan(parent)
    else:
        root = _decided_root(tracer, name, SpanKind.SERVER)
        if root is not None and not root.sampled:
            return NonRecordingSpan(_root_context(root))
    recorded = _recorded(tracer, name, SpanKind.SERVER, sampled, root, attributes, None)
    if recorded is not None:
        return recorded
    return tracer.start_span(
        name, context=propagate.extract(carrier) if "traceparent" in carrier else Context(),
        kind=SpanKind.SERVER, attributes=attributes, record_exception=False,
        set_status_on_exception=False)


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
