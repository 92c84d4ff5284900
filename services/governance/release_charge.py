"""Sealing a trainer's `release_charge` decision: check it, charge the release ledger (every
contributing subject and the dataset, atomically, once per release id) and return the audit
fields. The verdict (charged or refused, with the reason) lands in Redis, where the trainer
waits for it before announcing; a refused or invalid charge is audited like an accepted one.

The audit leaf names how many subjects took part and a digest of their sorted ids, not the ids
(the on-disk release log keeps them, to rebuild the ledger)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from typing import Any

from services.governance.privacy import DatasetPrivacy
from services.governance.records import Reason
from services.governance.releases import ReleaseCharge, ReleaseLedger
from services.governance.telemetry import GovernanceMetrics
from shared.accounting import ORDERS

DatasetLookup = Callable[[str], "DatasetPrivacy | str"]
MAX_SUBJECTS = 200_000


def _curve(detail: dict[str, Any]) -> tuple[float, ...] | None:
    orders, rdp = detail.get("orders"), detail.get("rdp")
    if not isinstance(orders, list) or not isinstance(rdp, list) or len(rdp) != len(ORDERS):
        return None
    if [float(a) for a in orders if isinstance(a, int | float)] != list(ORDERS):
        return None
    curve: list[float] = []
    for value in rdp:
        if value is None:
            curve.append(math.inf)  # JSON has no inf: an order this release does not bound
        elif isinstance(value, int | float) and not isinstance(value, bool) and value >= 0 \
                and math.isfinite(value):
            curve.append(float(value))
        else:
            return None
    return tuple(curve)


def _subjects(detail: dict[str, Any]) -> tuple[str, ...] | None:
    subjects = detail.get("subjects")
    if not isinstance(subjects, list) or not subjects or len(subjects) > MAX_SUBJECTS:
        return None
    if not all(isinstance(s, str) and s for s in subjects):
        return None
    return tuple(subjects)


def charge_release(name: str | None, detail: dict[str, Any], releases: ReleaseLedger,
                   dataset: DatasetLookup, metrics: GovernanceMetrics) -> dict[str, Any]:
    """Charge one release; the audit fields (epsilon, delta, reason, detail) to seal."""
    public = {k: v for k, v in detail.items() if k != "subjects"}
    release_id = detail.get("release_id")
    privacy = dataset(name) if name else None
    if not isinstance(release_id, str) or not release_id or len(release_id) > 200:
        return {"reason": Reason.INVALID_CHARGE, "detail": {**public, "error": "release_id"}}
    assert name is not None
    curve, subjects = _curve(detail), _subjects(detail)
    error = ("dataset" if not isinstance(privacy, DatasetPrivacy) or privacy.local
             else "rdp curve" if curve is None else "subjects" if subjects is None else "")
    if error or not isinstance(privacy, DatasetPrivacy) or curve is None or subjects is None:
        releases.refuse(name, release_id, Reason.INVALID_CHARGE, error)
        return {"reason": Reason.INVALID_CHARGE, "mechanism": "dp-sgd",
                "detail": {**public, "error": error}}
    budget = privacy.budget
    verdict = releases.charge(name, budget.subject, budget.dataset, budget.delta,
                              ReleaseCharge(release_id, curve, subjects))
    digest = hashlib.sha256("\n".join(sorted(set(subjects))).encode()).hexdigest()
    if verdict.charged and not verdict.replay:
        metrics.epsilon.add(float(verdict.data.get("epsilon", 0.0)), {"dataset": name})
    elif not verdict.charged:
        metrics.budget_exhausted.add(1, {"dataset": name, "scope": "release"})
    return {"dataset": name, "epsilon": verdict.data.get("epsilon"), "delta": budget.delta,
            "mechanism": "dp-sgd", "reason": verdict.reason,
            "detail": {**public, "subjects_count": len(set(subjects)),
                       "subjects_sha256": digest, "verdict": verdict.data}}
