"""Why a process `lepton up` started has failed, read from the end of its log: consumes a log
file (JSON lines from shared.logs, or plain text written before logging started), produces
one line for the operator."""

from __future__ import annotations

from pathlib import Path

import orjson

TAIL_BYTES = 64 * 1024
LONGEST = 300


def last_error(log: Path) -> str | None:
    """The last ERROR/CRITICAL record's exception (or message), else the log's last line that
    is not a JSON record (a traceback printed before logging started), else None."""
    try:
        with log.open("rb") as handle:
            handle.seek(max(0, log.stat().st_size - TAIL_BYTES))
            lines = handle.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("level") in ("ERROR", "CRITICAL"):
            trace = str(record.get("exc_info") or "").strip().splitlines()
            return _short(trace[-1] if trace else str(record.get("message", "")))
    plain = [line.strip() for line in lines if line.strip() and not line.startswith("{")]
    return _short(plain[-1]) if plain else None


def _short(text: str) -> str:
    return text if len(text) <= LONGEST else text[:LONGEST - 1] + "…"
