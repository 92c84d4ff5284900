"""Ingest metrics (OpenTelemetry): events in/out, rejections per reason, duplicates, and the
data-quality counts and index (quality.py, quality_log.py). Lag, batch size and duration and
aborted transactions are the stage runtime's (shared/stage)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Meter, Observation

from services.ingest.processor import BatchResult
from services.ingest.quality import KINDS


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
        self.quality_events = meter.create_counter(
            "lepton.ingest.quality.events", unit="{event}",
            description="Events whose fields were checked, by dataset")
        self.quality_errors = meter.create_counter(
            "lepton.ingest.quality.errors", unit="{value}",
            description="Field values missing, of the wrong type, out of range, invalid or "
                        "clipped, by dataset, field and kind")
        self.quality_imputed = meter.create_counter(
            "lepton.ingest.quality.imputed", unit="{value}",
            description="Missing field values filled in per the spec, by dataset and field")
        self.quality_rejected = meter.create_counter(
            "lepton.ingest.quality.rejected", unit="{event}",
            description="Events rejected, by dataset and the field that failed first")
        self.latest: Mapping[str, Mapping[str, Any]] = {}
        meter.create_observable_gauge(
            "lepton.ingest.quality.index", [self._gauge("quality_index")], unit="1",
            description="1 − mean per-field error rate of the latest closed window, by dataset")
        meter.create_observable_gauge(
            "lepton.ingest.quality.error_rate_sum", [self._gauge("sum_error_rate")], unit="1",
            description="Σ per-field error rate of the latest closed window, by dataset")
        meter.create_observable_gauge(
            "lepton.ingest.quality.min_index", [self._gauge("min_index")], unit="1",
            description="The dataset spec's quality.min_index (the alert threshold)")

    def _gauge(self, key: str) -> Any:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(float(record[key]), {"dataset": dataset})
                    for dataset, record in list(self.latest.items())
                    if record.get(key) is not None]
        return observe

    def record(self, result: BatchResult) -> None:
        """Count a committed batch."""
        self.events_in.add(result.consumed)
        for dataset, count in result.datasets.items():
            self.events_out.add(count, {"dataset": dataset})
        for reason, count in result.rejected.items():
            self.rejected.add(count, {"reason": reason})
        if result.duplicates:
            self.duplicates.add(result.duplicates)
        for dataset, counts in result.quality.datasets.items():
            self.quality_events.add(counts.events, {"dataset": dataset})
            for k, field in enumerate(counts.fields):
                labels = {"dataset": dataset, "field": field}
                for n, kind in enumerate(KINDS, 1):
                    if counts.outcomes[k, n]:
                        self.quality_errors.add(int(counts.outcomes[k, n]),
                                                {**labels, "kind": kind})
                if counts.imputed[k]:
                    self.quality_imputed.add(int(counts.imputed[k]), labels)
                if counts.rejected_by[k]:
                    self.quality_rejected.add(int(counts.rejected_by[k]), labels)
