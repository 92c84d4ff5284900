"""The card's reference histograms in model mode: OpenDP-noised counts whose ε is part of the
release's charge (composed with DP-SGD's RDP curve, σ calibrated so the total stays within the
release budget); bins come from the spec's public bounds only."""

from __future__ import annotations

import numpy as np
import pytest

from services.trainer.dp import Plan
from shared.accounting import ORDERS, compose
from shared.datasets import load_spec
from shared.models.reference import SCORE, ReferenceCounter, reference_curve, spec_bins


def test_release_with_reference_stays_within_its_budget_and_charges_both() -> None:
    histograms = len(spec_bins(load_spec("transactions")))
    extra = reference_curve(0.2, histograms)
    plain = Plan.make(4000, 32, 2, 1.0, 1e-5, 1.0, 1)
    plan = Plan.make(4000, 32, 2, 1.0, 1e-5, 1.0, 1, extra=(extra, 0.2))
    assert plan.epsilon() <= 1.0 + 1e-9
    assert plan.noise_multiplier > plain.noise_multiplier  # DP-SGD gets less of the budget
    assert plan.curve() == pytest.approx(compose(plan.sgd_curve(), extra))  # what is charged
    described = plan.describe()
    assert described["reference_epsilon"] == 0.2
    assert described["dp_sgd_epsilon"] < described["epsilon"]


def test_reference_curve_is_a_valid_bound_for_pure_dp() -> None:
    curve = reference_curve(0.5, 10)
    per = 0.05
    for alpha, value in zip(ORDERS, curve, strict=True):
        assert value <= 10 * per + 1e-12  # never above the pure-ε bound
        assert value == pytest.approx(10 * min(per, alpha * per * per / 2))
    assert reference_curve(0.0, 10) == [0.0] * len(ORDERS)


def test_a_reference_too_large_for_the_budget_is_refused() -> None:
    with pytest.raises(ValueError, match="no budget"):
        Plan.make(4000, 32, 2, 0.1, 1e-5, 1.0, 1, extra=(reference_curve(0.5, 10), 0.5))


def test_counts_are_noised_by_opendp_with_the_stated_scale() -> None:
    spec = load_spec("transactions")
    counter = ReferenceCounter(spec_bins(spec))
    rows = [{"amount": 10.0 + i % 50, "merchant_category": "fuel", "hour": i % 24,
             "card_present": i % 2 == 0} for i in range(3000)]
    counter.add_rows(rows)
    counter.add_scores([0.1] * 3000)
    exact = {k: v.copy() for k, v in counter.counts.items()}
    privacy = counter.noise(0.5, events_per_subject=2)
    h = counter.histograms()
    assert privacy["epsilon"] == pytest.approx(0.5)
    assert privacy["scale"] == pytest.approx(2 * h / 0.5)
    diffs = np.concatenate([counter.counts[k] - exact[k] for k in exact])
    assert np.any(diffs != 0)
    # discrete Laplace with scale b has standard deviation close to b·√2
    assert 0.5 * privacy["scale"] < float(np.std(diffs)) < 2 * privacy["scale"]
    reference = counter.reference("test", privacy)
    assert min(min(f["counts"]) for f in reference["features"].values()) >= 0
    assert reference["score"]["kind"] == "numeric" and SCORE not in reference["features"]


def test_bins_come_from_public_bounds_only() -> None:
    bins = {b.name: b for b in spec_bins(load_spec("transactions"))}
    assert bins["hour"].size == 24 + 2  # one per hour, plus under/overflow
    assert bins["amount"].edges[0] == 0 and bins["amount"].edges[-1] == pytest.approx(5000)
    assert bins["merchant_category"].size == 11  # ten allowed values and `other`
    assert "transaction_id" not in bins and "age_band" not in bins  # not model features
