"""Reference distributions for drift monitoring: a histogram per model feature and one of the
score, over bins fixed from the dataset spec's public bounds (never from data), stored in the
signed model card by the trainer and read by the monitor.

Bins: an int field with at most 24 values gets one bin per value; other numbers get 16 bins
between their public bounds (clip, else valid range), spaced on log1p for non-negative ranges
(amounts are heavy-tailed) and linearly otherwise, plus an under- and an overflow bin;
categories get their allowed values plus `other`; booleans `false`/`true`; the score 20 equal
bins on [0, 1]. Fields without public bounds (and strings, timestamps) are not binned.

Privacy: in model mode the counts are of the release's own contribution-bounded training rows,
noised with OpenDP's (discrete) Laplace mechanism: each of the H histograms has L1 sensitivity k
(a subject's at most k rows) and gets ε_ref/H, so the reference is ε_ref-DP per subject.
Its RDP curve (pure ε-DP implies (α, min(ε, αε²/2))-RDP, Bun & Steinke 2016) is composed into
the release's curve that governance charges.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from shared.accounting import ORDERS
from shared.datasets.spec import DatasetSpec, FieldSpec, FieldType, Role

SCORE = "__score__"
NUMERIC_BINS = 16
SCORE_BINS = 20
MAX_INT_VALUES = 24
OTHER = "other"


@dataclass(frozen=True)
class Bins:
    """How one feature (or the score) is binned: ordered numeric edges, or categories."""

    name: str
    kind: str  # "numeric" | "category"
    edges: tuple[float, ...] = ()
    categories: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        """Number of bins (numeric: under- and overflow included; category: `other` too)."""
        return len(self.edges) + 1 if self.kind == "numeric" else len(self.categories) + 1

    def index(self, values: Sequence[Any]) -> npt.NDArray[np.int64]:
        """The bin of each value, -1 where it is missing or of the wrong type."""
        if self.kind == "numeric":
            numbers = np.asarray([float(v) if isinstance(v, int | float)
                                  and not isinstance(v, bool) and math.isfinite(float(v))
                                  else math.nan for v in values], dtype=float)
            found = np.searchsorted(np.asarray(self.edges), numbers, side="right")
            return np.where(np.isnan(numbers), -1, found).astype(np.int64)
        lookup = {c: i for i, c in enumerate(self.categories)}
        other = len(self.categories)
        return np.asarray([-1 if v is None else lookup.get(_category(v), other)
                           for v in values], dtype=np.int64)

    def count(self, values: Sequence[Any]) -> npt.NDArray[np.int64]:
        """Counts per bin of `values` (missing ones left out)."""
        found = self.index(values)
        return np.bincount(found[found >= 0], minlength=self.size).astype(np.int64)

    def centres(self) -> npt.NDArray[np.float64]:
        """A representative value per numeric bin (the outer bins take their edge)."""
        edges = np.asarray(self.edges, dtype=float)
        inner = (edges[:-1] + edges[1:]) / 2
        return np.concatenate([[edges[0]], inner, [edges[-1]]])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (model card)."""
        if self.kind == "numeric":
            return {"kind": "numeric", "edges": list(self.edges)}
        return {"kind": "category", "categories": [*self.categories, OTHER]}

    @classmethod
    def from_dict(cls, name: str, data: Mapping[str, Any]) -> Bins:
        """Inverse of `to_dict`."""
        if data["kind"] == "numeric":
            return cls(name, "numeric", edges=tuple(float(e) for e in data["edges"]))
        categories = [str(c) for c in data["categories"]]
        return cls(name, "category", categories=tuple(categories[:-1]))


def _category(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _numeric_edges(spec_field: FieldSpec) -> tuple[float, ...] | None:
    low = spec_field.clip_min if spec_field.clip_min is not None else spec_field.valid_min
    high = spec_field.clip_max if spec_field.clip_max is not None else spec_field.valid_max
    if low is None or high is None or high <= low:
        return None
    if spec_field.type is FieldType.INT and high - low < MAX_INT_VALUES:
        return tuple(float(v) + 0.5 for v in range(int(low) - 1, int(high) + 1))
    if low >= 0:
        points = np.expm1(np.linspace(math.log1p(low), math.log1p(high), NUMERIC_BINS + 1))
    else:
        points = np.linspace(low, high, NUMERIC_BINS + 1)
    return tuple(float(p) for p in points)


def spec_bins(spec: DatasetSpec) -> list[Bins]:
    """The bins of every feature of `spec` that has public bounds or a closed set of values,
    then the score's."""
    found = []
    for spec_field in spec.fields:
        if spec_field.role is not Role.FEATURE:
            continue
        if spec_field.is_numeric:
            edges = _numeric_edges(spec_field)
            if edges is not None:
                found.append(Bins(spec_field.name, "numeric", edges=edges))
        elif spec_field.type is FieldType.BOOL:
            found.append(Bins(spec_field.name, "category", categories=("false", "true")))
        elif spec_field.type is FieldType.CATEGORY and spec_field.allowed:
            found.append(Bins(spec_field.name, "category", categories=tuple(spec_field.allowed)))
    score = tuple(float(v) for v in np.linspace(0.0, 1.0, SCORE_BINS + 1)[1:-1])
    return [*found, Bins(SCORE, "numeric", edges=score)]


class ReferenceCounter:
    """Exact counts per bin, added row by row (each trainer rank keeps one; they are summed)."""

    def __init__(self, bins: Sequence[Bins]) -> None:
        self.bins = list(bins)
        self.counts = {b.name: np.zeros(b.size, dtype=np.int64) for b in self.bins}

    def add_rows(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Count the feature values of `rows`."""
        self.add_bins(self.bin_rows(rows))

    def bin_rows(self, rows: Iterable[Mapping[str, Any]]) -> npt.NDArray[np.int16]:
        """Each row's bin per feature (a column per feature, -1 where missing), to count later
        or leave out (a buffered row whose subject is forgotten before the release)."""
        rows = list(rows)
        features = [b for b in self.bins if b.name != SCORE]
        found = np.full((len(rows), len(features)), -1, dtype=np.int16)
        for column, b in enumerate(features):
            found[:, column] = b.index([row.get(b.name) for row in rows])
        return found

    def add_bins(self, found: npt.NDArray[np.int16]) -> None:
        """Count rows binned by `bin_rows`."""
        features = [b for b in self.bins if b.name != SCORE]
        for column, b in enumerate(features):
            bins = found[:, column]
            self.counts[b.name] += np.bincount(bins[bins >= 0], minlength=b.size)

    def add_scores(self, scores: Sequence[float]) -> None:
        """Count model scores."""
        score = next(b for b in self.bins if b.name == SCORE)
        self.counts[SCORE] += score.count(list(scores))

    def to_json(self) -> dict[str, list[int]]:
        """Counts as plain lists (gathered across ranks)."""
        return {name: [int(c) for c in counts] for name, counts in self.counts.items()}

    def merge(self, parts: Iterable[Mapping[str, Sequence[int]]]) -> None:
        """Add other ranks' counts."""
        for part in parts:
            for name, counts in part.items():
                if name in self.counts:
                    self.counts[name] += np.asarray(counts, dtype=np.int64)

    def histograms(self) -> int:
        """How many histograms a reference of this counter holds (each costs ε_ref/H)."""
        return len(self.bins)

    def reference(self, source: str, privacy: dict[str, Any] | None = None) -> dict[str, Any]:
        """The card's `reference` object from these (already noised, where needed) counts."""
        features = {b.name: {**b.to_dict(), "counts": [max(int(c), 0) for c in
                                                        self.counts[b.name]]}
                    for b in self.bins}
        score = features.pop(SCORE)
        return {"features": features, "score": score, "source": source,
                "rows": int(sum(features[next(iter(features))]["counts"])) if features else 0,
                "privacy": privacy or {"noise": "none"}}

    def noise(self, epsilon: float, events_per_subject: int) -> dict[str, Any]:
        """Replace the counts with OpenDP Laplace-noised ones (ε-DP per subject over all
        histograms); returns the privacy facts for the card."""
        import opendp.prelude as dp

        dp.enable_features("contrib")
        per = epsilon / len(self.bins)
        scale = events_per_subject / per
        mechanism = dp.m.make_laplace(dp.vector_domain(dp.atom_domain(T=int)),
                                      dp.l1_distance(T=int), scale)
        spent = float(mechanism.map(events_per_subject))  # type: ignore[no-untyped-call]
        if spent > per * (1 + 1e-9):
            raise ValueError(f"OpenDP's map gives ε {spent} per histogram, over {per}")
        for name, counts in self.counts.items():
            self.counts[name] = np.asarray(mechanism([int(c) for c in counts]), dtype=np.int64)
        return {"noise": "laplace", "library": "opendp (discrete Laplace)",
                "epsilon": spent * len(self.bins), "epsilon_per_histogram": spent,
                "histograms": len(self.bins), "scale": scale,
                "sensitivity": f"{events_per_subject} per histogram (rows per subject)",
                "accountant": "pure ε-DP as RDP min(ε, αε²/2) (Bun & Steinke 2016), "
                              "composed into the release's curve",
                "data": "the release's contribution-bounded training rows"}


def reference_curve(epsilon: float, histograms: int) -> list[float]:
    """The RDP curve (at the ledger's orders) of `histograms` pure ε/H-DP releases."""
    if epsilon <= 0:
        return [0.0] * len(ORDERS)
    per = epsilon / histograms
    return [histograms * min(per, alpha * per * per / 2) for alpha in ORDERS]


def reference_bins(reference: Mapping[str, Any]) -> list[Bins]:
    """The bins a card's `reference` was counted over (features, then the score)."""
    bins = [Bins.from_dict(name, data) for name, data in reference["features"].items()]
    return [*bins, Bins.from_dict(SCORE, reference["score"])]
