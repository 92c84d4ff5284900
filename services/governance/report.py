"""`lepton privacy report`: spent and remaining budgets per dataset and the top subjects, as
rich tables read from the Redis ledger."""

from __future__ import annotations

import redis
from rich.table import Table

from services.governance.config import GovernanceSettings
from services.governance.ledger import Ledger, effective_epsilon
from shared.datasets import PrivacySpec, UnknownDataset, load_spec


def _privacy(settings: GovernanceSettings, dataset: str) -> PrivacySpec | None:
    try:
        return load_spec(dataset, settings.governance_specs_dir).privacy
    except (UnknownDataset, ValueError):
        return None


def _num(value: float) -> str:
    return f"{value:.4g}"


def budget_tables(client: redis.Redis[bytes], settings: GovernanceSettings,
                  only: str | None, top: int) -> tuple[list[Table], bool]:
    """The dataset summary table and one top-subjects table per dataset; and whether the
    ledger is present in Redis."""
    ledger = Ledger(client, settings)
    names = [only] if only else ledger.datasets()
    summary = Table(title="privacy budgets by dataset")
    for column in ("dataset", "mechanism", "ε/event", "spent ε", "ρ", "budget ε", "remaining ε",
                   "charges", "subjects", "subjects exhausted"):
        summary.add_column(column, justify="left" if column in ("dataset", "mechanism")
                           else "right")
    tables = [summary]
    for name in names:
        spec = _privacy(settings, name)
        delta = spec.delta if spec else 0.0
        spend = ledger.spend(name)
        spent = effective_epsilon(spend.epsilon, spend.rho, delta)
        subjects = ledger.subjects(name)
        per_event = spec.epsilon_per_event if spec else 0.0
        exhausted = sum(
            1 for e, r in subjects.values()
            if spec and effective_epsilon(e, r, delta) + per_event > spec.subject_budget)
        summary.add_row(
            name, spec.mechanism if spec else "?", _num(per_event) if spec else "?",
            _num(spent), _num(spend.rho), _num(spec.dataset_budget) if spec else "?",
            _num(max(spec.dataset_budget - spent, 0.0)) if spec else "?", str(spend.charges),
            str(len(subjects)), str(exhausted))
        if top and subjects:
            table = Table(title=f"{name}: top {top} subjects by ε spent")
            for column in ("subject", "ε", "ρ", "effective ε", "budget ε", "remaining ε"):
                table.add_column(column, justify="left" if column == "subject" else "right")
            for subject, eps, rho, eff in ledger.top_subjects(name, delta, top):
                budget = spec.subject_budget if spec else float("nan")
                table.add_row(subject, _num(eps), _num(rho), _num(eff), _num(budget),
                              _num(max(budget - eff, 0.0)))
            tables.append(table)
    return tables, ledger.ready()
