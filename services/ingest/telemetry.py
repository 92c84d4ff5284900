"""Ingest metrics (OpenTelemetry): events in/out, rejections per reason, duplicates. Lag,
batch size and duration and aborted transactions are the stage runtime's (shared/stage)."""

from __future__ import annotations

from opentelemetry import metrics
from opentelemetry.metrics import Meter

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

    def record(self, result: BatchResult) -> None:
        """Count a committed batch."""
        self.events_in.add(result.consumed)
        for dataset, count in result.datasets.items():
            self.events_out.add(count, {"dataset": dataset})
        for reason, count in result.rejected.items():
            self.rejected.add(count, {"reason": reason})
        if result.duplicates:
            self.duplicates.add(result.duplicates)
