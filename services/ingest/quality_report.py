"""`lepton quality report`: per dataset, the quality index of the latest windows (every
replica's counts added up, quality_log.py) and the worst fields over them, with the rate of
each kind of error; a window below the spec's `quality.min_index` is flagged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from services.ingest.quality import KINDS, DatasetCounts
from services.ingest.quality_log import Window, read_windows

WORST = 5


def report(directory: Path, dataset: str | None = None, last: int = 20) -> dict[str, Any]:
    """The report as JSON-ready data: per dataset its latest `last` windows (oldest first),
    their total and the `WORST` fields by error rate over them."""
    by_dataset: dict[str, list[Window]] = {}
    for window in read_windows(directory, dataset):
        by_dataset.setdefault(window.dataset, []).append(window)
    out: dict[str, Any] = {"directory": str(directory), "datasets": []}
    for name, windows in sorted(by_dataset.items()):
        shown = windows[-last:]
        fields = shown[-1].counts.fields
        total = DatasetCounts(fields)
        for window in shown:
            if window.counts.fields == fields:
                total.add(window.counts)
        summary = total.to_json()
        worst = sorted(summary["fields"].items(), key=lambda kv: -kv[1]["error_rate"])[:WORST]
        min_index = shown[-1].min_index
        out["datasets"].append({
            "dataset": name, "min_index": min_index,
            "windows": [{**w.to_json(), "below_min_index": _below(w, min_index)} for w in shown],
            "total": {k: v for k, v in summary.items() if k != "fields"},
            "worst_fields": [{"field": field, **{f"{kind}_rate": row[kind] / total.events
                                                 if total.events else 0.0
                                                 for kind in (*KINDS, "imputed", "rejected")},
                              "error_rate": row["error_rate"]} for field, row in worst]})
    return out


def _below(window: Window, min_index: float | None) -> bool:
    return min_index is not None and window.counts.index()[1] < min_index


def report_tables(data: dict[str, Any]) -> list[Table]:
    """Rich tables of `report` data: each dataset's windows, then its worst fields."""
    tables = []
    for entry in data["datasets"]:
        floor = entry["min_index"]
        windows = Table(title=f"{entry['dataset']}: quality by window (index = 1 − mean "
                              f"field error rate; min {floor if floor is not None else '-'})")
        for column in ("window start", "events", "rejected", "Σ error rate", "index", "status"):
            windows.add_column(column, justify="left" if column == "window start" else "right")
        for w in entry["windows"]:
            windows.add_row(w["window_start"] + (" (partial)" if w["partial"] else ""),
                            str(w["events"]), str(w["rejected"]), f"{w['sum_error_rate']:.4f}",
                            f"{w['quality_index']:.4f}",
                            "[red]below min[/]" if w["below_min_index"] else "ok")
        worst = Table(title=f"{entry['dataset']}: worst fields over these windows")
        for column in ("field", "error rate", *KINDS, "imputed", "rejected"):
            worst.add_column(column.replace("_", " "),
                             justify="left" if column == "field" else "right")
        for row in entry["worst_fields"]:
            worst.add_row(row["field"], _pct(row["error_rate"]),
                          *(_pct(row[f"{kind}_rate"]) for kind in (*KINDS, "imputed",
                                                                     "rejected")))
        tables += [windows, worst]
    return tables


def _pct(rate: float) -> str:
    return f"{rate * 100:.2f} %"
