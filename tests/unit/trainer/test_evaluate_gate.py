"""Evaluation metrics, fairness differences and the promotion gate's verdicts."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from services.trainer.evaluate import (
    expected_calibration_error,
    fairness,
    quality,
    tune_threshold,
)
from shared.models.gate import decide

GATE = {"metrics": ("f1", "roc_auc"), "tolerance": 0.02, "max_dp_diff": 0.2,
        "max_eo_diff": 0.2}


def test_quality_matches_sklearn_and_calibration() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400).astype(np.float64)
    probs = np.clip(labels * 0.6 + rng.uniform(0, 0.4, 400), 0, 1)
    metrics = quality(probs, labels)
    assert metrics["f1"] == pytest.approx(f1_score(labels, probs >= 0.5))
    assert metrics["roc_auc"] == pytest.approx(roc_auc_score(labels, probs))
    assert metrics["brier"] == pytest.approx(np.mean((probs - labels) ** 2))
    assert metrics["validation_rows"] == 400
    assert 0 < metrics["ece"] < 0.5


def test_ece_is_zero_when_calibrated_and_large_when_not() -> None:
    probs = np.array([0.25] * 4 + [0.75] * 4)
    labels = np.array([1, 0, 0, 0, 1, 1, 1, 0], dtype=np.float64)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0)
    assert expected_calibration_error(np.full(4, 0.95), np.zeros(4)) == pytest.approx(0.95)


def test_single_class_has_no_auc_and_empty_has_no_metrics() -> None:
    assert "roc_auc" not in quality(np.array([0.2, 0.7]), np.array([1.0, 1.0]))
    assert quality(np.array([]), np.array([]))["validation_rows"] == 0


def test_fairness_differences_per_group() -> None:
    probs = np.array([0.9, 0.9, 0.1, 0.1, 0.9, 0.1, 0.1, 0.1])
    labels = np.array([1, 0, 1, 0, 1, 1, 0, 0], dtype=np.float64)
    groups = ["a", "a", "a", "a", "b", "b", "b", "b"]
    fair = fairness(probs, labels, groups, "band", min_rows=1, min_positives=1)
    # positive rate a = 2/4, b = 1/4; TPR a = 1/2, b = 1/2
    assert fair["demographic_parity_diff"] == pytest.approx(0.25)
    assert fair["equal_opportunity_diff"] == pytest.approx(0.0)
    assert fair["groups"]["a"]["rows"] == 4
    assert fairness(probs, labels, groups, None) == {}


def test_groups_with_too_little_evidence_are_listed_not_compared() -> None:
    # group c: 40 rows, 4 positives, all missed (TPR 0 against a's and b's 1.0)
    rng = np.random.default_rng(3)
    groups = ["a"] * 200 + ["b"] * 200 + ["c"] * 40
    labels = np.array([1.0] * 40 + [0.0] * 160 + [1.0] * 40 + [0.0] * 160
                      + [1.0] * 4 + [0.0] * 36)
    probs = np.where(labels == 1, 0.9, rng.uniform(0, 0.4, len(labels)))
    probs[400:404] = 0.1
    everything = fairness(probs, labels, groups, "band", min_rows=1, min_positives=1)
    assert everything["equal_opportunity_diff"] == pytest.approx(1.0)
    judged = fairness(probs, labels, groups, "band")  # the defaults: 30 and 30
    assert judged["equal_opportunity_diff"] == pytest.approx(0.0)
    assert judged["not_judged"] == {"demographic_parity": [], "equal_opportunity": ["c"]}
    assert judged["groups"]["c"]["positives"] == 4
    assert (judged["min_group_rows"], judged["min_group_positives"]) == (30, 30)
    assert decide({"f1": 0.9, "roc_auc": 0.9, "positive_rate": 0.2, "validation_rows": 440},
                  judged, None, None, **GATE).promoted
    assert not decide({"f1": 0.9, "roc_auc": 0.9, "positive_rate": 0.2,
                       "validation_rows": 440}, everything, None, None, **GATE).promoted


def test_gate_promotes_first_and_equal_models() -> None:
    first = decide({"f1": 0.5, "roc_auc": 0.7, "positive_rate": 0.2, "validation_rows": 10},
                   {}, None, None, **GATE)
    assert first.promoted
    assert first.compared_to is None
    same = decide({"f1": 0.9, "roc_auc": 0.95, "positive_rate": 0.5, "validation_rows": 10}, {},
                  {"f1": 0.91, "roc_auc": 0.95}, 3, **GATE)
    assert same.promoted
    assert same.compared_to == 3


def test_gate_refuses_worse_quality_unfairness_and_no_data() -> None:
    worse = decide({"f1": 0.80, "roc_auc": 0.99, "positive_rate": 0.5, "validation_rows": 10},
                   {},
                   {"f1": 0.90, "roc_auc": 0.95}, 4, **GATE)
    assert not worse.promoted
    assert len(worse.reasons) == 1
    assert worse.reasons[0].startswith("f1 0.8000 is worse than live v4 0.9000")
    unfair = decide({"f1": 0.9, "roc_auc": 0.9, "positive_rate": 0.5, "validation_rows": 10},
                    {"attribute": "age_band", "demographic_parity_diff": 0.3,
                     "equal_opportunity_diff": 0.21}, None, None, **GATE)
    assert not unfair.promoted
    assert [r.split()[0] for r in unfair.reasons] == ["demographic_parity_diff",
                                                      "equal_opportunity_diff"]
    empty = decide({"validation_rows": 0}, {}, None, None, **GATE)
    assert empty.reasons == ["no held-out rows to evaluate on"]


def test_gate_floors_refuse_below_baseline_even_without_a_live_model() -> None:
    # always-positive at a 40 % positive rate has F1 2·0.4/1.4 = 0.5714
    random_auc = decide({"f1": 0.7, "roc_auc": 0.55, "positive_rate": 0.4,
                         "validation_rows": 100}, {}, None, None, **GATE)
    assert not random_auc.promoted
    assert random_auc.reasons == [
        "below_baseline: roc_auc 0.5500 is below min_auc 0.6"]
    trivial = decide({"f1": 0.5714, "roc_auc": 0.8, "positive_rate": 0.4,
                      "validation_rows": 100}, {}, None, None, **GATE)
    assert [r.split(":")[0] for r in trivial.reasons] == ["below_baseline"]
    assert "always-positive 0.5714" in trivial.reasons[0]
    strict = decide({"f1": 0.9, "roc_auc": 0.8, "positive_rate": 0.4, "validation_rows": 100},
                    {}, None, None, **{**GATE, "min_auc": 0.85})
    assert strict.reasons[0].startswith("below_baseline: roc_auc 0.8000")
    ok = decide({"f1": 0.58, "roc_auc": 0.61, "positive_rate": 0.4, "validation_rows": 100},
                {}, None, None, **GATE)
    assert ok.promoted


def test_tuned_threshold_finds_rare_positives_that_half_misses() -> None:
    rng = np.random.default_rng(3)
    labels = (rng.random(2000) < 0.03).astype(np.float64)
    probs = np.clip(0.02 + 0.25 * labels + rng.normal(0, 0.05, 2000), 0, 1)
    assert quality(probs, labels)["f1"] == 0.0
    threshold = tune_threshold(probs, labels)
    assert 0.05 < threshold < 0.5
    assert quality(probs, labels, threshold)["f1"] > 0.8
    assert tune_threshold(probs, np.zeros(2000)) == 0.5
