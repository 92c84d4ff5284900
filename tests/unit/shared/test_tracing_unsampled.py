"""process_span's unsampled fast path through the real SDK: an unsampled remote parent under a
parent-based sampler builds no SDK span, yet its context (traceparent and tracestate) is
continued into the outputs' headers; a sampled parent, no parent, or a sampler that ignores
the parent still get a real span."""

from __future__ import annotations

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, Sampler, TraceIdRatioBased

from shared.events import HeaderList
from shared.tracing import inject_headers, process_span

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
UNSAMPLED = f"00-{TRACE}-{PARENT}-00".encode()


def _run(sampler: Sampler, headers: HeaderList) -> tuple[dict[str, str], InMemorySpanExporter]:
    """Process one record under `sampler`; the headers its output would carry, and the spans."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    out: HeaderList = []
    with process_span(provider.get_tracer("test"), "lepton.events.raw", headers, offset=7):
        inject_headers(out)
    return {k: v.decode() if isinstance(v, bytes) else str(v) for k, v in out}, exporter


def test_unsampled_parent_is_continued_without_a_span() -> None:
    out, exporter = _run(ParentBased(TraceIdRatioBased(0.01)),
                         [("traceparent", UNSAMPLED), ("tracestate", b"vendor=abc")])
    assert exporter.get_finished_spans() == ()
    assert out == {"traceparent": UNSAMPLED.decode(), "tracestate": "vendor=abc"}


def test_sampled_parent_gets_a_real_child_span() -> None:
    out, exporter = _run(ParentBased(ALWAYS_ON),
                         [("traceparent", f"00-{TRACE}-{PARENT}-01".encode())])
    [span] = exporter.get_finished_spans()
    assert span.context is not None and f"{span.context.trace_id:032x}" == TRACE
    assert span.parent is not None and f"{span.parent.span_id:016x}" == PARENT
    assert out["traceparent"] == f"00-{TRACE}-{span.context.span_id:016x}-01"


def test_no_parent_or_a_sampler_that_ignores_it_lets_the_sdk_decide() -> None:
    _, root = _run(ParentBased(ALWAYS_ON), [])
    assert len(root.get_finished_spans()) == 1
    _, ignoring = _run(ALWAYS_ON, [("traceparent", UNSAMPLED)])
    assert len(ignoring.get_finished_spans()) == 1
    _, malformed = _run(ParentBased(ALWAYS_ON), [("traceparent", b"00-zz-00")])
    assert len(malformed.get_finished_spans()) == 1
