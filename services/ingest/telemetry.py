"""Ingest metrics (OpenTelemetry): events in/out, rejections per reason, duplicates, aborted
transactions, batch duration, and consumer lag per partition (an observable gauge)."""

from __future__ import annotations

from collections.abc import Iterable

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Meter, Observation

from services.ingest.processor import BatchResult


class IngestMetrics:
    """The service's instruments; record after a transaction commits so retries never count."""

    def __init__(self, meter: Meter | None = None) -> None:
        meter = meter or metrics.get_meter("lepton.ingest")
        self.events_in = meter.create_counter(
            "lepton.ingest.events.in", unit="{event}", description="Records consumed and committed")
        self.events_out = meter.create_counter(
            "lepton.ingest.events.out", unit="{event}",
            description="Events written to events.clean")
        self.rejected = meter.create_counter(
            "lepton.ingest.events.rejected", unit="{event}",
            description="Events written to events.rejected, by reason")
        self.duplicates = meter.create_counter(
            "lepton.ingest.events.duplicates", unit="{event}",
            description="Duplicate event ids dropped (dedup window hits)")
        self.aborted = meter.create_counter(
            "lepton.ingest.transactions.aborted", unit="{transaction}",
            description="Transactions aborted and retried")
        self.batch_seconds = meter.create_histogram(
            "lepton.ingest.batch.duration", unit="s",
            description="Consume-to-commit time per batch")
        self.lag: dict[int, int] = {}
        meter.create_observable_gauge(
            "lepton.ingest.consumer.lag", callbacks=[self._observe_lag], unit="{message}",
            description="High watermark minus position, per assigned partition of events.raw")

    def record(self, result: BatchResult, seconds: float) -> None:
        """Count a committed batch."""
        self.events_in.add(result.consumed)
        for dataset, count in result.datasets.items():
            self.events_out.add(count, {"dataset": dataset})
        for reason, count in result.rejected.items():
            self.rejected.add(count, {"reason": reason})
        if result.duplicates:
            self.duplicates.add(result.duplicates)
        self.batch_seconds.record(seconds)

    def _observe_lag(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(lag, {"partition": str(p)}) for p, lag in list(self.lag.items())]
