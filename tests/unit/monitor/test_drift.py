"""Drift statistics against a DP-noised reference built exactly as the trainer builds it:
unshifted traffic raises no alert over 10 windows; `amount` ×3 and a changed category share are
detected within one window, on exactly those features."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
from scipy.stats import wasserstein_distance

from lepton.generators import transactions
from services.monitor.drift import effective_rows, wasserstein, window_drift
from shared.datasets import load_spec
from shared.models.reference import SCORE, ReferenceCounter, spec_bins

WINDOW = 1000


def _rows(count: int, seed: int) -> list[dict[str, Any]]:
    # a large customer pool: rows close to independent, as in a real stream
    return [dict(e.payload) for e in transactions(count, seed=seed, customers=50_000)]


def _scores(rows: list[dict[str, Any]], seed: int) -> list[float]:
    rng = random.Random(seed)
    return [min(1.0, rng.random() * 0.2 + (0.6 if r["is_fraud"] else 0.0)) for r in rows]


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    rows = _rows(20_000, seed=1)
    counter = ReferenceCounter(spec_bins(load_spec("transactions")))
    counter.add_rows(rows)
    counter.add_scores(_scores(rows, 1))
    return counter.reference("test", counter.noise(1.0, events_per_subject=1))


def _drifted(reference: dict[str, Any], rows: list[dict[str, Any]], seed: int,
             small: int = WINDOW) -> set[str]:
    results = window_drift(reference, rows, _scores(rows, seed), alpha=0.01,
                           small_window=small, distance_threshold=0.1)
    assert {r.test for r in results} <= {"ks", "chi2", "wasserstein", "jensenshannon"}
    return {r.feature for r in results if r.drifted and r.feature != SCORE}


def test_reference_is_noised_with_its_epsilon_stated(reference: dict[str, Any]) -> None:
    privacy = reference["privacy"]
    assert privacy["noise"] == "laplace" and privacy["epsilon"] == pytest.approx(1.0)
    assert privacy["histograms"] == len(reference["features"]) + 1
    assert abs(reference["rows"] - 20_000) < 2_000  # noisy, but near the true count
    assert {"amount", "merchant_category", "hour", "region", "card_present"} <= set(
        reference["features"])


def test_unshifted_traffic_raises_no_alert_over_ten_windows(reference: dict[str, Any]) -> None:
    live = _rows(10 * WINDOW, seed=2)
    alerts = [_drifted(reference, live[i * WINDOW:(i + 1) * WINDOW], seed=i) for i in range(10)]
    assert alerts == [set()] * 10


def test_shifted_amount_and_category_share_are_detected_within_one_window(
        reference: dict[str, Any]) -> None:
    rows = _rows(WINDOW, seed=3)
    for i, row in enumerate(rows):
        row["amount"] = row["amount"] * 3
        if i % 3 == 0:
            row["merchant_category"] = "electronics"  # ~6 % of traffic becomes ~37 %
    assert _drifted(reference, rows, seed=3) == {"amount", "merchant_category"}


def test_large_windows_use_distances_with_the_same_verdicts(reference: dict[str, Any]) -> None:
    rows = _rows(4 * WINDOW, seed=4)
    assert _drifted(reference, rows, seed=4, small=WINDOW) == set()
    for row in rows:
        row["amount"] = row["amount"] * 3
    results = window_drift(reference, rows, _scores(rows, 4), alpha=0.01, small_window=WINDOW,
                           distance_threshold=0.1)
    amount = next(r for r in results if r.feature == "amount")
    assert amount.test == "wasserstein" and amount.drifted and amount.p_value is None


def test_a_noisier_reference_counts_as_fewer_rows() -> None:
    assert effective_rows(10_000, 0.0, 20) == 10_000
    assert effective_rows(10_000, 10.0, 20) == pytest.approx(10_000 ** 2 / 14_000)
    assert effective_rows(10_000, 100.0, 20) < 300


def test_a_noised_reference_raises_no_distance_alarm_on_unshifted_traffic() -> None:
    """The reference's own noise moves the distances; the margin keeps it from alarming.
    Seeded continuous Laplace stands in for OpenDP's (unseedable) discrete Laplace, at the
    scale the fixture's ε = 1 over its histograms gives."""
    rows = _rows(20_000, seed=1)
    counter = ReferenceCounter(spec_bins(load_spec("transactions")))
    counter.add_rows(rows)
    counter.add_scores(_scores(rows, 1))
    exact = {name: counts.copy() for name, counts in counter.counts.items()}
    scale = len(counter.bins) / 1.0
    live = _rows(4 * WINDOW, seed=4)
    rng = np.random.default_rng(7)
    flagged = []
    for _ in range(40):
        for name, counts in exact.items():
            counter.counts[name] = np.rint(counts + rng.laplace(0, scale, counts.size)).astype(
                np.int64)
        noised = counter.reference("test", {"noise": "laplace", "scale": scale})
        results = window_drift(noised, live, _scores(live, 4), alpha=0.01,
                               small_window=WINDOW, distance_threshold=0.1)
        assert all(r.threshold > 0.1 for r in results)
        flagged += [r.feature for r in results if r.drifted]
    assert flagged == []


def test_the_vectorised_wasserstein_is_scipys() -> None:
    rng = np.random.default_rng(3)
    centres = np.sort(rng.uniform(-5, 50, 12))
    reference = rng.integers(0, 50, 12).astype(np.float64)
    live = rng.integers(0, 50, (6, 12)).astype(np.float64)
    expected = [wasserstein_distance(centres, centres, reference, row) for row in live]
    assert wasserstein(centres, reference, live) == pytest.approx(expected, rel=1e-12)
    assert float(wasserstein(centres, reference, live[0])) == pytest.approx(expected[0])
