"""The held-out metrics of a federated candidate, pooled over the sites' answers.

Consumes each site's histograms of held-out logits per label (and per sensitive group) over
shared.federation.LOGIT_EDGES; produces the metrics the gate reads (accuracy, precision,
recall, F1, ROC-AUC, positive rate, validation rows, threshold), the fairness differences, and
each site's own ROC-AUC and F1. Thresholds are bin edges (0.1 in logit): the spec's fixed
threshold rounded up to the next edge, or `tune`'s F1-maximising edge over the pooled counts;
ROC-AUC counts a positive and a negative in the same bin as half a pair (exact up to that
binning). No row or score leaves a site, only these counts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from shared.federation import LOGIT_EDGES
from shared.models.gate import MIN_GROUP_POSITIVES, MIN_GROUP_ROWS, group_differences

Counts = npt.NDArray[np.float64]


def _counts(evaluation: Mapping[str, Any]) -> tuple[Counts, Counts]:
    positive = np.asarray(evaluation.get("positive", []), dtype=np.float64)
    negative = np.asarray(evaluation.get("negative", []), dtype=np.float64)
    bins = len(LOGIT_EDGES) - 1
    if positive.shape != (bins,) or negative.shape != (bins,) or (positive < 0).any() \
            or (negative < 0).any():
        raise ValueError(f"histograms need {bins} non-negative counts per label")
    return positive, negative


def _at(positive: Counts, negative: Counts, edge: int) -> dict[str, float]:
    tp, fp = positive[edge:].sum(), negative[edge:].sum()
    fn, tn = positive[:edge].sum(), negative[:edge].sum()
    rows = tp + fp + fn + tn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": float((tp + tn) / rows) if rows else 0.0, "precision": float(precision),
            "recall": float(recall), "f1": float(f1)}


def _auc(positive: Counts, negative: Counts) -> float | None:
    pairs = positive.sum() * negative.sum()
    if not pairs:
        return None
    above = np.cumsum(positive[::-1])[::-1] - positive  # positives in higher bins
    return float(np.sum(negative * (above + 0.5 * positive)) / pairs)


def _edge(positive: Counts, negative: Counts, threshold: float | str) -> int:
    if threshold == "tune":
        scores = [_at(positive, negative, j)["f1"] for j in range(1, len(LOGIT_EDGES) - 1)]
        return 1 + int(np.argmax(scores))
    logit = math.log(float(threshold) / (1 - float(threshold)))
    return int(np.clip(np.searchsorted(LOGIT_EDGES, logit), 1, len(LOGIT_EDGES) - 2))


def metrics(positive: Counts, negative: Counts, edge: int) -> dict[str, float]:
    """Quality at the threshold `LOGIT_EDGES[edge]` (roc_auc only with both classes)."""
    rows = float(positive.sum() + negative.sum())
    out = {**_at(positive, negative, edge), "validation_rows": rows,
           "positive_rate": float(positive.sum() / rows) if rows else 0.0,
           "threshold": float(1 / (1 + math.exp(-LOGIT_EDGES[edge])))}
    auc = _auc(positive, negative)
    if auc is not None:
        out["roc_auc"] = auc
    return out


def pool(answers: Mapping[str, Mapping[str, Any]], threshold: float | str,
         attribute: str | None, *, min_rows: int = MIN_GROUP_ROWS,
         min_positives: int = MIN_GROUP_POSITIVES
         ) -> tuple[dict[str, float], dict[str, Any], dict[str, Any]]:
    """(pooled metrics, pooled fairness, per-site metrics) of one model's evaluations, keyed
    by site; fairness compares groups of at least `min_rows` rows and `min_positives`
    positives."""
    bins = len(LOGIT_EDGES) - 1
    positive, negative = np.zeros(bins), np.zeros(bins)
    groups: dict[str, tuple[Counts, Counts]] = {}
    for evaluation in answers.values():
        p, n = _counts(evaluation)
        positive, negative = positive + p, negative + n
        for name, counts in dict(evaluation.get("groups", {})).items():
            gp, gn = _counts(counts)
            old = groups.get(str(name), (np.zeros(bins), np.zeros(bins)))
            groups[str(name)] = (old[0] + gp, old[1] + gn)
    edge = _edge(positive, negative, threshold)
    pooled = metrics(positive, negative, edge)
    per_site = {site: {k: v for k, v in metrics(*_counts(e), edge).items()
                       if k in ("roc_auc", "f1", "validation_rows", "positive_rate")}
                for site, e in sorted(answers.items())}
    return pooled, _fairness(groups, edge, attribute, min_rows, min_positives), per_site


def _fairness(groups: Mapping[str, tuple[Counts, Counts]], edge: int, attribute: str | None,
              min_rows: int, min_positives: int) -> dict[str, Any]:
    if attribute is None or not groups:
        return {}
    per_group: dict[str, dict[str, float]] = {}
    for name, (positive, negative) in sorted(groups.items()):
        rows = positive.sum() + negative.sum()
        if not rows:
            continue
        entry = {"rows": float(rows), "positives": float(positive.sum()),
                 "positive_rate": float((positive[edge:].sum() + negative[edge:].sum()) / rows)}
        if positive.sum():
            entry["true_positive_rate"] = float(positive[edge:].sum() / positive.sum())
        per_group[name] = entry
    return group_differences(attribute, per_group, min_rows=min_rows,
                             min_positives=min_positives)
