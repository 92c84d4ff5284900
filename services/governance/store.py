"""The audit log's durable store: per partition, an append-only segment log of AuditRecords
(the Merkle leaves) and its signed checkpoints, under `<data_dir>/governance/audit/pNNNN/`.

Appends are idempotent per decision identity: appending an identity that is already sealed
returns the existing leaf, so a batch replayed after a crash reuses its leaves instead of
appending twice. The store is the source of truth; `audit.log` on Kafka is a copy.

In memory it keeps, per leaf, only its identity and where it lies (≈ 160 bytes); the leaf
itself is read back from its segment when a replay or a duplicate needs it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.governance.checkpoints import Checkpoint, CheckpointLog, make_checkpoint
from services.governance.merkle import CompactRange, leaf_hash
from services.governance.records import record_bytes
from services.governance.segments import SegmentLog

log = logging.getLogger(__name__)

SEGMENTS = "segments"
_SHIFT = 40  # a leaf index below 2**40 beside its partition number in one int
_MASK = (1 << _SHIFT) - 1


class StoreError(RuntimeError):
    """The store on disk is inconsistent; `lepton audit verify` says where."""


@dataclass(frozen=True, slots=True)
class Sealed:
    """Where and what a sealed decision is."""

    partition: int
    leaf_index: int
    kind: str
    reason: str | None
    source: str


def partition_dir(root: Path, partition: int) -> Path:
    """The directory of one partition's segments and checkpoints."""
    return root / f"p{partition:04d}"


def partitions_on_disk(root: Path) -> list[int]:
    """Partition numbers that have a directory under `root`."""
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        if path.is_dir() and path.name.startswith("p") and path.name[1:].isdigit():
            found.append(int(path.name[1:]))
    return sorted(found)


class PartitionLog:
    """One partition: its segments, Merkle compact range and checkpoints."""

    def __init__(self, directory: Path, *, segment_bytes: int, fsync: bool) -> None:
        self.directory = directory
        self.segments = SegmentLog(directory / SEGMENTS, segment_bytes=segment_bytes,
                                   fsync=fsync)
        self.checkpoints = CheckpointLog(directory, fsync=fsync)
        self.compact = CompactRange()
        self.last_hash = b""
        self.latest: Checkpoint | None = None  # the latest signed checkpoint

    @property
    def signed_size(self) -> int:
        """Leaves covered by the latest checkpoint."""
        return self.latest.tree_size if self.latest is not None else 0

    @property
    def size(self) -> int:
        """Number of leaves."""
        return self.compact.size

    def line(self, index: int) -> bytes:
        """The stored bytes of leaf `index`, read from its segment."""
        try:
            return self.segments.read(index)
        except IndexError:
            raise StoreError(f"leaf {index} is not in {self.directory}") from None


class AuditStore:
    """All partitions of the audit log on disk, with an index of sealed identities."""

    def __init__(self, root: Path, log_id: str, *, segment_bytes: int = 64 << 20,
                 fsync: bool = True) -> None:
        self.root = root
        self.log_id = log_id
        self._segment_bytes = segment_bytes
        self._fsync = fsync
        self.parts: dict[int, PartitionLog] = {}
        self._index: dict[str, int] = {}  # identity → partition << _SHIFT | leaf index

    def open(self, partitions: int) -> None:
        """Load every partition (at least `partitions` of them), rebuilding the index and the
        Merkle state, cutting torn tails; StoreError when the store is inconsistent."""
        numbers = set(range(partitions)) | set(partitions_on_disk(self.root))
        for number in sorted(numbers):
            part = PartitionLog(partition_dir(self.root, number),
                                segment_bytes=self._segment_bytes, fsync=self._fsync)
            self._load(number, part)
            part.segments.open_for_append()
            self.parts[number] = part

    def _load(self, number: int, part: PartitionLog) -> None:
        checkpoints = {cp.tree_size: cp for cp in part.checkpoints.read()}
        for line in part.segments.scan():
            obj = orjson.loads(line)
            index = part.size
            if obj.get("leaf_index") != index or obj.get("partition") != number:
                raise StoreError(f"partition {number}: line {index} is leaf "
                                 f"{obj.get('leaf_index')} of partition {obj.get('partition')}")
            if obj.get("prev") != part.last_hash.hex():
                raise StoreError(f"partition {number}: leaf {index} does not chain to its "
                                 "predecessor")
            part.last_hash = leaf_hash(line)
            part.compact.append(part.last_hash)
            self._index[obj["identity"]] = number << _SHIFT | index
            signed = checkpoints.get(part.size)
            if signed is not None and signed.root != part.compact.root().hex():
                raise StoreError(f"partition {number}: the first {part.size} leaves do not "
                                 "match their signed checkpoint")
        beyond = [size for size in checkpoints if size > part.size]
        if beyond:
            raise StoreError(f"partition {number}: a checkpoint covers {max(beyond)} leaves "
                             f"but only {part.size} are stored (the log was truncated)")
        part.latest = checkpoints[max(checkpoints)] if checkpoints else None
        if part.segments.torn_bytes:
            log.warning("partition %d: cutting a torn final line of %d bytes", number,
                        part.segments.torn_bytes)

    def lookup(self, identity: str) -> Sealed | None:
        """The sealed decision with this identity, if any."""
        where = self._index.get(identity)
        return None if where is None else self._sealed(identity, where)[0]

    def _sealed(self, identity: str, where: int,
                unwritten: dict[int, list[bytes]] | None = None) -> tuple[Sealed, bytes]:
        partition, index = where >> _SHIFT, where & _MASK
        written = self.parts[partition].segments.count
        line = (self.parts[partition].line(index) if index < written or unwritten is None
                else unwritten[partition][index - written])
        obj = orjson.loads(line)
        if obj.get("identity") != identity:
            raise StoreError(f"partition {partition}: leaf {index} is not {identity!r}")
        return Sealed(partition, index, obj["kind"], obj.get("reason"), obj["source"]), line

    def append(self, partition: int, fields: dict[str, Any]) -> tuple[Sealed, bytes, bool]:
        """Seal a decision (fields of AuditRecord without log/partition/leaf_index/prev/
        recorded_at) unless its identity is sealed; returns (where, leaf bytes, new?)."""
        return self.append_many([(partition, fields)])[0]

    def append_many(self, decisions: list[tuple[int, dict[str, Any]]]
                    ) -> list[tuple[Sealed, bytes, bool]]:
        """Seal many decisions in order, as `append` would one by one (an identity sealed
        earlier, or earlier in `decisions`, returns its existing leaf), with one segment write
        per partition."""
        out: list[tuple[Sealed, bytes, bool]] = []
        lines: dict[int, list[bytes]] = {}
        recorded_at = datetime.now(UTC).isoformat(timespec="microseconds")
        for partition, fields in decisions:
            identity = fields["identity"]
            where = self._index.get(identity)
            if where is not None:
                out.append((*self._sealed(identity, where, lines), False))
                continue
            part = self.parts[partition]
            index = part.size
            line = record_bytes(fields, log=self.log_id, partition=partition, leaf_index=index,
                                prev=part.last_hash.hex(), recorded_at=recorded_at)
            part.last_hash = leaf_hash(line)
            part.compact.append(part.last_hash)
            lines.setdefault(partition, []).append(line)
            sealed = Sealed(partition, index, fields["kind"], fields.get("reason"),
                            fields["source"])
            self._index[identity] = partition << _SHIFT | index
            out.append((sealed, line, True))
        for partition, written in lines.items():
            self.parts[partition].segments.append_many(written)
        return out

    def sync(self) -> None:
        """Make every appended record durable (before the Kafka commit that relies on it)."""
        for part in self.parts.values():
            part.segments.sync()

    def unsigned(self, partition: int) -> int:
        """Leaves appended since the partition's latest checkpoint."""
        part = self.parts[partition]
        return part.size - part.signed_size

    def checkpoint(self, partition: int, key: Ed25519PrivateKey) -> Checkpoint:
        """Sync, then sign and append a checkpoint of the partition's current tree head."""
        part = self.parts[partition]
        part.segments.sync()
        checkpoint = make_checkpoint(key, self.log_id, partition, part.size, part.compact.root())
        part.checkpoints.append(checkpoint)
        part.latest = checkpoint
        return checkpoint

    def close(self) -> None:
        """Sync and close every partition."""
        for part in self.parts.values():
            part.segments.close()
