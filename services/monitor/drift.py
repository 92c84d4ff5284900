"""Drift of one window against a card's reference, per feature and on the score; scipy does the
statistics (after Evidently's presets):

- windows of at most `small_window` predictions: two-sample KS on the binned CDFs for numbers
  (p from scipy's `kstwo`, as `ks_2samp` computes it; conservative on grouped data) and the
  chi-square test of homogeneity for categories (`chi2_contingency`, bins expected below 5
  pooled); drift when p < alpha / tests (Bonferroni: `alpha` is the window's family-wise
  false-alarm rate);
- larger windows: Wasserstein distance over the bin centres normed by the reference's standard
  deviation for numbers, Jensen-Shannon distance (base 2) for categories; drift above the
  distance threshold (0.1) plus the noise margin below.

A DP-noised reference is worth fewer rows than it counts: with Laplace scale b over B bins its
effective size is m_eff = m² / (m + 2b²B) (the noise's variance added to the multinomial's), and
the tests use m_eff, so the noise does not raise false alarms. Both distances are metrics, so
d(live, noised) ≤ d(live, true) + d(true, noised): the distance path adds to its threshold the
99th percentile of d(noised, noised re-noised at scale b) over seeded draws, an estimate of
d(true, noised), and a window is flagged only when its distance from the true reference is
itself above the threshold (unless the noise exceeded its own 99th percentile).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.spatial.distance import jensenshannon
from scipy.stats import chi2_contingency, kstwo

from shared.models.reference import SCORE, Bins, reference_bins

Counts = npt.NDArray[np.float64]
MIN_EXPECTED = 5.0
NOISE_DRAWS = 100
NOISE_QUANTILE = 0.99


@dataclass(frozen=True)
class FeatureDrift:
    """One feature's comparison of a window with the reference."""

    feature: str
    test: str  # ks | chi2 | wasserstein | jensenshannon | none
    statistic: float
    threshold: float
    p_value: float | None
    drifted: bool
    window: int
    reference_rows: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def effective_rows(rows: float, scale: float, bins: int) -> float:
    """The reference's effective size under Laplace noise of `scale` on each of `bins`."""
    return rows * rows / (rows + 2.0 * scale * scale * bins) if scale > 0 else rows


def _ks(reference: Counts, live: Counts, m: float, n: float) -> tuple[float, float]:
    gap = np.abs(np.cumsum(reference) / reference.sum() - np.cumsum(live) / live.sum())
    statistic = float(gap.max())
    en = max(1, round(n * m / (n + m)))
    return statistic, float(kstwo.sf(statistic, en))


def _chi2(reference: Counts, live: Counts, m: float) -> tuple[float, float] | None:
    table = np.vstack([reference / reference.sum() * m, live])
    table = table[:, table.sum(axis=0) > 0]
    expected = np.outer(table.sum(axis=1), table.sum(axis=0)) / table.sum()
    small = expected.min(axis=0) < MIN_EXPECTED
    if small.any():
        table = np.hstack([table[:, ~small], table[:, small].sum(axis=1, keepdims=True)])
    if table.shape[1] < 2:
        return None
    result = chi2_contingency(table, correction=False)
    return float(result.statistic), float(result.pvalue)


def wasserstein(centres: Counts, reference: Counts, live: Counts) -> Counts:
    """W1 between `reference` and each row of `live`, all counts over the same sorted
    `centres` (scipy's `wasserstein_distance` on that support, vectorised over rows)."""
    gap = np.abs(np.cumsum(reference) / reference.sum()
                 - np.cumsum(live, axis=-1) / live.sum(axis=-1, keepdims=True))
    return np.asarray((gap[..., :-1] * np.diff(centres)).sum(axis=-1), dtype=np.float64)


def _distances(bins: Bins, reference: Counts, live: Counts, spread: float) -> Counts:
    if bins.kind == "numeric":
        return wasserstein(bins.centres(), reference, live) / spread
    return np.asarray(jensenshannon(reference / reference.sum(),
                                    live / live.sum(axis=-1, keepdims=True), base=2, axis=-1),
                      dtype=np.float64)


def noise_margin(bins: Bins, reference: Counts, scale: float, spread: float) -> float:
    """How far Laplace noise of `scale` moves `reference` (99th percentile of seeded draws)."""
    return _margin(bins, tuple(reference.tolist()), scale, spread) if scale > 0 else 0.0


@lru_cache(maxsize=1024)  # a card's reference meets every window of its version
def _margin(bins: Bins, counts: tuple[float, ...], scale: float, spread: float) -> float:
    reference = np.asarray(counts, dtype=np.float64)
    rng = np.random.default_rng(0)
    draws = np.clip(reference + rng.laplace(0.0, scale, (NOISE_DRAWS, reference.size)), 0, None)
    draws = draws[draws.sum(axis=1) > 0]
    if not len(draws):
        return 0.0
    return float(np.quantile(_distances(bins, reference, draws, spread), NOISE_QUANTILE))


def compare(bins: Bins, reference: Sequence[float], live: Sequence[int], *, alpha: float,
            small_window: int, distance_threshold: float, noise_scale: float = 0.0
            ) -> FeatureDrift:
    """Compare one feature's live counts with its reference counts (same bins)."""
    ref = np.clip(np.asarray(reference, dtype=np.float64), 0, None)
    now = np.asarray(live, dtype=np.float64)
    n, rows = float(now.sum()), float(ref.sum())
    m = effective_rows(rows, noise_scale, bins.size)
    if n == 0 or rows == 0:
        return FeatureDrift(bins.name, "none", 0.0, 0.0, None, False, int(n), rows)
    if n <= small_window:
        if bins.kind == "numeric":
            statistic, p = _ks(ref, now, m, n)
            test = "ks"
        else:
            found = _chi2(ref, now, m)
            if found is None:
                return FeatureDrift(bins.name, "none", 0.0, 0.0, None, False, int(n), rows)
            statistic, p = found
            test = "chi2"
        return FeatureDrift(bins.name, test, statistic, alpha, p, p < alpha, int(n), rows)
    spread = 1.0
    if bins.kind == "numeric":
        centres = bins.centres()
        mean = float(np.average(centres, weights=ref))
        spread = float(np.sqrt(np.average((centres - mean) ** 2, weights=ref))) or 1.0
    statistic = float(_distances(bins, ref, now, spread))
    threshold = distance_threshold + noise_margin(bins, ref, noise_scale, spread)
    return FeatureDrift(bins.name, "wasserstein" if bins.kind == "numeric" else "jensenshannon",
                        statistic, threshold, None, statistic > threshold, int(n), rows)


def window_drift(reference: Mapping[str, Any], inputs: Sequence[Mapping[str, Any]],
                 scores: Sequence[float], *, alpha: float, small_window: int,
                 distance_threshold: float) -> list[FeatureDrift]:
    """Every binned feature and the score of a window against a card's `reference`."""
    bins = reference_bins(reference)
    scale = float(reference.get("privacy", {}).get("scale") or 0.0)
    per_test = alpha / len(bins)
    results = []
    for b in bins:
        values = list(scores) if b.name == SCORE else [row.get(b.name) for row in inputs]
        stored = reference["score"] if b.name == SCORE else reference["features"][b.name]
        results.append(compare(b, stored["counts"], b.count(values).tolist(), alpha=per_test,
                               small_window=small_window,
                               distance_threshold=distance_threshold, noise_scale=scale))
    return results
