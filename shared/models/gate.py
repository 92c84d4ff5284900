"""The promotion gate: a candidate is promoted only when it beats the trivial baseline on the
held-out rows (ROC-AUC at least the spec's `min_auc` and F1 above always predicting the
positive class: refused `below_baseline` otherwise, with or without a live model), no gated
metric is worse than the live model's (on the same rows) by more than the tolerance, and its
fairness differences (between groups with enough evidence to compare) stay within bounds;
otherwise it is refused with one reason per failed check. The trainer and the federation
coordinator (on the sites' pooled held-out metrics) apply the same gate."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class GateResult:
    """The gate's verdict and why."""

    promoted: bool
    reasons: list[str] = field(default_factory=list)
    compared_to: int | None = None

    def to_dict(self, tolerance: float) -> dict[str, Any]:
        """JSON-ready form for the model card and the decision."""
        return {"status": "promoted" if self.promoted else "refused", "reasons": self.reasons,
                "compared_to": self.compared_to, "tolerance": tolerance}


BELOW_BASELINE = "below_baseline"


def below_baseline(candidate: Mapping[str, float], min_auc: float) -> list[str]:
    """Reasons the candidate does not beat the trivial baseline (empty when it does)."""
    reasons = []
    auc = candidate.get("roc_auc")
    if auc is None or auc < min_auc:
        shown = "undefined (one class only)" if auc is None else f"{auc:.4f}"
        reasons.append(f"{BELOW_BASELINE}: roc_auc {shown} is below min_auc {min_auc}")
    rate = float(candidate.get("positive_rate", 0.0))
    trivial = 2 * rate / (1 + rate)
    f1 = float(candidate.get("f1", 0.0))
    if f1 <= trivial:
        reasons.append(f"{BELOW_BASELINE}: f1 {f1:.4f} is not above always-positive "
                       f"{trivial:.4f}")
    return reasons


MIN_GROUP_ROWS = 30  # held-out rows a group needs for its positive rate to be compared
MIN_GROUP_POSITIVES = 30  # held-out positives a group needs for its true-positive rate


def group_differences(attribute: str, per_group: Mapping[str, Mapping[str, float]], *,
                      min_rows: int = MIN_GROUP_ROWS, min_positives: int = MIN_GROUP_POSITIVES
                      ) -> dict[str, Any]:
    """The fairness record of per-group rates (`rows`, `positives`, `positive_rate`,
    `true_positive_rate`): the largest positive-rate difference between groups of at least
    `min_rows` rows and the largest true-positive-rate difference between groups of at least
    `min_positives` positives. Smaller groups are listed in `not_judged`, not compared: their
    rates are mostly noise, and a gate on noise refuses at random."""
    floor = max(min_positives, 1)  # a group without positives has no true-positive rate
    parity = [g["positive_rate"] for g in per_group.values() if g["rows"] >= min_rows]
    opportunity = [g["true_positive_rate"] for g in per_group.values() if g["positives"] >= floor]
    out: dict[str, Any] = {
        "attribute": attribute,
        "demographic_parity_diff": float(max(parity) - min(parity)) if len(parity) > 1 else 0.0,
        "equal_opportunity_diff":
            float(max(opportunity) - min(opportunity)) if len(opportunity) > 1 else 0.0,
        "groups": {name: dict(g) for name, g in per_group.items()},
        "min_group_rows": min_rows, "min_group_positives": min_positives,
    }
    not_judged = {
        "demographic_parity": sorted(n for n, g in per_group.items() if g["rows"] < min_rows),
        "equal_opportunity": sorted(n for n, g in per_group.items() if g["positives"] < floor),
    }
    if any(not_judged.values()):
        out["not_judged"] = not_judged
    return out


def decide(
    candidate: Mapping[str, float],
    candidate_fairness: Mapping[str, Any],
    live: Mapping[str, float] | None,
    live_version: int | None,
    *,
    metrics: Sequence[str],
    tolerance: float,
    max_dp_diff: float,
    max_eo_diff: float,
    min_auc: float = 0.6,
) -> GateResult:
    """Apply the gate to a candidate's metrics against the live model's."""
    reasons: list[str] = []
    if not candidate.get("validation_rows"):
        reasons.append("no held-out rows to evaluate on")
    else:
        reasons.extend(below_baseline(candidate, min_auc))
    if live is not None:
        for name in metrics:
            if name in candidate and name in live and candidate[name] < live[name] - tolerance:
                reasons.append(f"{name} {candidate[name]:.4f} is worse than live v{live_version}"
                               f" {live[name]:.4f} by more than {tolerance}")
    for key, bound in (("demographic_parity_diff", max_dp_diff),
                       ("equal_opportunity_diff", max_eo_diff)):
        value = candidate_fairness.get(key)
        if isinstance(value, int | float) and value > bound:
            reasons.append(f"{key} {value:.4f} on {candidate_fairness.get('attribute')} "
                           f"exceeds {bound}")
    return GateResult(not reasons, reasons, live_version)
