"""The data-quality index per window, on disk: each ingest replica adds its committed batches'
counts (quality.py) to the current window and, when the window ends (and at stop), appends
one JSON line per dataset to `<data dir>/ingest/quality/<replica>.jsonl`. Windows are aligned to
multiples of their length since the epoch, so the lines of all replicas for one window add up
(`read_windows`). The format (version 1) is documented in services/ingest/README.md; the
trainer and `lepton quality report` read it.

A replica that crashes loses its open window's counts (they are never double counted: only
committed batches are added).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from services.ingest.quality import BatchQuality, DatasetCounts

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
SUFFIX = ".jsonl"


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


class QualityLog:
    """One replica's per-window quality counts and their append-only file."""

    def __init__(self, directory: Path, replica: str, window_s: float,
                 min_index: Callable[[str], float | None],
                 clock: Callable[[], float] = time.time) -> None:
        self.path = directory / f"{replica}{SUFFIX}"
        self.replica = replica
        self.window_s = window_s
        self._min_index = min_index
        self._clock = clock
        self.start = self._window_of(clock())
        self.current: dict[str, DatasetCounts] = {}
        self.last: dict[str, dict[str, Any]] = {}  # the latest closed window per dataset

    def _window_of(self, now: float) -> float:
        return math.floor(now / self.window_s) * self.window_s

    def add(self, batch: BatchQuality) -> None:
        """Add a committed batch's counts to the current window (closing it first if over)."""
        self.roll()
        for name, counts in batch.datasets.items():
            found = self.current.get(name)
            if found is not None and found.fields != counts.fields:  # the spec changed
                self._write([self._record(name, found, partial=True)])
                found = None
            if found is None:
                found = self.current[name] = DatasetCounts(counts.fields)
            found.add(counts)

    def roll(self, final: bool = False) -> list[dict[str, Any]]:
        """Close the current window when it is over (or at stop, `final`: then marked partial
        if it was not over); the records written."""
        now = self._clock()
        over = now >= self.start + self.window_s
        if not over and not final:
            return []
        records = [self._record(name, counts, partial=not over)
                   for name, counts in self.current.items() if counts.events]
        self._write(records)
        self.current = {}
        self.start = self._window_of(now)
        return records

    def _record(self, name: str, counts: DatasetCounts, *, partial: bool) -> dict[str, Any]:
        record = {"v": FORMAT_VERSION, "dataset": name, "replica": self.replica,
                  "window_start": _iso(self.start), "window_end": _iso(self.start + self.window_s),
                  "window_s": self.window_s, "partial": partial,
                  "min_index": self._min_index(name), **counts.to_json()}
        self.last[name] = record
        return record

    def _write(self, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("ab") as handle:
                handle.write(b"".join(orjson.dumps(r) + b"\n" for r in records))
        except OSError as error:  # quality history must never stop ingest
            log.error("cannot append the quality window to %s: %s", self.path, error)


@dataclass
class Window:
    """One dataset's window, the counts of every replica added up."""

    dataset: str
    start: str
    end: str
    partial: bool
    min_index: float | None
    replicas: list[str]
    counts: DatasetCounts

    def to_json(self) -> dict[str, Any]:
        """The window as a JSON-ready dict."""
        return {"dataset": self.dataset, "window_start": self.start, "window_end": self.end,
                "partial": self.partial, "min_index": self.min_index,
                "replicas": sorted(self.replicas), **self.counts.to_json()}


def read_windows(directory: Path, dataset: str | None = None) -> list[Window]:
    """Every window recorded under `directory` (all replicas added up), oldest first;
    unreadable lines are skipped with a warning."""
    merged: dict[tuple[str, str, tuple[str, ...]], Window] = {}
    for path in sorted(directory.glob(f"*{SUFFIX}")) if directory.is_dir() else []:
        for number, line in enumerate(path.read_bytes().splitlines(), 1):
            try:
                obj = orjson.loads(line)
                if obj.get("v") != FORMAT_VERSION or (dataset and obj["dataset"] != dataset):
                    continue
                counts = DatasetCounts.from_json(obj)
                key = (str(obj["dataset"]), str(obj["window_start"]), counts.fields)
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
                log.warning("%s:%d: not a quality window record, skipped", path, number)
                continue
            found = merged.get(key)
            if found is None:
                merged[key] = Window(key[0], key[1], str(obj["window_end"]),
                                     bool(obj.get("partial")), obj.get("min_index"),
                                     [str(obj.get("replica"))], counts)
            else:
                found.counts.add(counts)
                found.partial = found.partial or bool(obj.get("partial"))
                found.replicas.append(str(obj.get("replica")))
    return sorted(merged.values(), key=lambda w: (w.dataset, w.start))
