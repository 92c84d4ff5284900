"""A model release's privacy: the card's `privacy` object, and the release charge governance
must accept before the model is announced.

The charge is a signed `release_charge` decision on `audit.requests` naming the release id (a
digest of the weights and the lineage, so a retried publish is charged once), the per-subject
RDP curve and the count and sha256 of the contributing subjects, whose ids are stored in Redis
beside it; governance's verdict comes back through Redis (shared/releases.py). Refused, or no
verdict within `trainer_charge_timeout_s`: the candidate is refused (`privacy_charge_refused`)
and nothing is announced.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
from typing import TYPE_CHECKING, Any

import orjson

from services.trainer.dp import Plan
from services.trainer.retry import until_redis
from shared.datasets.spec import DatasetSpec
from shared.decisions import publish_decision
from shared.events import Decision
from shared.models.gate import GateResult
from shared.models.registry import ModelCard
from shared.releases import (
    RELEASE_CHARGE,
    release_id,
    store_subjects,
    subjects_digest,
    wait_verdict,
)

if TYPE_CHECKING:
    from services.trainer.release import Candidate, Releaser

log = logging.getLogger(__name__)


OUTSIDE_EPSILON = ("the held-out window (events never trained on, named by the lineage): "
                   "gate metrics, fairness, a tuned decision threshold and feature importance "
                   "are computed on it without noise")


def privacy_summary(spec: DatasetSpec, plan: Plan | None, parent: ModelCard | None
                    ) -> dict[str, Any]:
    """The card's `privacy` object before the charge (its ledger facts are added after)."""
    summary = _summary(spec, plan, parent)
    summary["outside_epsilon"] = OUTSIDE_EPSILON
    return summary


def _summary(spec: DatasetSpec, plan: Plan | None, parent: ModelCard | None) -> dict[str, Any]:
    privacy = spec.privacy
    earlier = list(parent.privacy.get("releases", [])) if parent is not None else []
    if plan is not None:
        return {**plan.describe(), "releases": earlier}
    if privacy.mode == "local":
        return {"mode": "local", "epsilon": None, "delta": None, "accountant": None,
                "sampling": None, "max_events_per_subject": None, "noise_multiplier": None,
                "secure_rng": None, "releases": earlier,
                "note": "trained on records governance noised per event (their stamps give "
                        "ε per event); the model is post-processing of them"}
    return {"mode": "non-private", "non_private": True, "epsilon": None, "delta": None,
            "accountant": None, "sampling": None,
            "max_events_per_subject": privacy.max_events_per_subject,
            "noise_multiplier": None, "secure_rng": None, "releases": earlier,
            "note": "no differential privacy: the spec allows non-private models "
                    "(allow_non_private: true)"}


def _digest(candidate: Candidate) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(candidate.state.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def charge_release(releaser: Releaser, candidate: Candidate, lineage: dict[str, Any],
                   privacy: dict[str, Any], verdict: GateResult,
                   stop: threading.Event | None) -> GateResult:
    """Ask governance to charge this release; record its verdict in `privacy`. Returns the
    gate verdict, turned into a refusal when the charge was not accepted."""
    plan = candidate.plan
    assert plan is not None
    spec = releaser.spec
    rid = release_id(releaser.model, _digest(candidate),
                     orjson.dumps(lineage, option=orjson.OPT_SORT_KEYS).decode())
    curve = plan.curve()
    detail = {"release_id": rid, "model": releaser.model, "epsilon": plan.epsilon(),
              "delta": plan.delta, "accountant": privacy["accountant"],
              "orders": privacy["orders"],
              "rdp": [v if math.isfinite(v) else None for v in curve],
              "noise_multiplier": plan.noise_multiplier, "sample_rate": plan.sample_rate,
              "steps": plan.steps, "max_events_per_subject": plan.events_per_subject,
              "group_privacy": privacy["group_privacy"],
              "subjects_count": len(set(candidate.subjects)),
              "subjects_sha256": subjects_digest(candidate.subjects)}
    until_redis(lambda: store_subjects(releaser.redis, releaser.settings, spec.name, rid,
                                       candidate.subjects), "release subjects", stop)
    until_redis(lambda: publish_decision(releaser.producer, releaser.settings, Decision(
        decision_id=rid, kind=RELEASE_CHARGE, actor="trainer", dataset=spec.name,
        detail=detail), signer=releaser.signer), "release charge", stop,
        errors=(TimeoutError,))
    answer = until_redis(lambda: wait_verdict(
        releaser.redis, releaser.settings, spec.name, rid,
        releaser.settings.trainer_charge_timeout_s, stop), "release verdict", stop)
    privacy["release_id"] = rid
    privacy["ledger"] = answer
    if answer is not None and answer.get("status") == "charged":
        privacy["max_subject_epsilon"] = answer.get("max_subject_epsilon")
        privacy["releases"] = [*privacy["releases"],
                               {"release_id": rid, "epsilon": plan.epsilon()}]
        return verdict
    reason = "no verdict from governance" if answer is None else str(answer.get("reason"))
    log.warning("release %s not charged (%s): not announced", rid, reason)
    return GateResult(False, [*verdict.reasons, f"privacy_charge_refused: {reason}"],
                      verdict.compared_to)
