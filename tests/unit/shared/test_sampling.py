"""shared.tracing.sampling through record_trace and the real SDK: what the hot paths decide
without asking a sampler is what the sampler decides, also for samplers whose descriptions
mislead (a nested ParentBased; a delegate that records without sampling)."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    DEFAULT_ON,
    Decision,
    ParentBased,
    Sampler,
    StaticSampler,
    TraceIdRatioBased,
)

from shared.record_trace import record_trace
from shared.tracing import PrimedIds, extract_context, parent_decides

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-"
RECORD_ONLY = StaticSampler(Decision.RECORD_ONLY)  # describes itself as "AlwaysOnSampler"


def _provider(sampler: Sampler) -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler, id_generator=PrimedIds())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


@pytest.mark.parametrize("sampler", [
    # the inner root's description holds "remoteParentNotSampled:AlwaysOffSampler"; the outer
    # sampler samples every child of an unsampled remote parent
    ParentBased(DEFAULT_ON, remote_parent_not_sampled=ALWAYS_ON),
    # its description reads "remoteParentSampled:AlwaysOnSampler"; a child records, unsampled
    ParentBased(ALWAYS_ON, remote_parent_sampled=RECORD_ONLY),
    ParentBased(TraceIdRatioBased(0.5)), DEFAULT_ON, ALWAYS_ON, ALWAYS_OFF,
], ids=["nested", "record-only", "ratio", "default-on", "always-on", "always-off"])
@pytest.mark.parametrize("flags", ["00", "01"])
def test_a_child_of_a_remote_parent_is_what_the_sdk_makes_of_it(sampler: Sampler,
                                                                  flags: str) -> None:
    """Sampled and exported exactly when the SDK's own span would be."""
    headers = [("traceparent", (PARENT + flags).encode())]
    provider, exporter = _provider(sampler)
    tracer = provider.get_tracer("t")
    sdk = tracer.start_span("process raw", context=extract_context(headers))
    sdk.end()
    expected = (sdk.get_span_context().trace_flags.sampled, len(exporter.get_finished_spans()))
    exporter.clear()
    span, out = record_trace(tracer, "raw", headers, offset=1)
    if span is not None:
        span.end()
    flags_out = int(dict(out)["traceparent"].decode().rsplit("-", 1)[1], 16)
    assert (bool(flags_out & 1), len(exporter.get_finished_spans())) == expected


def test_a_nested_parent_based_sampler_is_read_by_its_own_delegates() -> None:
    provider, _ = _provider(ParentBased(DEFAULT_ON, remote_parent_not_sampled=ALWAYS_ON))
    assert not parent_decides(provider.get_tracer("t"))
    provider, _ = _provider(ParentBased(ALWAYS_ON))
    assert parent_decides(provider.get_tracer("t"))
