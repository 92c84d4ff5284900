"""`lepton privacy report`: per dataset its privacy mode, releases with their ε, and the
distribution of per-subject spend (max, p50, p99, exhausted count), read from the Redis
ledgers. Never a sum across subjects: under parallel composition that number bounds nothing.

Model mode: a subject's spend is the RDP composition of the releases it took part in
(releases.py); local mode: its per-event charges (pure ε summed, zCDP converted at δ)."""

from __future__ import annotations

from typing import Any

import numpy as np
import redis
from rich.table import Table

from services.governance.charges import effective_epsilon
from services.governance.config import GovernanceSettings
from services.governance.ledger import Ledger
from services.governance.releases import ReleaseLedger
from shared.datasets import PrivacySpec, UnknownDataset, load_spec


def _privacy(settings: GovernanceSettings, dataset: str) -> PrivacySpec | None:
    try:
        return load_spec(dataset, settings.governance_specs_dir).privacy
    except (UnknownDataset, ValueError):
        return None


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def subject_epsilons(client: redis.Redis[bytes], settings: GovernanceSettings, dataset: str,
                     spec: PrivacySpec | None) -> dict[str, float]:
    """Every subject's composed ε for `dataset` (at the spec's δ)."""
    delta = spec.delta if spec else 1e-5
    if spec is None or spec.mode == "model":
        found = ReleaseLedger(client, settings).subject_epsilons(dataset, delta)
        if found or spec is not None:
            return found
    return {s: effective_epsilon(e, r, delta)
            for s, (e, r) in Ledger(client, settings).subjects(dataset).items()}


def report(client: redis.Redis[bytes], settings: GovernanceSettings,
           only: str | None = None) -> dict[str, Any]:
    """The report as JSON-ready data: one entry per dataset (UnknownDataset when `only` has
    neither a spec nor any charge)."""
    releases = ReleaseLedger(client, settings)
    ledger = Ledger(client, settings)
    known = set(releases.datasets()) | set(ledger.datasets())
    out: dict[str, Any] = {"datasets": []}
    for name in [only] if only else sorted(known):
        spec = _privacy(settings, name)
        if spec is None and name not in known:
            raise UnknownDataset(name)  # no spec and nothing charged: most likely a typo
        spent = subject_epsilons(client, settings, name, spec)
        values = np.array(sorted(spent.values()), dtype=np.float64)
        budget = spec.subject_budget if spec else None
        verdicts = releases.verdicts(name)
        out["datasets"].append({
            "dataset": name, "mode": spec.mode if spec else None,
            "accountant": "rdp" if spec is None or spec.mode == "model" else "basic/zcdp",
            "delta": spec.delta if spec else None,
            "epsilon_per_release": spec.epsilon_per_release if spec else None,
            "subject_budget": budget,
            "releases": [{"release_id": rid, "status": v.get("status"),
                          "reason": v.get("reason"), "epsilon": v.get("epsilon"),
                          "subjects": v.get("subjects")} for rid, v in sorted(verdicts.items())],
            "releases_charged": releases.epoch(name),
            "subjects": len(values),
            "per_subject_epsilon": {
                "max": float(values.max()) if len(values) else 0.0,
                "p50": float(np.percentile(values, 50)) if len(values) else 0.0,
                "p99": float(np.percentile(values, 99)) if len(values) else 0.0},
            "exhausted": _exhausted(releases, name, spec, spent, values),
        })
    return out


def _exhausted(releases: ReleaseLedger, dataset: str, spec: PrivacySpec | None,
               spent: dict[str, float], values: np.ndarray[Any, np.dtype[np.float64]]) -> int:
    """Subjects the next release will withhold (`subject_budget_exhausted`): in model mode
    those one more release like the last would overspend, the ledger's own rule; in local
    mode those whose spend reached the budget."""
    if spec is None or not len(values):
        return 0
    if spec.mode == "model":
        _, over = releases.exhausted(dataset, list(spent), spec.subject_budget,
                                     spec.dataset_budget, spec.delta)
        return len(over)
    return int((values >= spec.subject_budget).sum())


def report_tables(data: dict[str, Any]) -> list[Table]:
    """Rich tables of `report` data: a summary per dataset and each dataset's releases."""
    summary = Table(title="privacy by dataset (ε per subject; never summed across subjects)")
    for column in ("dataset", "mode", "releases", "subjects", "max ε", "p50 ε", "p99 ε",
                   "budget ε", "exhausted", "δ"):
        summary.add_column(column, justify="left" if column in ("dataset", "mode")
                           else "right", overflow="fold")  # a narrow terminal never elides ε
    tables = [summary]
    for entry in data["datasets"]:
        spend = entry["per_subject_epsilon"]
        summary.add_row(entry["dataset"], entry["mode"] or "?", str(entry["releases_charged"]),
                        str(entry["subjects"]), _num(spend["max"]), _num(spend["p50"]),
                        _num(spend["p99"]), _num(entry["subject_budget"]),
                        str(entry["exhausted"]), _num(entry["delta"]))
        if entry["releases"]:
            table = Table(title=f"{entry['dataset']}: releases")
            for column in ("release", "status", "ε", "subjects", "reason"):
                table.add_column(column, justify="left" if column in (
                    "release", "status", "reason") else "right", overflow="fold")
            for item in entry["releases"]:
                table.add_row(item["release_id"], str(item["status"]), _num(item["epsilon"]),
                              str(item["subjects"] or "-"), item["reason"] or "")
            tables.append(table)
    return tables


def max_subject_epsilon(client: redis.Redis[bytes], settings: GovernanceSettings
                        ) -> dict[str, float]:
    """Per dataset, the largest ε any one subject has spent (the dashboard's number)."""
    data = report(client, settings)
    return {d["dataset"]: d["per_subject_epsilon"]["max"] for d in data["datasets"]}
