"""Pooled held-out metrics from the sites' histograms equal scikit-learn's on the union of
their scores (F1 exactly at a fixed threshold; ROC-AUC to within the 0.1-logit binning), and
fairness differences come from the pooled per-group counts."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from services.federation.pooled import pool
from shared.federation import histograms


def _site(seed: int, rows: int, shift: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (rng.random(rows) < 0.1).astype(np.float64)
    logits = rng.normal(shift, 1.5, rows) + 2.5 * labels
    groups = rng.choice(["young", "old"], rows)
    return logits, labels, groups


def _answer(logits: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> dict:
    return {**histograms(logits, labels),
            "groups": {g: histograms(logits[groups == g], labels[groups == g])
                       for g in ("young", "old")}}


def test_pooled_metrics_match_the_union() -> None:
    sites = {"a": _site(1, 3000, -2.0), "b": _site(2, 1000, 0.0), "c": _site(3, 500, 1.0)}
    logits = np.concatenate([s[0] for s in sites.values()])
    labels = np.concatenate([s[1] for s in sites.values()])
    groups = np.concatenate([s[2] for s in sites.values()])
    answers = {name: _answer(*s) for name, s in sites.items()}
    metrics, fairness, per_site = pool(answers, 0.5, "age")
    assert metrics["f1"] == pytest.approx(f1_score(labels, logits >= 0))
    assert metrics["roc_auc"] == pytest.approx(roc_auc_score(labels, logits), abs=2e-3)
    assert metrics["validation_rows"] == len(labels)
    assert metrics["positive_rate"] == pytest.approx(labels.mean())
    assert per_site["b"]["roc_auc"] == pytest.approx(
        roc_auc_score(sites["b"][1], sites["b"][0]), abs=3e-3)
    rates = {g: float((logits[groups == g] >= 0).mean()) for g in ("young", "old")}
    assert fairness["demographic_parity_diff"] == pytest.approx(abs(rates["young"]
                                                                    - rates["old"]))
    tuned, _, _ = pool(answers, "tune", None)
    assert tuned["f1"] >= metrics["f1"]


def test_malformed_histograms_are_refused() -> None:
    with pytest.raises(ValueError, match="non-negative counts"):
        pool({"a": {"positive": [1, 2], "negative": [3, 4]}}, 0.5, None)
