"""The on-disk log of accepted ledger charges: consumes charges with their results, produces
an append-only, fsynced segment log under `<data_dir>/governance/ledger/segments/`
(idempotent per charge id) that the Redis ledger is rebuilt from."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from services.governance.charges import Charge, ChargeResult
from services.governance.segments import SegmentLog


class ChargeLog:
    """The append-only on-disk log of accepted charges, idempotent per charge id."""

    def __init__(self, directory: Path, *, segment_bytes: int = 64 << 20,
                 fsync: bool = True) -> None:
        self.segments = SegmentLog(directory / "segments", segment_bytes=segment_bytes,
                                   fsync=fsync)
        self._ids: set[str] = set()

    def open(self) -> None:
        """Load the ids on disk and open for appending."""
        self._ids = {orjson.loads(line)["id"] for line in self.segments.scan()}
        self.segments.open_for_append()

    def read(self) -> list[dict[str, Any]]:
        """Every charge on disk, in order."""
        return [orjson.loads(line) for line in SegmentLog(self.segments.directory).scan()]

    def append(self, dataset: str, charges: Sequence[tuple[Charge, ChargeResult]]) -> int:
        """Append accepted charges not yet on disk, then sync; returns how many were new."""
        stamp = datetime.now(UTC).isoformat(timespec="milliseconds")
        lines = []
        for charge, result in charges:
            if not result.charged or charge.charge_id in self._ids:
                continue
            lines.append(orjson.dumps({
                "id": charge.charge_id, "dataset": dataset, "subject": charge.subject,
                "eps": result.epsilon, "rho": result.rho, "over": result.reason, "at": stamp}))
            self._ids.add(charge.charge_id)
        if lines:
            self.segments.append_many(lines)  # one write for the batch, then one sync
            self.segments.sync()
        return len(lines)

    def close(self) -> None:
        """Sync and close."""
        self.segments.close()
