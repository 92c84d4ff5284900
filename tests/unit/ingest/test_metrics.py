"""Ingest metrics: counts per outcome and reason, through the real SDK."""

from __future__ import annotations

from collections import Counter

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from services.ingest.processor import BatchResult
from services.ingest.telemetry import IngestMetrics


def test_a_committed_batch_is_counted_by_outcome_and_reason() -> None:
    reader = InMemoryMetricReader()
    metrics = IngestMetrics(MeterProvider(metric_readers=[reader]).get_meter("test"))
    metrics.record(BatchResult(consumed=10, clean=6, duplicates=1,
                               rejected=Counter({"bad_json": 2, "out_of_range": 1}),
                               datasets=Counter({"transactions": 6})))
    data = reader.get_metrics_data()
    assert data is not None
    points = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    attrs = tuple(sorted(point.attributes.items())) if point.attributes else ()
                    points[(metric.name, attrs)] = getattr(point, "value", None) or getattr(
                        point, "count", None)
    assert points[("lepton.ingest.events.in", ())] == 10
    assert points[("lepton.ingest.events.out", (("dataset", "transactions"),))] == 6
    assert points[("lepton.ingest.events.rejected", (("reason", "bad_json"),))] == 2
    assert points[("lepton.ingest.events.rejected", (("reason", "out_of_range"),))] == 1
    assert points[("lepton.ingest.events.duplicates", ())] == 1
