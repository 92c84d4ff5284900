"""Data lineage of a cycle (offset ranges per partition, audit-leaf ranges, row counts) and the
resume position: where a restarted trainer continues so that no record is trained twice.

The resume position of a saved version is stored inside its signed card
(`lineage.resume_offsets`) and mirrored to Redis after the save; on start the trainer takes,
per partition, the furthest of: the newest card on disk, Redis, and the group's committed
offsets (committed only after the registry write). A crash anywhere before the registry
rename loses only in-memory training, which the restart redoes from the same offsets.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from services.trainer.decode import Batch

COUNTS = ("consumed", "train", "validation", "skipped", "unlabelled", "rejected")


def _widen(ranges: dict[int, tuple[int, int]], key: int, low: int, high: int) -> None:
    old = ranges.get(key)
    ranges[key] = (low, high) if old is None else (min(old[0], low), max(old[1], high))


@dataclass
class CycleLineage:
    """What one worker consumed during one cycle."""

    offsets: dict[int, tuple[int, int]] = field(default_factory=dict)
    audit: dict[int, tuple[int, int]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTS, 0))

    def add(self, batch: Batch) -> None:
        """Fold one round's batch in."""
        for partition, (low, high) in batch.offsets.items():
            _widen(self.offsets, partition, low, high)
        for partition, (low, high) in batch.audit.items():
            _widen(self.audit, partition, low, high)
        self.counts["consumed"] += batch.consumed
        self.counts["train"] += len(batch.train)
        self.counts["validation"] += len(batch.validation)
        self.counts["skipped"] += batch.skipped
        self.counts["unlabelled"] += batch.unlabelled
        self.counts["rejected"] += len(batch.rejected)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (partition keys as text)."""
        return {
            "offsets": {str(p): list(r) for p, r in self.offsets.items()},
            "audit": {str(p): list(r) for p, r in self.audit.items()},
            "counts": dict(self.counts),
        }


def merge(parts: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Combine the workers' `to_json` outputs into the card's lineage fields."""
    offsets: dict[int, tuple[int, int]] = {}
    audit: dict[int, tuple[int, int]] = {}
    counts = dict.fromkeys(COUNTS, 0)
    for part in parts:
        for p, (low, high) in part["offsets"].items():
            _widen(offsets, int(p), int(low), int(high))
        for p, (low, high) in part["audit"].items():
            _widen(audit, int(p), int(low), int(high))
        for key in COUNTS:
            counts[key] += int(part["counts"].get(key, 0))
    return {
        "partitions": {str(p): [lo, hi] for p, (lo, hi) in sorted(offsets.items())},
        "audit_leaves": {str(p): [lo, hi] for p, (lo, hi) in sorted(audit.items())},
        "rows": counts,
    }


def furthest(*positions: Mapping[Any, Any]) -> dict[int, int]:
    """Per partition, the largest next-offset among `positions` (keys may be text)."""
    out: dict[int, int] = {}
    for position in positions:
        for partition, offset in position.items():
            p, o = int(partition), int(offset)
            if o >= 0:
                out[p] = max(out.get(p, 0), o)
    return out
