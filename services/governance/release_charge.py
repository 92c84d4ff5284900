"""Sealing a trainer's admitted `release_charge` decision: check it, charge the release ledger
(every contributing subject and the dataset, atomically, once per release id) and return the
audit fields. The subjects are read from Redis (shared/releases.py) and must match the count
and sha256 the signed decision commits to. The verdict (charged or refused, with the reason)
lands in Redis, where the trainer waits for it before announcing; a refused or invalid charge
is audited like an accepted one. The audit leaf names how many subjects took part and their
digest, not their ids (the on-disk release log keeps them, to rebuild the ledger)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from services.governance.admission import ReleaseChargeDetail
from services.governance.privacy import DatasetPrivacy
from services.governance.records import Reason
from services.governance.releases import ReleaseCharge, ReleaseLedger
from services.governance.telemetry import GovernanceMetrics
from shared.accounting import ORDERS
from shared.releases import load_subjects, read_verdict, subjects_digest

DatasetLookup = Callable[[str], "DatasetPrivacy | str"]


def _error(detail: ReleaseChargeDetail, privacy: DatasetPrivacy | str,
           subjects: list[str] | None) -> str:
    if not isinstance(privacy, DatasetPrivacy) or privacy.local:
        return "dataset is not in model privacy mode"
    if tuple(detail.orders) != ORDERS or len(detail.rdp) != len(ORDERS):
        return "rdp curve is not on the ledger's orders"
    if any(v is not None and (v < 0 or not math.isfinite(v)) for v in detail.rdp):
        return "rdp curve has a negative or non-finite value"
    if subjects is None:
        return "subjects not found"
    if len(set(subjects)) != detail.subjects_count or \
            subjects_digest(subjects) != detail.subjects_sha256:
        return "subjects do not match the signed count and digest"
    return ""


def charge_release(name: str, detail: ReleaseChargeDetail, releases: ReleaseLedger,
                   dataset: DatasetLookup, metrics: GovernanceMetrics) -> dict[str, Any]:
    """Charge one release; the audit fields (epsilon, delta, reason, detail) to seal."""
    public = detail.model_dump(mode="json")
    privacy = dataset(name)
    rid = detail.release_id
    client, settings = releases.client, releases.settings
    replay = read_verdict(client, settings, name, rid) is not None
    subjects = [] if replay else load_subjects(client, settings, name, rid)
    error = "" if replay else _error(detail, privacy, subjects)
    if error or not isinstance(privacy, DatasetPrivacy) or subjects is None:
        releases.refuse(name, rid, Reason.INVALID_CHARGE, error)
        return {"reason": Reason.INVALID_CHARGE, "mechanism": "dp-sgd",
                "detail": {**public, "error": error}}
    curve = tuple(math.inf if v is None else float(v) for v in detail.rdp)
    budget = privacy.budget
    verdict = releases.charge(name, budget.subject, budget.dataset, budget.delta,
                              ReleaseCharge(rid, curve, tuple(subjects)))
    if verdict.charged:
        metrics.set_subject_max(name, releases.max_subject_epsilon(name))
    if verdict.charged and not verdict.replay:
        metrics.epsilon.add(float(verdict.data.get("epsilon", 0.0)), {"dataset": name})
    elif not verdict.charged and not verdict.replay:
        metrics.budget_exhausted.add(1, {"dataset": name, "scope": "release"})
    return {"dataset": name, "epsilon": verdict.data.get("epsilon"), "delta": budget.delta,
            "mechanism": "dp-sgd", "reason": verdict.reason,
            "detail": {**public, "verdict": verdict.data}}
