"""Quality and fairness of a model on held-out rows: accuracy, precision, recall, F1, ROC-AUC,
calibration (expected calibration error, Brier score, log loss), and on the sensitive
attribute the demographic-parity and equal-opportunity differences."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.metrics import (
    accuracy_score,
    brier_score_loss,
    f1_score,
    log_loss,
    precision_score,
    recall_score,
    roc_auc_score,
)

from shared.models.gate import MIN_GROUP_POSITIVES, MIN_GROUP_ROWS, group_differences

THRESHOLD = 0.5
Floats = npt.NDArray[np.float64]


def expected_calibration_error(probs: Floats, labels: Floats, bins: int = 10) -> float:
    """Weighted mean |accuracy - confidence| over equal-width probability bins."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(probs, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        mask = index == b
        if mask.any():
            total += mask.sum() * abs(labels[mask].mean() - probs[mask].mean())
    return float(total / max(len(probs), 1))


def tune_threshold(probs: Floats, labels: Floats, candidates: int = 200) -> float:
    """The score threshold that maximises F1 on these rows (0.5 without both classes)."""
    truth = labels.astype(np.int64)
    if not 0 < truth.sum() < len(truth):
        return THRESHOLD
    grid = np.unique(np.quantile(probs, np.linspace(0.0, 1.0, candidates)))
    scores = [f1_score(truth, (probs >= t).astype(np.int64), zero_division=0) for t in grid]
    return float(grid[int(np.argmax(scores))])


def quality(probs: Floats, labels: Floats, threshold: float = THRESHOLD) -> dict[str, float]:
    """Classification and calibration metrics (roc_auc only when both classes occur)."""
    if len(labels) == 0:
        return {"validation_rows": 0.0, "threshold": threshold}
    predicted = (probs >= threshold).astype(np.int64)
    truth = labels.astype(np.int64)
    metrics = {
        "accuracy": float(accuracy_score(truth, predicted)),
        "precision": float(precision_score(truth, predicted, zero_division=0)),
        "recall": float(recall_score(truth, predicted, zero_division=0)),
        "f1": float(f1_score(truth, predicted, zero_division=0)),
        "ece": expected_calibration_error(probs, labels),
        "brier": float(brier_score_loss(truth, probs)),
        "log_loss": float(log_loss(truth, np.clip(probs, 1e-7, 1 - 1e-7), labels=[0, 1])),
        "validation_rows": float(len(labels)),
        "positive_rate": float(truth.mean()),
        "threshold": threshold,
    }
    if 0 < truth.sum() < len(truth):
        metrics["roc_auc"] = float(roc_auc_score(truth, probs))
    return metrics


def fairness(probs: Floats, labels: Floats, groups: Sequence[str | None], attribute: str | None,
             threshold: float = THRESHOLD, *, min_rows: int = MIN_GROUP_ROWS,
             min_positives: int = MIN_GROUP_POSITIVES) -> dict[str, Any]:
    """Per-group positive and true-positive rates and their largest differences between
    groups with at least `min_rows` rows and `min_positives` positives."""
    if attribute is None:
        return {}
    predicted = probs >= threshold
    per_group: dict[str, dict[str, float]] = {}
    names = np.array(["" if g is None else g for g in groups], dtype=object)
    for name in sorted({g for g in groups if g is not None}):
        mask = names == name
        positives = mask & (labels == 1)
        entry = {"rows": float(mask.sum()), "positives": float(positives.sum()),
                 "positive_rate": float(predicted[mask].mean())}
        if positives.any():
            entry["true_positive_rate"] = float(predicted[positives].mean())
        per_group[name] = entry
    return group_differences(attribute, per_group, min_rows=min_rows,
                             min_positives=min_positives)
