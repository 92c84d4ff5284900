"""What a recorded (sampled) span costs through `shared.record_trace`, the SDK's span against
the recorded span (`shared.tracing.recorded`), for a stage's `process` span under a sampled
parent and a sampled root, and a served request's SERVER span. Real SDK, a BatchSpanProcessor
into a discarding exporter; the baseline runs on a provider whose processor is a subclass of
it, which record_trace must leave to the SDK. CPU time of the whole process (the processor's
export thread included), interleaved rounds, the best round of each. Prints a markdown table.

Run: `.venv/bin/python bench/recorded_span_bench.py [--events 20000] [--rounds 3]`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.record_trace import record_trace, server_span
from shared.tracing import PrimedIds
from shared.tracing.recorded import recorder

SAMPLED = [("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")]
BASELINE = "SDK span (baseline)"
CARRIER = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}


class Discard(SpanExporter):
    """Accepts and drops spans (the cost measured is the span's, not an exporter's)."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class Hooked(BatchSpanProcessor):
    """The same processor under another type: record_trace leaves its spans to the SDK."""


def _process(tracer: trace.Tracer, parent: bool, n: int) -> None:
    headers = SAMPLED if parent else []
    for offset in range(n):
        span, _ = record_trace(tracer, "lepton.events.raw", headers, partition=1, offset=offset,
                               group="lepton-ingest", start_time=time.time_ns(),
                               attributes={"lepton.dataset": "transactions",
                                           "lepton.event_id": "e"})
        assert span is not None
        span.set_attribute("lepton.outcome", "clean")
        span.end()


def _served(tracer: trace.Tracer, n: int) -> None:
    for _ in range(n):
        span = server_span(tracer, "inference.GRPCInferenceService/ModelInfer", CARRIER,
                           {"rpc.system": "grpc", "rpc.service": "inference"})
        span.set_attributes({"lepton.model": "transactions", "lepton.model.version": 3,
                             "lepton.rows": 1})
        span.end()


def main() -> None:
    """Run each case on both providers in interleaved rounds; print the best of each."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    tracers = {}
    for label, processor in ((BASELINE, Hooked), ("recorded span", BatchSpanProcessor)):
        provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(1.0)),
                                  id_generator=PrimedIds())
        batch = processor(Discard(), max_queue_size=4 * args.events)
        provider.add_span_processor(batch)
        tracers[label] = (provider.get_tracer("bench"), batch)
    assert recorder(tracers["recorded span"][0]) is not None
    assert recorder(tracers[BASELINE][0]) is None
    cases: dict[str, Callable[[trace.Tracer], None]] = {
        "process span, sampled parent": lambda t: _process(t, True, args.events),
        "process span, sampled root": lambda t: _process(t, False, args.events),
        "SERVER span, sampled parent": lambda t: _served(t, args.events),
    }
    best: dict[tuple[str, str], float] = {}
    for _ in range(args.rounds):
        for case, run in cases.items():
            for label, (tracer, batch) in tracers.items():
                batch.force_flush()
                began = time.process_time()
                run(tracer)
                batch.force_flush()
                us = (time.process_time() - began) / args.events * 1e6
                best[case, label] = min(best.get((case, label), us), us)
    print("| span | SDK span (baseline) µs | recorded span µs | ratio |")
    print("|---|---:|---:|---:|")
    for case in cases:
        base, recorded = best[case, BASELINE], best[case, "recorded span"]
        print(f"| {case} | {base:.1f} | {recorded:.1f} | {recorded / base:.2f} |")


if __name__ == "__main__":
    main()
