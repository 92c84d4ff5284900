"""record_trace and server_span through the real SDK: unsampled records and requests (an
unsampled parent, or a root the ratio sampler drops) get a valid W3C context and no SDK span;
sampled ones get a real span carrying that context, at the configured rate, with the trace id
the decision was made on."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    DEFAULT_OFF,
    DEFAULT_ON,
    Decision,
    ParentBased,
    ParentBasedTraceIdRatio,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)

from shared.record_trace import record_trace
from shared.tracing import PrimedIds

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


def _tracer(sampler: Sampler, primed: bool = True) -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler, id_generator=PrimedIds() if primed else None)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def _end(span: object) -> None:
    end = getattr(span, "end", None)
    if end is not None:
        end()


def test_an_unsampled_parent_is_passed_on_without_a_span() -> None:
    provider, exporter = _tracer(ParentBased(TraceIdRatioBased(0.5)))
    tracer = provider.get_tracer("t")
    canonical = f"00-{TRACE}-{PARENT}-02".encode()
    for headers, expected in (
            ([("traceparent", f"00-{TRACE}-{PARENT}-00".encode()), ("tracestate", b"v=1")],
             {"traceparent": f"00-{TRACE}-{PARENT}-00".encode(), "tracestate": b"v=1"}),
            ([("x", b"y"), ("traceparent", canonical)], {"traceparent": canonical}),
            ([("traceparent", canonical.decode())], {"traceparent": canonical})):
        span, out = record_trace(tracer, "raw", headers, offset=3)
        assert span is None
        assert dict(out) == expected
    assert exporter.get_finished_spans() == ()


def test_a_lone_tracestate_is_no_parent() -> None:
    provider, _ = _tracer(ParentBased(TraceIdRatioBased(0.5)))
    fake = f"00-{TRACE}-{PARENT}-00".encode()
    _, out = record_trace(provider.get_tracer("t"), "raw", [("tracestate", fake)], offset=1)
    assert dict(out)["traceparent"].split(b"-")[1] != TRACE.encode()


def test_a_sampled_parent_gets_a_child_span_the_headers_carry() -> None:
    provider, exporter = _tracer(ParentBased(TraceIdRatioBased(0.01)))
    headers = [("traceparent", f"00-{TRACE}-{PARENT}-01".encode())]
    span, out = record_trace(provider.get_tracer("t"), "raw", headers, offset=3,
                             attributes={"lepton.dataset": "d"})
    assert span is not None
    span.end()
    [done] = exporter.get_finished_spans()
    assert done.parent is not None and f"{done.parent.span_id:016x}" == PARENT
    assert done.attributes is not None and done.attributes["lepton.dataset"] == "d"
    assert dict(out)["traceparent"] == f"00-{TRACE}-{done.context.span_id:016x}-01".encode()


def test_roots_are_sampled_at_the_configured_rate_and_only_sampled_ones_build_spans() -> None:
    """As the SDK would: same flags (the random-trace-id bit included), fresh ids."""
    provider, exporter = _tracer(ParentBased(TraceIdRatioBased(0.05)))
    tracer = provider.get_tracer("t")
    sampled, traces = 0, set()
    for offset in range(4000):
        span, out = record_trace(tracer, "raw", [], offset=offset)
        version, trace_id, span_id, flags = dict(out)["traceparent"].decode().split("-")
        assert (version, len(trace_id), len(span_id)) == ("00", 32, 16)
        traces.add(trace_id)
        if span is None:
            assert int(flags, 16) & 1 == 0
            continue
        sampled += 1
        assert int(flags, 16) & 1 == 1
        assert f"{span.get_span_context().trace_id:032x}" == trace_id  # the decided trace id
        span.end()
    assert len(traces) == 4000
    assert 140 <= sampled <= 260  # 5 % of 4000 = 200, ± 4.3 standard deviations
    assert len(exporter.get_finished_spans()) == sampled


def test_without_primed_ids_or_with_another_sampler_the_sdk_decides() -> None:
    for provider, exporter in (_tracer(ParentBased(ALWAYS_ON), primed=False),
                               _tracer(ParentBased(ALWAYS_ON))):
        span, out = record_trace(provider.get_tracer("t"), "raw", [], offset=1)
        assert span is not None
        span.end()
        [done] = exporter.get_finished_spans()
        assert dict(out)["traceparent"].decode().split("-")[1] == f"{done.context.trace_id:032x}"


def test_a_no_op_tracer_gives_no_headers() -> None:
    from opentelemetry.trace import NoOpTracer

    span, out = record_trace(NoOpTracer(), "raw", [], offset=1)
    assert span is None and out == []
    _end(span)


def test_an_unsampled_root_has_the_flags_the_sdk_would_give_it() -> None:
    from opentelemetry.context import Context

    provider, exporter = _tracer(ParentBased(ALWAYS_OFF))
    sdk = provider.get_tracer("t").start_span("process raw", context=Context())
    span, out = record_trace(provider.get_tracer("t"), "raw", [], offset=1)
    assert span is None and not sdk.is_recording()
    assert dict(out)["traceparent"].decode().split("-")[3] == \
        f"{sdk.get_span_context().trace_flags:02x}"
    assert exporter.get_finished_spans() == ()


def test_a_server_span_the_sampler_drops_is_built_without_the_sdk() -> None:
    from opentelemetry.trace import NonRecordingSpan, SpanKind

    from shared.record_trace import server_span

    provider, exporter = _tracer(ParentBased(TraceIdRatioBased(0.5)))
    tracer = provider.get_tracer("t")
    kept: list[int] = []
    for _ in range(400):  # roots: about half recorded, each with the id it was decided on
        span = server_span(tracer, "GET /x", {}, {"http.route": "/x"})
        context = span.get_span_context()
        assert context.is_valid
        if span.is_recording():
            kept.append(context.trace_id)
        else:
            assert isinstance(span, NonRecordingSpan) and not context.trace_flags.sampled
        span.end()
    finished = exporter.get_finished_spans()
    assert 120 < len(kept) < 280 and [s.context.trace_id for s in finished] == kept
    assert all(s.kind is SpanKind.SERVER and s.attributes == {"http.route": "/x"}
               for s in finished)
    exporter.clear()
    unsampled = server_span(tracer, "GET /x", {"traceparent": f"00-{TRACE}-{PARENT}-00"}, {})
    assert isinstance(unsampled, NonRecordingSpan)
    assert (f"{unsampled.get_span_context().trace_id:032x}",
            f"{unsampled.get_span_context().span_id:016x}") == (TRACE, PARENT)
    sampled = server_span(tracer, "GET /x", {"traceparent": f"00-{TRACE}-{PARENT}-01"}, {})
    sampled.end()
    (child,) = exporter.get_finished_spans()
    assert child.parent is not None and f"{child.parent.span_id:016x}" == PARENT
    assert f"{child.context.trace_id:032x}" == TRACE


def test_a_server_span_through_a_proxy_tracer_uses_the_global_provider(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A module-level tracer (a ProxyTracer) still gets the SDK-free path."""
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, ProxyTracer

    from shared.record_trace import server_span

    provider, exporter = _tracer(ParentBased(TraceIdRatioBased(0.0)))
    # what `set_tracer_provider` does, which a process may do only once
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)
    span = server_span(ProxyTracer("t"), "GET /x", {}, {})
    assert isinstance(span, NonRecordingSpan) and span.get_span_context().is_valid
    assert exporter.get_finished_spans() == ()


class _ScriptedIds(PrimedIds):
    """PrimedIds whose unprimed trace ids come from a script (the rest as PrimedIds)."""

    def __init__(self, script: list[int]) -> None:
        super().__init__()
        self.script = script

    def generate_trace_id(self) -> int:
        primed = self._next.__dict__.pop("trace_id", None)
        return self.script.pop(0) if primed is None else primed


class _Quarter(TraceIdRatioBased):
    """A ratio sampler that decides otherwise: it keeps a trace id by its high bits."""

    def should_sample(self, parent_context: object, trace_id: int, name: str,
                      *args: object, **kwargs: object) -> SamplingResult:
        keep = trace_id >> 126 == 0
        return SamplingResult(Decision.RECORD_AND_SAMPLE if keep else Decision.DROP)


@pytest.mark.parametrize("sampler", [
    TraceIdRatioBased(0.3), ParentBased(TraceIdRatioBased(0.3)), ParentBasedTraceIdRatio(0.01),
    TraceIdRatioBased(0.0), TraceIdRatioBased(1.0), ALWAYS_ON, ALWAYS_OFF, DEFAULT_ON,
    DEFAULT_OFF, ParentBased(_Quarter(0.5)), _Quarter(0.5),
], ids=lambda s: type(s).__name__ + "/" + s.get_description()[:40])
def test_a_root_is_sampled_exactly_as_its_sampler_decides(sampler: Sampler) -> None:
    """Whatever shortcut decides a root (the ratio's own bound test for the SDK's types, the
    sampler asked otherwise), each trace id is sampled exactly when the sampler says so:
    random ids, ids at the ratio's bound, and ids whose high bits alone differ."""
    import random

    from opentelemetry.context import Context

    limit = TraceIdRatioBased.TRACE_ID_LIMIT
    bound = TraceIdRatioBased.get_bound_for_rate(0.3)
    ids = [random.getrandbits(128) or 1 for _ in range(300)] + [
        bound - 1, bound, bound + 1, (1 << 127) | (bound - 1), (1 << 127) | bound,
        limit, limit + 1, 1, (1 << 128) - 1]
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler, id_generator=_ScriptedIds(list(ids)))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("t")
    for trace_id in ids:
        expected = sampler.should_sample(Context(), trace_id, "process raw").decision
        span, out = record_trace(tracer, "raw", [], offset=1)
        _, traced, _, flags = dict(out)["traceparent"].decode().split("-")
        assert int(traced, 16) == trace_id
        assert (span is not None) == expected.is_sampled() == bool(int(flags, 16) & 1)
        _end(span)
    assert len(exporter.get_finished_spans()) == sum(
        sampler.should_sample(Context(), t, "x").decision.is_sampled() for t in ids)
