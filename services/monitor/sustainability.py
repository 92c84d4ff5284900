"""`lepton sustainability report`: energy and carbon per stage, per prediction and per model
version, and progress against the configured target.

Consumes the services' records in Redis (shared/service_record.py: each process's joules,
method and work; records of stopped processes still count) and the model cards (training
energy). Produces a report whose per-stage joules add up to its total; J per unit of each
stage's work (event, prediction, sample, record); gCO2e per model version = its training
energy (card) plus its share of serving (J per prediction × its predictions); and the pipeline's
J per event (ingest + governance + trainer joules per ingested event) against the target: the
baseline (`LEPTON_MONITOR_ENERGY_BASELINE_J_PER_EVENT`, else the first report's value, kept in
Redis and said so) reduced by `LEPTON_MONITOR_ENERGY_TARGET_REDUCTION` (default 20 %).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import redis

from services.monitor.config import MonitorSettings
from shared.carbon import carbon_intensity
from shared.models.registry import ArtifactError, Registry
from shared.service_record import UNITS, read_records
from shared.state import rkey

PIPELINE = ("ingest", "governance", "trainer")


def _stage(service: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    joules = sum(float(r["energy"]["joules"]) for r in records)
    work = sum(int(r.get("work", 0)) for r in records)
    methods = sorted({str(r["energy"]["method"]) for r in records})
    by_key: dict[str, int] = {}
    for record in records:
        for key, count in record.get("work_by_key", {}).items():
            by_key[key] = by_key.get(key, 0) + int(count)
    return {"service": service, "processes": len(records), "joules": joules, "work": work,
            "unit": UNITS[service], "joules_per_unit": joules / work if work else None,
            "estimate": any(bool(r["energy"].get("estimate")) for r in records),
            "methods": methods, "work_by_key": by_key}


def sustainability_report(client: redis.Redis[bytes], settings: MonitorSettings
                          ) -> dict[str, Any]:
    """The report (JSON-ready)."""
    carbon = carbon_intensity(settings)
    stages = [_stage(s, records) for s in UNITS
              if (records := read_records(client, settings, s))]
    total = sum(stage["joules"] for stage in stages)
    for stage in stages:
        stage["co2e_g"] = carbon.grams(stage["joules"])
    by = {stage["service"]: stage for stage in stages}
    serving = by.get("serving")
    per_prediction = serving["joules_per_unit"] if serving else None
    versions = []
    registry = Registry(settings)
    for model in registry.models():
        for version in registry.versions(model):
            try:
                card = registry.card(model, version)
            except ArtifactError:
                continue
            predictions = serving["work_by_key"].get(f"{model}:{version}", 0) if serving else 0
            serve_j = (per_prediction or 0.0) * predictions
            versions.append({"model": model, "version": version, "training_j": card.energy_j,
                             "joules_per_sample": card.joules_per_sample,
                             "predictions": predictions, "serving_j": serve_j,
                             "co2e_g": carbon.grams(card.energy_j + serve_j)})
    events = by["ingest"]["work"] if "ingest" in by else 0
    pipeline_j = sum(by[s]["joules"] for s in PIPELINE if s in by)
    current = pipeline_j / events if events else None
    return {"total_joules": total, "total_co2e_g": carbon.grams(total),
            "carbon": carbon.to_dict(), "stages": stages,
            "joules_per_prediction": per_prediction, "versions": versions,
            "target": _target(client, settings, current)}


def _target(client: redis.Redis[bytes], settings: MonitorSettings, current: float | None
            ) -> dict[str, Any]:
    reduction = settings.monitor_energy_target_reduction
    baseline = settings.monitor_energy_baseline_j_per_event
    source = "setting LEPTON_MONITOR_ENERGY_BASELINE_J_PER_EVENT"
    if baseline is None and current is not None:
        key = rkey(settings, "sustainability", "baseline_j_per_event")
        client.set(key, repr(current).encode(), nx=True)
        raw = client.get(key)
        baseline = float(raw) if raw else current
        source = "the first report's pipeline J per event (kept in Redis)"
    target = baseline * (1 - reduction) if baseline is not None else None
    return {"metric": "pipeline J per ingested event (ingest + governance + trainer)",
            "current": current, "baseline": baseline, "baseline_source": source,
            "reduction": reduction, "target": target,
            "met": None if target is None or current is None else current <= target}


def _number(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def render(report: dict[str, Any]) -> str:
    """Plain text: stages, versions, target."""
    carbon = report["carbon"]
    lines = [f"energy {report['total_joules']:.1f} J, {report['total_co2e_g']:.4g} g CO2e "
             f"at {carbon['g_per_kwh']:g} g/kWh ({carbon['source']})",
             f"  {'stage':<12}{'joules':>12}{'work':>10}  {'J per unit':<22}method"]
    for stage in report["stages"]:
        label = " (estimate)" if stage["estimate"] else ""
        per = f"{_number(stage['joules_per_unit'])} /{stage['unit']}"
        lines.append(f"  {stage['service']:<12}{stage['joules']:>12.1f}{stage['work']:>10}  "
                     f"{per:<22}{'; '.join(stage['methods'])}{label}")
    lines.append(f"  J per prediction: {_number(report['joules_per_prediction'])}")
    for item in report["versions"]:
        lines.append(f"  {item['model']} v{item['version']}: training {item['training_j']:.1f} J "
                     f"({_number(item['joules_per_sample'])} J/sample), {item['predictions']} "
                     f"predictions, {item['co2e_g']:.4g} g CO2e")
    target = report["target"]
    verdict = {True: "met", False: "not met", None: "no data yet"}[target["met"]]
    lines.append(f"  target: {target['metric']} {_number(target['current'])} vs "
                 f"{_number(target['target'])} (baseline {_number(target['baseline'])} "
                 f"− {target['reduction']:.0%}; {target['baseline_source']}): {verdict}")
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    """A PNG: J per unit of work per stage, and gCO2e per model version."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    stages = [s for s in report["stages"] if s["joules_per_unit"] is not None]
    left.bar([f"{s['service']}\n(/{s['unit']})" for s in stages],
             [s["joules_per_unit"] for s in stages], color="tab:green")
    left.set_ylabel("joules per unit of work")
    left.set_title("Energy per unit of work" + (" (estimates)" if any(
        s["estimate"] for s in stages) else ""))
    versions = report["versions"]
    right.bar([f"{v['model']} v{v['version']}" for v in versions],
              [v["co2e_g"] for v in versions], color="tab:gray")
    right.set_ylabel("g CO2e (training + serving)")
    right.set_title(f"CO2e per model version at {report['carbon']['g_per_kwh']:g} g/kWh")
    right.tick_params(axis="x", rotation=45)
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=100)
    plt.close(figure)
