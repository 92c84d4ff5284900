"""Data-quality counts and the quality index (seed 000: quality = Σ per-field error rate).

Per dataset and spec field, over the events the cleaner saw: how many values were missing
(absent or null; `imputed` of those were filled in), of the wrong type (a unit that cannot be
read included), out of range, otherwise invalid (not allowed, too long, a subject field that
contradicts the envelope) or clipped; and how many events each field got rejected (the first
failing field in spec order names the reason). Every field is checked in every event, so one
bad field does not hide the others. A field's error rate is (missing + wrong type + out of
range + invalid + clipped) / events; the index is stated both as Σ error rate over the spec's
fields (0 is perfect) and as 1 − mean error rate (1 is perfect).

Consumes: the cleaner's per-batch counts. Produces: DatasetCounts and their JSON form.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from services.ingest.cleaning import Cleaned, Cleaner
from services.ingest.columns import Outcome

KINDS = ("missing", "wrong_type", "out_of_range", "invalid", "clipped")  # errors: Outcome 1..5
Counts = npt.NDArray[np.int64]


@dataclass
class DatasetCounts:
    """One dataset's counts over some events (a batch, a window, several replicas)."""

    fields: tuple[str, ...]
    events: int = 0
    rejected: int = 0
    outcomes: Counts = field(default_factory=lambda: np.zeros((0, len(Outcome)), np.int64))
    imputed: Counts = field(default_factory=lambda: np.zeros(0, np.int64))
    rejected_by: Counts = field(default_factory=lambda: np.zeros(0, np.int64))

    def __post_init__(self) -> None:
        k = len(self.fields)
        if self.outcomes.shape != (k, len(Outcome)):
            self.outcomes = np.zeros((k, len(Outcome)), np.int64)
            self.imputed = np.zeros(k, np.int64)
            self.rejected_by = np.zeros(k, np.int64)

    def add(self, other: DatasetCounts) -> None:
        """Add another count of the same fields."""
        if other.fields != self.fields:
            raise ValueError("cannot add counts of different field lists")
        self.events += other.events
        self.rejected += other.rejected
        self.outcomes += other.outcomes
        self.imputed += other.imputed
        self.rejected_by += other.rejected_by

    def error_rates(self) -> npt.NDArray[np.float64]:
        """Each field's error rate (0 when no events were seen)."""
        errors = self.outcomes[:, Outcome.MISSING:].sum(axis=1)
        return errors / self.events if self.events else np.zeros(len(self.fields))

    def index(self) -> tuple[float, float]:
        """(Σ per-field error rate, 1 − mean per-field error rate)."""
        rates = self.error_rates()
        total = float(rates.sum())
        return total, 1.0 - (total / len(rates) if len(rates) else 0.0)

    def to_json(self) -> dict[str, Any]:
        """The counts, rates and index as a JSON-ready dict."""
        rates = self.error_rates()
        total, quality = self.index()
        fields = {}
        for k, name in enumerate(self.fields):
            row: dict[str, int | float] = {
                kind: int(self.outcomes[k, n + 1]) for n, kind in enumerate(KINDS)}
            row.update(imputed=int(self.imputed[k]), rejected=int(self.rejected_by[k]),
                       error_rate=float(rates[k]))
            fields[name] = row
        return {"events": self.events, "rejected": self.rejected, "fields": fields,
                "sum_error_rate": total, "quality_index": quality}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> DatasetCounts:
        """Counts read back from `to_json` output."""
        fields: dict[str, dict[str, int]] = obj["fields"]
        counts = cls(tuple(fields), int(obj["events"]), int(obj["rejected"]))
        for k, row in enumerate(fields.values()):
            counts.outcomes[k, 1:] = [int(row[kind]) for kind in KINDS]
            counts.outcomes[k, 0] = counts.events - int(counts.outcomes[k, 1:].sum())
            counts.imputed[k] = int(row["imputed"])
            counts.rejected_by[k] = int(row["rejected"])
        return counts


class BatchQuality:
    """The quality counts of one batch, per dataset."""

    def __init__(self) -> None:
        self.datasets: dict[str, DatasetCounts] = {}

    def _of(self, name: str, fields: Sequence[str]) -> DatasetCounts:
        found = self.datasets.get(name)
        if found is None:
            found = self.datasets[name] = DatasetCounts(tuple(fields))
        return found

    def cleaned(self, cleaner: Cleaner, cleaned: Cleaned) -> None:
        """Count a cleaned group of events."""
        counts = self._of(cleaner.spec.name, cleaner.names)
        counts.events += len(cleaned.rejections)
        counts.outcomes += cleaned.outcomes
        counts.imputed += cleaned.imputed
        counts.rejected_by += cleaned.rejected

    def rejected(self, name: str, count: int) -> None:
        """Count the dataset's events that ended rejected (cleaning or protection)."""
        if name in self.datasets:
            self.datasets[name].rejected += count
