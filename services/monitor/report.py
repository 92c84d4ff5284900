"""The monitor's latest view per model version, kept in Redis for `lepton monitor report`: the
window's drift per feature and on the score, against the card's reference, and live quality;
until a version's first window is full, how far it has filled.

Produces `monitor:report:<model>:<version>` (JSON) and the set `monitor:reports`; consumed by
the CLI, which renders it as a table or JSON.
"""

from __future__ import annotations

from typing import Any

import orjson
import redis

from shared.config import LeptonSettings
from shared.state import rkey


def store_report(client: redis.Redis[bytes], settings: LeptonSettings, model: str,
                 version: int, report: dict[str, Any]) -> None:
    """Replace the stored report of one version (fields merged into the previous one)."""
    key = rkey(settings, "monitor", "report", model, str(version))
    raw = client.get(key)
    merged = {**(orjson.loads(raw) if raw else {}), **report, "model": model,
              "version": version}
    pipe = client.pipeline(transaction=False)
    pipe.set(key, orjson.dumps(merged))
    pipe.sadd(rkey(settings, "monitor", "reports"), f"{model}:{version}")
    pipe.execute()


def load_reports(client: redis.Redis[bytes], settings: LeptonSettings,
                 model: str | None = None) -> list[dict[str, Any]]:
    """Every stored report (of `model` when given), by model and version."""
    found = []
    for member in client.smembers(rkey(settings, "monitor", "reports")):
        name, _, version = member.decode().rpartition(":")
        if model is not None and name != model:
            continue
        raw = client.get(rkey(settings, "monitor", "report", name, version))
        if raw:
            found.append(orjson.loads(raw))
    return sorted(found, key=lambda r: (r["model"], r["version"]))


def render(reports: list[dict[str, Any]], window: int) -> str:
    """Plain-text tables: per version, each feature's test, statistic, threshold and verdict,
    then live quality (`window`: predictions a version's first report needs)."""
    if not reports:
        return (f"no monitoring report yet: a model version's first report comes after {window:,} "
                "of its predictions (LEPTON_MONITOR_WINDOW); is the monitor running and serving "
                "predicting?")
    lines = []
    for report in reports:
        drift = report.get("drift") or {}
        filling = report.get("filling")
        if not drift and filling:
            lines.append(f"{report['model']} v{report['version']}: window filling, "
                         f"{filling['predictions']:,} of {filling['window']:,} predictions "
                         "(drift is reported once it is full)")
        else:
            lines.append(f"{report['model']} v{report['version']}: window "
                         f"{drift.get('window', 0)} predictions at {drift.get('at', '-')}; "
                         f"reference: {drift.get('reference', 'none')}")
        if drift.get("features"):
            lines.append(f"  {'feature':<26}{'test':<15}{'statistic':>11}{'p':>11}"
                         f"{'threshold':>11}  drift")
            for item in drift["features"]:
                p = "-" if item["p_value"] is None else f"{item['p_value']:.2e}"
                lines.append(f"  {item['feature']:<26}{item['test']:<15}"
                             f"{item['statistic']:>11.4f}{p:>11}{item['threshold']:>11.2e}  "
                             f"{'YES' if item['drifted'] else 'no'}")
        quality = report.get("quality")
        if quality:
            def show(value: float | None) -> str:
                return "-" if value is None else f"{value:.4f}"
            lines.append(f"  live quality: {quality['labelled']} labelled, F1 "
                         f"{show(quality['f1'])} (offline {show(report.get('offline_f1'))}), "
                         f"AUC {show(quality['roc_auc'])}")
    return "\n".join(lines)
