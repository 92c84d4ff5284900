"""What a `process` span costs per event under the real OpenTelemetry SDK (BatchSpanProcessor
into a discarding exporter), for the three cases a stage meets: an unsampled parent through
the fast path (context continued, no SDK span), the same through the SDK (the baseline: what
every event paid before), and a sampled parent. Then roots (records with no trace context)
through `shared.record_trace` at 1 %: decided by the ratio sampler's own bound test, against
the sampler asked (the baseline: a ParentBased subclass, which record_trace must ask). Then
serving's Kafka path per result: the `process` span from `record_trace` against what it used
before (the baseline: `process_span` with a nested SDK `send` span), for an unsampled parent
and a root, at 1 %. Prints three markdown tables.

Run: `.venv/bin/python bench/tracing_bench.py`."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, SamplingResult, TraceIdRatioBased
from opentelemetry.trace import SpanKind

from shared.events import HeaderList
from shared.record_trace import record_trace
from shared.tracing import (
    PrimedIds,
    extract_context,
    inject_headers,
    process_span,
    publish_span,
)

N = 50_000
PARENT = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-"
UNSAMPLED: HeaderList = [("traceparent", PARENT + b"00")]
SAMPLED: HeaderList = [("traceparent", PARENT + b"01")]


class Discard(SpanExporter):
    """Accepts and drops spans (the cost measured is the SDK's, not an exporter's)."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _fast(tracer: trace.Tracer, headers: HeaderList) -> None:
    out: HeaderList = []
    with process_span(tracer, "lepton.events.raw", headers, partition=0, offset=1):
        inject_headers(out)


def _sdk(tracer: trace.Tracer, headers: HeaderList) -> None:
    out: HeaderList = []
    with tracer.start_as_current_span("lepton.events.raw process", context=extract_context(
            headers), kind=SpanKind.CONSUMER, attributes={
                "messaging.system": "kafka", "messaging.destination.name": "lepton.events.raw",
                "messaging.operation.type": "process", "messaging.kafka.offset": 1}):
        inject_headers(out)


class Asked(ParentBased):
    """ParentBased with its own `should_sample` (the SDK's, called through): record_trace asks
    it for each root's decision (shared/tracing/sampling.py trusts only the SDK's method)."""

    def should_sample(self, *args: Any, **kwargs: Any) -> SamplingResult:
        """The SDK's decision, reached through an override."""
        return super().should_sample(*args, **kwargs)


def _roots(tracer: trace.Tracer, _headers: HeaderList) -> None:
    span, _ = record_trace(tracer, "lepton.events.raw", [], partition=0, offset=1)
    if span is not None:
        span.end()


def _result_before(tracer: trace.Tracer, headers: HeaderList) -> None:
    with process_span(tracer, "lepton.predictions.requests", headers, partition=0, offset=1,
                      key="r1", attributes={"lepton.model.version": 3}):
        out: HeaderList = []
        with publish_span(tracer, "lepton.predictions.results", out, key="r1"):
            pass


def _result_now(tracer: trace.Tracer, headers: HeaderList) -> None:
    span, _ = record_trace(tracer, "lepton.predictions.requests", headers, partition=0,
                           offset=1, attributes={"messaging.kafka.message.key": "r1",
                                                 "lepton.model.version": 3},
                           start_time=time.time_ns())
    if span is not None:
        span.end()


def _per_event_us(step: object, tracer: trace.Tracer, headers: HeaderList) -> float:
    began = time.perf_counter()
    for _ in range(N):
        step(tracer, headers)  # type: ignore[operator]
    return (time.perf_counter() - began) / N * 1e6


def main() -> None:
    """Run every case twice, interleaved, and print the better round of each."""
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.01)))
    provider.add_span_processor(BatchSpanProcessor(Discard()))
    tracer = provider.get_tracer("bench")
    cases = [("unsampled parent, SDK span (baseline)", _sdk, UNSAMPLED),
             ("unsampled parent, fast path", _fast, UNSAMPLED),
             ("sampled parent, SDK span", _fast, SAMPLED)]
    best = {name: min(_per_event_us(step, tracer, h) for _ in range(2))
            for name, step, h in cases}
    base = best[cases[0][0]]
    print("| case | µs per event | ratio to baseline |")
    print("|---|---|---|")
    for name, us in best.items():
        print(f"| {name} | {us:.1f} | {us / base:.2f} |")
    provider.shutdown()
    roots = {}
    for name, sampler in (("root, 1 %, sampler asked (baseline)", Asked(TraceIdRatioBased(0.01))),
                          ("root, 1 %, the ratio's bound test", ParentBased(
                              TraceIdRatioBased(0.01)))):
        provider = TracerProvider(sampler=sampler, id_generator=PrimedIds())
        provider.add_span_processor(BatchSpanProcessor(Discard()))
        roots[name] = provider
    timings: dict[str, list[float]] = {name: [] for name in roots}
    for _ in range(3):
        for name, provider in roots.items():
            timings[name].append(_per_event_us(_roots, provider.get_tracer("bench"), []))
    base = min(timings[next(iter(roots))])
    print("\n| case | µs per event | ratio to baseline |")
    print("|---|---|---|")
    for name, runs in timings.items():
        print(f"| {name} | {min(runs):.1f} | {min(runs) / base:.2f} |")
    for provider in roots.values():
        provider.shutdown()
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.01)),
                              id_generator=PrimedIds())
    provider.add_span_processor(BatchSpanProcessor(Discard()))
    tracer = provider.get_tracer("bench")
    print("\n| Kafka prediction result | before µs | record_trace µs | ratio |")
    print("|---|---|---|---|")
    for name, headers in (("unsampled parent", UNSAMPLED), ("root, 1 %", [])):
        before = min(_per_event_us(_result_before, tracer, headers) for _ in range(2))
        now = min(_per_event_us(_result_now, tracer, headers) for _ in range(2))
        print(f"| {name} | {before:.1f} | {now:.1f} | {now / before:.2f} |")
    provider.shutdown()


if __name__ == "__main__":
    main()
