"""The quality hold's decision: is a cycle's data from ingest windows whose quality index is
below the spec's `quality.min_index`?

Consumes verified `quality.windows` summaries (quality_feed.py) and a cycle's data window (the
Kafka timestamps of the governed records it consumed, seconds); produces the combined index
and, when it is below the floor, a `Hold` and its `training_held` decision.

Combining: every replica's windows that overlap [first − slack, last] (slack: how much earlier
ingest may have committed an event than governance released it) are added up by their counts,
index = 1 − Σ erroneous values / Σ (events × fields) and Σ error rate = Σ erroneous values /
Σ events. That is the events-weighted mean of the windows' own indices (exactly, when their
field lists agree). When no window overlaps yet (ingest closes a window only at its end), the
latest closed window of the dataset (every replica's) stands in. No window at all: no hold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from shared.events import Decision
from shared.quality_windows import QualityWindow

REASON = "quality_below_min_index"
KIND = "training_held"
KEEP = 10_000  # windows kept per dataset (the oldest go first)
Basis = Literal["overlap", "latest"]


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class QualityIndex:
    """Several windows' counts added up."""

    events: int
    errors: int
    cells: int  # Σ events × fields
    start_s: float
    end_s: float
    windows: int
    replicas: int
    basis: Basis

    @property
    def index(self) -> float:
        """1 − mean per-field error rate over every window's cells."""
        return 1.0 - self.errors / self.cells

    @property
    def sum_error_rate(self) -> float:
        """Σ per-field error rate, events-weighted over the windows."""
        return self.errors / self.events


def combine(windows: Sequence[QualityWindow], basis: Basis) -> QualityIndex:
    """The windows' counts added up (at least one window)."""
    return QualityIndex(
        events=sum(w.events for w in windows), errors=sum(w.errors for w in windows),
        cells=sum(w.events * w.fields for w in windows),
        start_s=min(w.start_s for w in windows), end_s=max(w.end_s for w in windows),
        windows=len(windows), replicas=len({w.replica for w in windows}), basis=basis)


class QualityBook:
    """The verified windows of one dataset (a replayed record counts once)."""

    def __init__(self, dataset: str, keep: int = KEEP) -> None:
        self.dataset = dataset
        self.keep = keep
        self._windows: dict[str, QualityWindow] = {}  # by signature (Ed25519 is deterministic)

    def add(self, window: QualityWindow) -> bool:
        """Keep a verified window of this dataset; False when it is another's or known."""
        key = window.signature or window.model_dump_json()
        if window.dataset != self.dataset or key in self._windows:
            return False
        self._windows[key] = window
        if len(self._windows) > self.keep:
            oldest = min(self._windows, key=lambda k: self._windows[k].end_s)
            del self._windows[oldest]
        return True

    def __len__(self) -> int:
        return len(self._windows)

    def index_for(self, first_s: float, last_s: float, slack_s: float) -> QualityIndex | None:
        """The index of the data consumed between `first_s` and `last_s`: the windows that
        overlap it, else the latest window; None when no window was seen."""
        windows = list(self._windows.values())
        if not windows:
            return None
        overlap = [w for w in windows if w.start_s <= last_s and w.end_s > first_s - slack_s]
        if overlap:
            return combine(overlap, "overlap")
        latest = max(w.start_s for w in windows)
        return combine([w for w in windows if w.start_s == latest], "latest")


@dataclass(frozen=True)
class Hold:
    """Why a cycle is not trained: its data's index under the spec's floor."""

    index: QualityIndex
    min_index: float

    def detail(self, model: str, rows: int) -> dict[str, Any]:
        """The `training_held` decision's detail (counts and times only)."""
        i = self.index
        return {"reason": REASON, "model": model, "index": i.index,
                "sum_error_rate": i.sum_error_rate, "min_index": self.min_index,
                "events": i.events, "window_start": _iso(i.start_s),
                "window_end": _iso(i.end_s), "windows": i.windows, "replicas": i.replicas,
                "basis": i.basis, "rows": rows}


def judge(index: QualityIndex | None, min_index: float | None) -> Hold | None:
    """A hold when the spec has a floor and the index is known and below it."""
    if min_index is None or index is None or index.index >= min_index:
        return None
    return Hold(index, min_index)


def hold_decision(hold: Hold, *, actor: str, dataset: str, model: str, rows: int) -> Decision:
    """The `training_held` decision for governance to seal into the audit log."""
    return Decision(kind=KIND, actor=actor, dataset=dataset,
                    detail=hold.detail(model, rows))
