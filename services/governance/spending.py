"""The budget steps of a governance batch: consumes the batch's undecided events with their
datasets' privacy settings, the release ledger, the contribution bound and the per-event
ledger; produces withheld verdicts (subject or dataset budget spent, contribution bound
reached, bad ε), per-event charges in local mode, and the budget metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.governance.batch import Item, undecided_by_dataset
from services.governance.bound import ContributionBound
from services.governance.charges import Budget, Charge, effective_epsilon
from services.governance.ledger import Ledger
from services.governance.privacy import DatasetPrivacy
from services.governance.records import Kind, Reason
from services.governance.releases import ReleaseLedger
from services.governance.telemetry import GovernanceMetrics

if TYPE_CHECKING:
    from services.governance.sealing import DatasetLookup


def bound_releases(events: list[Item], dataset: DatasetLookup, releases: ReleaseLedger,
                   bound: ContributionBound, metrics: GovernanceMetrics) -> None:
    """Model mode: withhold subjects (or a dataset) one more release would overspend,
    then events beyond the subject's per-release contribution bound."""
    for name, group in undecided_by_dataset(events).items():
        privacy = dataset(name)
        assert isinstance(privacy, DatasetPrivacy)
        if privacy.local:
            continue
        spec = privacy.privacy_spec
        budget = privacy.budget
        subjects = [i.envelope.subject_id for i in group if i.envelope]
        dataset_over, over = releases.exhausted(
            name, subjects, budget.subject, budget.dataset, budget.delta)
        admitted: list[Item] = []
        for item in group:
            subject = item.envelope.subject_id if item.envelope else ""
            if dataset_over or subject in over:
                item.kind = Kind.WITHHELD
                item.reason = Reason.DATASET_BUDGET if dataset_over else \
                    Reason.SUBJECT_BUDGET
                metrics.budget_exhausted.add(1, {
                    "dataset": name, "scope": "dataset" if dataset_over else "subject"})
            else:
                admitted.append(item)
        verdicts = bound.admit(
            name, releases.epoch_key(name), spec.max_events_per_subject,
            [(i.envelope.event_id, i.envelope.subject_id) for i in admitted if i.envelope])
        for item, fits in zip(admitted, verdicts, strict=True):
            if not fits:
                item.kind, item.reason = Kind.WITHHELD, Reason.CONTRIBUTION_BOUND


def charge_events(events: list[Item], dataset: DatasetLookup, ledger: Ledger,
                  metrics: GovernanceMetrics) -> None:
    """Local mode: charge each event's ε to the per-event ledger before it is released (the
    caller skips this when differential privacy is disabled)."""
    for name, group in undecided_by_dataset(events).items():
        privacy = dataset(name)
        assert isinstance(privacy, DatasetPrivacy)
        if not privacy.local:
            continue
        charges = [Charge(i.identity, i.envelope.subject_id if i.envelope else None,
                          privacy.epsilon, privacy.rho) for i in group]
        results = ledger.charge(name, privacy.budget, charges)
        fresh = 0.0
        for item, result in zip(group, results, strict=True):
            item.charge = result
            if result.status == "refused":
                item.kind = Kind.WITHHELD
                item.reason = (Reason.SUBJECT_BUDGET if result.reason == "subject"
                               else Reason.DATASET_BUDGET)
                metrics.budget_exhausted.add(1, {"dataset": name, "scope": result.reason})
            elif result.status == "invalid":
                item.kind, item.reason = Kind.WITHHELD, Reason.BAD_EPSILON
            elif not result.replay:
                fresh += result.epsilon
        if fresh:
            metrics.epsilon.add(fresh, {"dataset": name})
        _observe_budget(name, privacy.budget, ledger, metrics)


def _observe_budget(name: str, budget: Budget, ledger: Ledger,
                    metrics: GovernanceMetrics) -> None:
    spend = ledger.spend(name)
    metrics.set_budget(
        name, effective_epsilon(spend.epsilon, spend.rho, budget.delta), budget.dataset)
