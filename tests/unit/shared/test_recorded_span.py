"""Recorded spans (shared.tracing.recorded) against the SDK's own: the same calls through
record_trace and server_span, once on a provider where the recorded path applies and once on
one where it must not (a span processor that is not the SDK's exporting one), with the same
ids; the exported spans (field by field, and as OTLP encodes them) and the trace headers must
be identical."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider, _TracerConfig
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import SpanContext, Status, StatusCode, TraceFlags

from shared.record_trace import record_trace, server_span
from shared.tracing import PrimedIds
from shared.tracing.recorded import RecordedSpan, recorder

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


class _CountingIds(PrimedIds):
    """Deterministic ids, so that both providers hand out the same ones."""

    def __init__(self) -> None:
        super().__init__()
        self._ids = itertools.count(0x1000)

    def generate_span_id(self) -> int:
        return next(self._ids)

    def generate_trace_id(self) -> int:
        primed = getattr(self._next, "trace_id", None)
        self._next.trace_id = None
        return primed if primed is not None else next(self._ids) << 64 | 7


class _Hooked(SimpleSpanProcessor):
    """An exporting processor the recorded path must not assume (a subclass may hook start)."""


def _provider(sampler: Sampler, recorded: bool, limits: SpanLimits | None = None
              ) -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler, id_generator=_CountingIds(), span_limits=limits)
    provider.add_span_processor((SimpleSpanProcessor if recorded else _Hooked)(exporter))
    return provider, exporter


def _fields(span: ReadableSpan) -> dict[str, Any]:
    """Everything an exporter reads, but the clock."""
    def context(ctx: SpanContext | None) -> tuple[Any, ...] | None:
        return None if ctx is None else (ctx.trace_id, ctx.span_id, ctx.is_remote,
                                         int(ctx.trace_flags), ctx.trace_state.to_header())
    assert span.start_time is not None and span.end_time is not None
    assert span.start_time <= span.end_time
    return {
        "name": span.name, "context": context(span.context), "parent": context(span.parent),
        "kind": span.kind, "attributes": dict(span.attributes or {}),
        "dropped": (span.dropped_attributes, span.dropped_events, span.dropped_links),
        "events": [(e.name, dict(e.attributes or {})) for e in span.events],
        "links": [(context(link.context), dict(link.attributes or {})) for link in span.links],
        "status": (span.status.status_code, span.status.description),
        "resource": dict(span.resource.attributes), "scope": span.instrumentation_scope,
        "info": span.instrumentation_info,
    }


Scenario = Callable[[trace.Tracer], Iterator[object]]
_KINDS: list[bool] = []


def _seen(span: object) -> None:
    """Note whether a scenario's span took the recorded path."""
    _KINDS.append(isinstance(span, RecordedSpan))


def _otlp(spans: Sequence[ReadableSpan]) -> bytes:
    """The spans as the OTLP exporters send them, clock fields zeroed."""
    request = encode_spans(spans)
    for resource in request.resource_spans:
        for scope in resource.scope_spans:
            for span in scope.spans:
                span.start_time_unix_nano = span.end_time_unix_nano = 0
                for event in span.events:
                    event.time_unix_nano = 0
    return bytes(request.SerializeToString(deterministic=True))


def _both(scenario: Scenario, sampler: Sampler, limits: SpanLimits | None = None,
          recorded_path: bool = True) -> list[dict[str, Any]]:
    """Run `scenario` on both providers; assert equal spans (and OTLP encodings) and headers;
    the spans. `recorded_path`: whether the first provider's spans take the recorded path."""
    runs = []
    for recorded in (True, False):
        provider, exporter = _provider(sampler, recorded, limits)
        tracer = provider.get_tracer("lepton.test", "1.0")
        assert (recorder(tracer) is not None) is recorded
        _KINDS.clear()
        outputs = list(scenario(tracer))
        assert _KINDS and set(_KINDS) == {recorded and recorded_path}
        spans = exporter.get_finished_spans()
        runs.append((outputs, [_fields(s) for s in spans], _otlp(spans)))
    assert runs[0] == runs[1]
    assert runs[0][1], "the scenario recorded nothing"
    return runs[0][1]


PARENT_BASED = [ParentBased(ALWAYS_ON), ParentBased(TraceIdRatioBased(0.25)), ALWAYS_ON]


@pytest.mark.parametrize("sampler", PARENT_BASED, ids=lambda s: s.get_description()[:30])
@pytest.mark.parametrize("headers", [
    [("traceparent", f"00-{TRACE}-{PARENT}-01".encode())],
    [("traceparent", f"00-{TRACE}-{PARENT}-03".encode()), ("tracestate", b"a=1,b=2")],
    [("tracestate", "x=y"), ("traceparent", f"00-{TRACE}-{PARENT}-01")],
], ids=["lone", "random-id-and-state", "str-state-first"])
def test_a_process_span_under_a_sampled_parent_is_the_sdks(
        sampler: Sampler, headers: list[tuple[str, bytes | str]]) -> None:
    def scenario(tracer: trace.Tracer) -> Iterator[object]:
        for offset in range(3):
            span, out = record_trace(tracer, "raw", [("x", b"1"), *headers], partition=2,
                                     offset=offset, group="g", start_time=1_000 + offset,
                                     attributes={"lepton.dataset": "d", "lepton.event_id": "e"})
            _seen(span)
            assert span is not None
            yield out
            span.set_attribute("lepton.outcome", "clean")
            span.set_attribute("messaging.kafka.offset", 99)  # re-set: moves last
            if offset == 1:
                span.set_status(Status(StatusCode.ERROR, "boom"))
            span.end()
    spans = _both(scenario, sampler)
    assert spans[0]["parent"][:2] == (int(TRACE, 16), int(PARENT, 16))
    assert list(spans[0]["attributes"])[-1] == "messaging.kafka.offset"


@pytest.mark.parametrize("sampler", [TraceIdRatioBased(1.0), ParentBased(ALWAYS_ON), ALWAYS_ON],
                         ids=lambda s: s.get_description()[:30])
def test_a_sampled_root_is_the_sdks(sampler: Sampler) -> None:
    def scenario(tracer: trace.Tracer) -> Iterator[object]:
        span, out = record_trace(tracer, "raw", [], offset=1, start_time=5)
        _seen(span)
        assert span is not None
        yield out
        span.end()
        served = server_span(tracer, "POST /v2/models/{name}/infer", {}, {"rpc.system": "x"})
        _seen(served)
        yield served.get_span_context()
        served.end()
    assert len(_both(scenario, sampler)) == 2


def test_a_server_span_with_everything_a_handler_does_is_the_sdks() -> None:
    linked = SpanContext(int(TRACE, 16), 0xABC, is_remote=False,
                         trace_flags=TraceFlags(1))

    def scenario(tracer: trace.Tracer) -> Iterator[object]:
        carrier = {"traceparent": f"00-{TRACE}-{PARENT}-01", "tracestate": "k=v",
                   "authorization": "Bearer x"}
        span = server_span(tracer, "ModelInfer", carrier, {"rpc.system": "grpc"})
        _seen(span)
        yield span.get_span_context()
        span.set_attributes({"lepton.model": "m", "lepton.model.versions": [3, 1],
                             "bad": None, "": "empty key", "flag": True, "f": 0.5})
        span.add_link(linked, {"lepton.link": "model.swap"})
        span.add_link(SpanContext(0, 0, is_remote=False))  # invalid and bare: ignored
        span.add_event("tick", {"n": 1}, timestamp=7)
        try:
            raise KeyError("missing")
        except KeyError as error:
            span.record_exception(error, {"extra": "x"}, timestamp=8)
        span.update_name("ModelInfer!")
        span.set_status(Status(StatusCode.OK))
        span.set_status(Status(StatusCode.ERROR, "ignored after OK"))
        span.end()
        span.set_attribute("late", 1)  # ignored: ended
        span.set_status(Status(StatusCode.ERROR, "late"))
        span.add_event("late")
        span.update_name("late")
        span.end()
    spans = _both(scenario, ParentBased(TraceIdRatioBased(0.5)))
    (span,) = spans
    assert span["attributes"]["lepton.model.versions"] == (3, 1)
    assert "" not in span["attributes"] and "late" not in span["attributes"]
    assert span["status"] == (StatusCode.OK, None)
    assert [name for name, _ in span["events"]] == ["tick", "exception"]


def test_span_limits_are_the_sdks() -> None:
    limits = SpanLimits(max_span_attributes=4, max_span_attribute_length=3,
                        max_events=1, max_links=1)

    def scenario(tracer: trace.Tracer) -> Iterator[object]:
        span, _ = record_trace(tracer, "raw", [("traceparent", f"00-{TRACE}-{PARENT}-01")],
                               offset=1, group="group", start_time=1)
        _seen(span)
        assert span is not None
        for n in range(3):
            span.add_event(f"e{n}")
            span.add_link(SpanContext(int(TRACE, 16), 0x10 + n, is_remote=True))
        span.end()
        yield "done"
    (span,) = _both(scenario, ParentBased(ALWAYS_ON), limits)
    # six messaging attributes or more (server.address/port once a bootstrap was noted)
    assert len(span["attributes"]) == 4 and span["dropped"][0] >= 2
    assert span["dropped"][1:] == (2, 2)
    assert all(len(v) <= 3 for v in span["attributes"].values() if isinstance(v, str))


def test_the_recorded_path_applies_only_where_it_is_exact(
        monkeypatch: pytest.MonkeyPatch) -> None:
    provider, _ = _provider(ParentBased(ALWAYS_ON), recorded=True)
    tracer = provider.get_tracer("t")
    assert recorder(tracer) is not None
    provider.add_span_processor(_Hooked(InMemorySpanExporter()))  # a hook appears later
    assert recorder(tracer) is None
    provider, _ = _provider(ALWAYS_ON, recorded=True)
    tracer = provider.get_tracer("t")
    assert recorder(tracer) is not None
    tracer._set_tracer_config(_TracerConfig(is_enabled=False))  # type: ignore[attr-defined]
    assert recorder(tracer) is None  # a tracer switched off later
    span, out = record_trace(tracer, "raw", [], offset=1)
    assert span is None and not out
    monkeypatch.setenv("OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED", "true")
    assert recorder(_provider(ALWAYS_ON, recorded=True)[0].get_tracer("t")) is None
    monkeypatch.delenv("OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED")
    assert recorder(trace.NoOpTracer()) is None
    # a sampler that does not follow a sampled parent: the SDK decides
    custom = ParentBased(ALWAYS_ON, remote_parent_sampled=TraceIdRatioBased(0.5))
    provider, _ = _provider(custom, recorded=True)
    picked = recorder(provider.get_tracer("t"))
    assert picked is not None and not picked.follows_sampled_parent
    span, _ = record_trace(provider.get_tracer("t"), "raw",
                           [("traceparent", f"00-{TRACE}-{PARENT}-01".encode())], offset=1)
    assert not isinstance(span, RecordedSpan)


SAMPLED = f"00-{TRACE}-{PARENT}-01"


@pytest.mark.parametrize(("headers", "recorded_path"), [
    ([("traceparent", f" \t{SAMPLED}\t")], True),
    ([("traceparent", f"01-{TRACE}-{PARENT}-01-extra")], True),
    ([("traceparent", f"00-{TRACE}-{'1' * 16}-01"), ("traceparent", SAMPLED)], True),
    # read by the propagator, left to it here: a long tracestate, a newline its `$` allows
    ([("traceparent", SAMPLED), ("tracestate", "a=" + "x" * 600)], False),
    ([("traceparent", f"{SAMPLED}\n")], False),
], ids=["spaces", "future-version", "repeated", "long-state", "newline"])
def test_a_sampled_parent_in_any_shape_the_propagator_reads_is_the_sdks(
        headers: list[tuple[str, str]], recorded_path: bool) -> None:
    def scenario(tracer: trace.Tracer) -> Iterator[object]:
        span, out = record_trace(tracer, "raw", headers, offset=1, start_time=1)
        _seen(span)
        assert span is not None
        child = span.get_span_context().span_id
        assert dict(out)["traceparent"] == f"00-{TRACE}-{child:016x}-01".encode()
        span.end()
        yield out
    (span,) = _both(scenario, ParentBased(ALWAYS_ON), recorded_path=recorded_path)
    assert span["parent"][:2] == (int(TRACE, 16), int(PARENT, 16))


@pytest.mark.parametrize("traceparent", [
    f"ff-{TRACE}-{PARENT}-01", f"00-{TRACE}-{PARENT}-01-extra", f"00-{'0' * 32}-{PARENT}-01",
    f"00-{TRACE}-{PARENT.upper()}-01"])
def test_a_parent_the_propagator_rejects_starts_the_same_root(traceparent: str) -> None:
    def scenario(tracer: trace.Tracer) -> Iterator[object]:
        span, out = record_trace(tracer, "raw", [("traceparent", traceparent)], offset=1,
                                 start_time=1)
        _seen(span)
        assert span is not None
        span.end()
        yield out
    (span,) = _both(scenario, ParentBased(ALWAYS_ON), recorded_path=False)
    assert span["parent"] is None and span["context"][0] != int(TRACE, 16)


class _RecordOnly(TraceIdRatioBased):
    """Decides by trace id like its parent class, but records without sampling."""

    def should_sample(self, *args: Any, **kwargs: Any) -> SamplingResult:
        return SamplingResult(Decision.RECORD_ONLY)


def test_a_root_recorded_but_not_sampled_is_left_to_the_sdk() -> None:
    provider, exporter = _provider(_RecordOnly(1.0), recorded=True)
    tracer = provider.get_tracer("t")
    assert recorder(tracer) is not None
    span, out = record_trace(tracer, "raw", [], offset=1)
    assert span is not None and not isinstance(span, RecordedSpan) and span.is_recording()
    assert not span.get_span_context().trace_flags.sampled
    ids = span.get_span_context()
    # random trace id, not sampled
    assert dict(out)["traceparent"] == f"00-{ids.trace_id:032x}-{ids.span_id:016x}-02".encode()
    span.end()
    assert exporter.get_finished_spans() == ()  # the exporting processor skips it, as ever
