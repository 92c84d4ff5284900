"""The promotion gate: a candidate is promoted only when no gated metric is worse than the live
model's (on the same held-out rows) by more than the tolerance and its fairness differences
stay within bounds; otherwise it is refused with one reason per failed check."""

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
) -> GateResult:
    """Apply the gate to a candidate's metrics against the live model's."""
    reasons: list[str] = []
    if not candidate.get("validation_rows"):
        reasons.append("no held-out rows to evaluate on")
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
