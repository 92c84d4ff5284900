"""Closed quality windows on the bus: each record the replica's quality log writes when a window
closes (quality_log.py) becomes a `quality.windows` record signed by the ingest principal
(shared/quality_windows.py), keyed by dataset and produced in the stage's transaction.

Consumes QualityLog records (JSON-ready dicts); produces stage `Output`s holding counts only:
events, the field count and the erroneous field values, never a value or a subject id.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from services.ingest.quality import KINDS
from shared.events import CONTENT_TYPE_JSON, Header
from shared.principals import Principal
from shared.quality_windows import QualityWindow, sign_window, window_of
from shared.stage import Output


def summary(record: dict[str, Any]) -> QualityWindow:
    """The unsigned bus summary of one quality log record."""
    fields: dict[str, dict[str, Any]] = record["fields"]
    errors = sum(int(row[kind]) for row in fields.values() for kind in KINDS)
    return window_of(
        record["dataset"], record["replica"], datetime.fromisoformat(record["window_start"]),
        datetime.fromisoformat(record["window_end"]), partial=bool(record["partial"]),
        events=int(record["events"]), fields=len(fields), errors=errors,
        min_index=record["min_index"])


def window_outputs(records: Iterable[dict[str, Any]], topic: str,
                   signer: Principal) -> list[Output]:
    """One signed `quality.windows` record per closed window record (keyed by dataset)."""
    return [Output(topic, str(record["dataset"]).encode(), sign_window(signer, summary(record)),
                   [(Header.CONTENT_TYPE, CONTENT_TYPE_JSON)])
            for record in records]
