"""The stage runtime's instruments through the real SDK: lag per topic/partition, batch size
and duration (sub-second buckets), aborted transactions, the loop heartbeat."""

from __future__ import annotations

import time

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader

from shared.stage.metrics import StageMetrics


def test_committed_batches_lag_and_aborts_are_observed() -> None:
    reader = InMemoryMetricReader()
    metrics = StageMetrics("ingest", MeterProvider(metric_readers=[reader]).get_meter("test"))
    metrics.committed(500, 0.04)
    metrics.committed(20, 0.3)
    metrics.aborted.add(1)
    metrics.lag.update({("lepton.events.raw", 0): 5, ("lepton.events.raw", 3): 0})
    data = reader.get_metrics_data()
    assert data is not None
    points = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    attrs = tuple(sorted(point.attributes.items())) if point.attributes else ()
                    points[(metric.name, attrs)] = point
    lag = points[("lepton.ingest.consumer.lag",
                  (("partition", "0"), ("topic", "lepton.events.raw")))]
    assert getattr(lag, "value", None) == 5
    duration = points[("lepton.ingest.batch.duration", ())]
    assert isinstance(duration, HistogramDataPoint)
    assert duration.count == 2
    # 0.04 s and 0.3 s land in distinct sub-second buckets, not both in le=5
    assert duration.explicit_bounds[0] < 0.01
    assert sum(1 for c in duration.bucket_counts if c) == 2
    size = points[("lepton.ingest.batch.size", ())]
    assert isinstance(size, HistogramDataPoint)
    assert size.sum == 520
    assert getattr(points[("lepton.ingest.transactions.aborted", ())], "value", None) == 1


def test_heartbeat_is_absent_until_the_loop_turns_then_the_time_of_the_last_turn() -> None:
    reader = InMemoryMetricReader()
    metrics = StageMetrics("ingest", MeterProvider(metric_readers=[reader]).get_meter("test"))

    def heartbeat() -> list[float]:
        data = reader.get_metrics_data()
        return [getattr(point, "value", 0.0) for resource in (data.resource_metrics if data else [])
                for scope in resource.scope_metrics for metric in scope.metrics
                if metric.name == "lepton.ingest.loop.heartbeat"
                for point in metric.data.data_points]

    assert heartbeat() == []
    before = time.time()
    metrics.heartbeat.beat()
    [last] = heartbeat()
    assert before <= last <= time.time()
