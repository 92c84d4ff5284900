"""Governance metrics: decisions by kind and reason, budget exhaustion, ε charged, audit
appends and checkpoints, per-dataset budget gauges, and the largest ε one subject has spent
through model releases (batch metrics: shared/stage)."""

from __future__ import annotations

from collections.abc import Iterable

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation


class GovernanceMetrics:
    """Instruments on the global meter provider (no-ops until telemetry is set up)."""

    def __init__(self) -> None:
        meter = metrics.get_meter("lepton.governance")
        self.decisions = meter.create_counter(
            "lepton.governance.decisions", unit="{decision}",
            description="Decisions sealed, by kind and reason.")
        self.withheld = meter.create_counter(
            "lepton.governance.withheld", unit="{event}",
            description="Events withheld from events.governed, by reason.")
        self.budget_exhausted = meter.create_counter(
            "lepton.governance.budget_exhausted", unit="{event}",
            description="Events withheld because a privacy budget is spent, by scope.")
        self.epsilon = meter.create_counter(
            "lepton.governance.epsilon_charged", unit="{epsilon}",
            description="Privacy loss ε charged to the ledger, by dataset.")
        self.audit_appends = meter.create_counter(
            "lepton.governance.audit_appends", unit="{record}",
            description="New leaves appended to the audit log.")
        self.checkpoints = meter.create_counter(
            "lepton.governance.checkpoints", unit="{checkpoint}",
            description="Signed audit checkpoints written.")
        self.rejected = meter.create_counter(
            "lepton.governance.rejected", unit="{record}",
            description="Input records sent to the dead-letter topic, by reason.")
        self._spent: dict[str, tuple[float, float]] = {}
        meter.create_observable_gauge(
            "lepton.governance.budget.spent", callbacks=[self._observe_spent], unit="{epsilon}",
            description="Effective ε spent per dataset.")
        meter.create_observable_gauge(
            "lepton.governance.budget.remaining", callbacks=[self._observe_remaining],
            unit="{epsilon}", description="Dataset budget left (ε).")

        self._subject_max: dict[str, float] = {}
        meter.create_observable_gauge(
            "lepton.governance.subject_epsilon_max", callbacks=[self._observe_subject_max],
            unit="{epsilon}",
            description="Largest ε one subject has spent through model releases (RDP "
                        "composition at the dataset's δ), per dataset.")

    def set_subject_max(self, dataset: str, epsilon: float | None) -> None:
        """Record a dataset's largest per-subject ε (from the release ledger)."""
        if epsilon is not None:
            self._subject_max[dataset] = epsilon

    def _observe_subject_max(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(e, {"dataset": d}) for d, e in self._subject_max.items()]

    def set_budget(self, dataset: str, spent: float, budget: float) -> None:
        """Record a dataset's current spend for the gauges."""
        self._spent[dataset] = (spent, budget)

    def _observe_spent(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(s, {"dataset": d}) for d, (s, _) in self._spent.items()]

    def _observe_remaining(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(max(b - s, 0.0), {"dataset": d}) for d, (s, b) in self._spent.items()]
