"""Recorded spans without the SDK's per-span machinery, for the per-record and per-request
hot paths of `shared.record_trace`: consumes an SDK tracer, a sampling decision already made,
the span's name, parent and attributes; produces, when the span ends, the `ReadableSpan` the
SDK would have exported, handed to the tracer's span processors.

Through record_trace, the SDK's `start_span` and `Span` cost ≈ 30–40 µs a span (context
extraction, a second sampler call, attribute validation under a lock, per-span limits
objects); this costs ≈ 8–12 (`bench/recorded_span_bench.py`). It is used only where its
result is the SDK's own: `recorder` answers None, and callers use the SDK,
unless the tracer is an enabled SDK tracer without internal metrics whose span processors are
all the SDK's batch or simple exporting processors (their start and ending hooks do nothing).
Attributes are kept in a plain dict while every key is a non-empty string and every value a
plain scalar; otherwise, or past the span limits, they pass through the SDK's own
`BoundedAttributes` at the end, so limits, truncation and dropped counts are the SDK's.
"""

from __future__ import annotations

import logging
import os
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from time import time_ns
from typing import Any

from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import (
    Event,
    ReadableSpan,
    SpanLimits,
    SpanProcessor,
    SynchronousMultiSpanProcessor,
    Tracer,
)
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.util.instrumentation import InstrumentationInfo, InstrumentationScope
from opentelemetry.trace import (
    Link,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)
from opentelemetry.util import types

from shared.tracing.sampling import sampler_facts, sdk_tracer

log = logging.getLogger(__name__)

_EXPORTING = (BatchSpanProcessor, SimpleSpanProcessor)
_PLAIN = (str, bool, int, float)
_UNSET = Status(StatusCode.UNSET)


@dataclass(frozen=True, slots=True)
class Recorder:
    """What a recorded span takes from its SDK tracer."""

    processor: SpanProcessor
    resource: Resource
    scope: InstrumentationScope | None
    info: InstrumentationInfo | None
    limits: SpanLimits
    ids: IdGenerator
    # the sampler records and samples every child of a sampled remote parent, with the
    # parent's trace state and the span's own attributes
    follows_sampled_parent: bool

    def child(self, name: str, parent: SpanContext, kind: SpanKind,
              attributes: Mapping[str, Any], start_time: int | None = None) -> RecordedSpan:
        """A started recorded child of a sampled remote `parent`."""
        flags = TraceFlags(TraceFlags.SAMPLED | (parent.trace_flags & TraceFlags.RANDOM_TRACE_ID))
        context = SpanContext(parent.trace_id, self.ids.generate_span_id(), is_remote=False,
                              trace_flags=flags, trace_state=parent.trace_state)
        return RecordedSpan(self, name, context, parent, kind, attributes,
                            start_time if start_time is not None else time_ns())

    def root(self, name: str, trace_id: int, trace_state: TraceState | None, kind: SpanKind,
             attributes: Mapping[str, Any], start_time: int | None = None) -> RecordedSpan:
        """A started recorded root span of `trace_id`, which the sampler has sampled."""
        flags = TraceFlags(TraceFlags.SAMPLED | (
            TraceFlags.RANDOM_TRACE_ID if self.ids.is_trace_id_random() else 0))
        context = SpanContext(trace_id, self.ids.generate_span_id(), is_remote=False,
                              trace_flags=flags, trace_state=trace_state)
        return RecordedSpan(self, name, context, None, kind, attributes,
                            start_time if start_time is not None else time_ns())


# per tracer: (the tracer, its processors when checked, the answer)
_CHECKED: dict[int, tuple[object, object, Recorder | None]] = {}
_MAX_CHECKED = 64


def recorder(tracer: trace.Tracer) -> Recorder | None:
    """The recorder for `tracer` (`sdk_tracer`), or None when only the SDK's own span would be
    exactly right."""
    real = sdk_tracer(tracer)
    if type(real) is not Tracer:
        return None
    processor = real.span_processor
    members = getattr(processor, "_span_processors", None)
    checked = _CHECKED.get(id(real))
    if checked is None or checked[0] is not real or checked[1] is not members:
        answer = None
        limits = getattr(real, "_span_limits", None)
        if (type(processor) is SynchronousMultiSpanProcessor and isinstance(members, tuple)
                and all(type(member) in _EXPORTING for member in members)
                and isinstance(limits, SpanLimits) and hasattr(real, "_is_enabled")
                and os.environ.get("OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED",
                                   "").strip().lower() != "true"):
            answer = Recorder(processor, real.resource,
                              getattr(real, "_instrumentation_scope", None),
                              real.instrumentation_info, limits, real.id_generator,
                              sampler_facts(real.sampler).follows_sampled_parent)
        if len(_CHECKED) >= _MAX_CHECKED:
            _CHECKED.clear()
        checked = _CHECKED[id(real)] = (real, members, answer)
    # the SDK's per-tracer switch can change at any time
    return checked[2] if checked[2] is not None and real._is_enabled() else None


class RecordedSpan(trace.Span):
    """A recording span that becomes the SDK's `ReadableSpan` when it ends. Not thread-safe
    (one thread records it, as the stages and request handlers do); as a context manager it
    only ends, like an SDK span started with `record_exception=False` and
    `set_status_on_exception=False`."""

    __slots__ = ("_attributes", "_context", "_end", "_events", "_kind", "_links", "_name",
                 "_parent", "_plain", "_recorder", "_start", "_status")

    def __init__(self, recorder: Recorder, name: str, context: SpanContext,
                 parent: SpanContext | None, kind: SpanKind, attributes: Mapping[str, Any],
                 start_time: int) -> None:
        self._recorder = recorder
        self._name = name
        self._context = context
        self._parent = parent
        self._kind = kind
        self._attributes: dict[str, Any] = dict(attributes)
        self._plain = True
        for key, value in self._attributes.items():
            if type(value) not in _PLAIN or type(key) is not str or not key:
                self._plain = False
        self._events: list[Event] = []
        self._links: list[Link] = []
        self._status = _UNSET
        self._start = start_time
        self._end: int | None = None

    def get_span_context(self) -> SpanContext:
        """This span's context."""
        return self._context

    def is_recording(self) -> bool:
        """True until it ends."""
        return self._end is None

    def set_attribute(self, key: str, value: types.AnyValue) -> None:
        """Set one attribute (the SDK's rules apply to anything but a plain scalar)."""
        if self._ended("Setting attribute on ended span."):
            return
        attributes = self._attributes
        if key in attributes:  # the SDK moves a re-set key last (it matters for eviction)
            del attributes[key]
        attributes[key] = value
        if type(value) not in _PLAIN or type(key) is not str or not key:
            self._plain = False

    def set_attributes(self, attributes: Mapping[str, types.AnyValue]) -> None:
        """Set several attributes."""
        for key, value in attributes.items():
            self.set_attribute(key, value)

    def add_event(self, name: str, attributes: types.Attributes = None,
                  timestamp: int | None = None) -> None:
        """Add an event, its attributes bounded as the SDK bounds them."""
        if self._ended("Tried calling _add_event on an ended span."):
            return
        limits = self._recorder.limits
        self._events.append(Event(name, BoundedAttributes(
            limits.max_event_attributes, attributes,
            max_value_len=limits.max_attribute_length, immutable=True), timestamp))

    def add_link(self, context: SpanContext, attributes: types.Attributes = None) -> None:
        """Link another span's context, as the SDK does (an invalid one without attributes
        or trace state is ignored)."""
        if not (context and (context.is_valid or attributes or context.trace_state)) \
                or self._ended("Tried calling _add_link on an ended span."):
            return
        limits = self._recorder.limits
        self._links.append(Link(context, BoundedAttributes(
            limits.max_link_attributes, attributes,
            max_value_len=limits.max_attribute_length, immutable=True)))

    def update_name(self, name: str) -> None:
        """Rename the span."""
        if not self._ended("Tried calling update_name on an ended span."):
            self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        """Set the status by the SDK's rules: OK is final and UNSET is ignored."""
        if self._ended("Tried calling set_status on an ended span.") \
                or self._status.status_code is StatusCode.OK:
            return
        if isinstance(status, Status):
            if status.status_code is StatusCode.UNSET:
                return
            if description is not None:
                log.warning("Description %s ignored. Use either `Status` or "
                            "`(StatusCode, Description)`", description)
            self._status = status
        elif status is not StatusCode.UNSET:
            self._status = Status(status, description)

    def record_exception(self, exception: BaseException, attributes: types.Attributes = None,
                         timestamp: int | None = None, escaped: bool = False) -> None:
        """Record an exception as the SDK's `exception` event."""
        details: dict[str, Any] = {
            "exception.type": _type_name(exception),
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped)}
        details.update(attributes or {})
        self.add_event("exception", details, timestamp)

    def end(self, end_time: int | None = None) -> None:
        """End the span and hand its `ReadableSpan` to the tracer's span processors."""
        if self._ended("Calling end() on an ended span."):
            return
        self._end = end_time if end_time is not None else time_ns()
        recorder = self._recorder
        limits = recorder.limits
        attributes: Mapping[str, Any] = self._attributes
        if not self._plain or len(attributes) > (limits.max_span_attributes or 0) \
                or limits.max_span_attribute_length is not None:
            attributes = BoundedAttributes(limits.max_span_attributes, attributes,
                                           max_value_len=limits.max_span_attribute_length,
                                           immutable=True)
        recorder.processor.on_end(ReadableSpan(
            name=self._name, context=self._context, parent=self._parent,
            resource=recorder.resource, attributes=attributes,
            events=BoundedList.from_seq(limits.max_events, self._events) if self._events else (),
            links=BoundedList.from_seq(limits.max_links, self._links) if self._links else (),
            kind=self._kind, status=self._status, start_time=self._start,
            end_time=self._end, instrumentation_info=recorder.info,
            instrumentation_scope=recorder.scope))

    def _ended(self, warning: str) -> bool:
        if self._end is None:
            return False
        log.warning(warning)
        return True


def _type_name(exception: BaseException) -> str:
    module, name = type(exception).__module__, type(exception).__qualname__
    return f"{module}.{name}" if module and module != "builtins" else name
