"""Checking the audit store offline: full verification against the signed checkpoints, and
inclusion and consistency proofs that a third party checks with the public key alone.

Reads `<data_dir>/governance/audit/` (never writes); used by `lepton audit ...`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from services.governance.checkpoints import Checkpoint, CheckpointLog, check_signature
from services.governance.merkle import (
    CompactRange,
    ProofError,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)
from services.governance.records import parse_record
from services.governance.segments import SegmentError, SegmentLog
from services.governance.store import SEGMENTS, partition_dir, partitions_on_disk

INCLUSION_FORMAT = "lepton-audit-inclusion/v1"
CONSISTENCY_FORMAT = "lepton-audit-consistency/v1"
MAX_PROBLEMS = 20


@dataclass
class PartitionReport:
    """What verifying one partition found."""

    partition: int
    size: int = 0
    checkpoints: int = 0
    signed_size: int = 0
    torn_bytes: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return not self.problems


def _read_lines(root: Path, partition: int) -> tuple[list[bytes], SegmentLog]:
    segments = SegmentLog(partition_dir(root, partition) / SEGMENTS)
    return list(segments.scan()), segments


def verify_partition(root: Path, partition: int, public: Ed25519PublicKey,
                     log_id: str | None = None) -> PartitionReport:
    """Recompute one partition's tree from its records and check it against every checkpoint."""
    report = PartitionReport(partition)
    problems = report.problems
    try:
        checkpoints = CheckpointLog(partition_dir(root, partition)).read()
    except ValueError as error:
        problems.append(f"checkpoints unreadable: {error}")
        checkpoints = []
    report.checkpoints = len(checkpoints)
    _check_checkpoints(checkpoints, partition, public, log_id, problems)
    by_size = {cp.tree_size: cp for cp in checkpoints}
    try:
        lines, segments = _read_lines(root, partition)
    except SegmentError as error:
        problems.append(f"segments: {error}")
        return report
    report.torn_bytes = segments.torn_bytes
    hashes: list[bytes] = []
    compact = CompactRange()
    previous = b""
    identities: set[str] = set()
    for index, line in enumerate(lines):
        if len(problems) >= MAX_PROBLEMS:
            break
        try:
            record = parse_record(line)
        except (ValidationError, ValueError):
            problems.append(f"leaf {index}: not a valid audit record (edited?)")
            record = None
        if record is not None:
            if record.leaf_index != index or record.partition != partition:
                problems.append(f"leaf {index}: says it is leaf {record.leaf_index} of "
                                f"partition {record.partition} (dropped, inserted or reordered)")
            if record.prev != previous.hex():
                problems.append(f"leaf {index}: does not chain to leaf {index - 1} "
                                "(that leaf was edited, dropped or reordered)")
            if log_id is not None and record.log != log_id:
                problems.append(f"leaf {index}: belongs to log {record.log!r}, not {log_id!r}")
            if record.identity in identities:
                problems.append(f"leaf {index}: decision {record.identity} is sealed twice")
            identities.add(record.identity)
        previous = leaf_hash(line)
        hashes.append(previous)
        compact.append(previous)
        signed = by_size.get(compact.size)
        if signed is not None and signed.root != compact.root().hex():
            problems.append(f"leaves [0, {compact.size}) do not match the checkpoint signed at "
                            f"{signed.timestamp}: an entry was edited, dropped, inserted or "
                            "reordered")
    report.size = len(lines)
    report.signed_size = max((cp.tree_size for cp in checkpoints), default=0)
    if report.signed_size > report.size:
        problems.append(f"a checkpoint covers {report.signed_size} leaves but only "
                        f"{report.size} are stored: the log was truncated")
    if not problems:
        _check_consistency_chain(checkpoints, hashes, problems)
    return report


def _check_checkpoints(checkpoints: list[Checkpoint], partition: int, public: Ed25519PublicKey,
                       log_id: str | None, problems: list[str]) -> None:
    previous: Checkpoint | None = None
    for cp in checkpoints:
        where = f"checkpoint of size {cp.tree_size} ({cp.timestamp})"
        if not check_signature(cp, public):
            problems.append(f"{where}: bad signature or signed by another key")
        if cp.partition != partition or (log_id is not None and cp.log != log_id):
            problems.append(f"{where}: is for {cp.log} partition {cp.partition}")
        if previous is not None and (cp.tree_size < previous.tree_size
                                     or cp.timestamp < previous.timestamp):
            problems.append(f"{where}: goes back in size or time after {previous.tree_size}")
        previous = cp


def _check_consistency_chain(checkpoints: list[Checkpoint], hashes: list[bytes],
                             problems: list[str]) -> None:
    nonempty = [cp for cp in checkpoints if cp.tree_size > 0]
    for old, new in itertools.pairwise(nonempty):
        try:
            proof = consistency_proof(old.tree_size, hashes[: new.tree_size])
            verify_consistency(old.tree_size, new.tree_size, old.root_bytes(), new.root_bytes(),
                               proof)
        except (ProofError, ValueError) as error:
            problems.append(f"checkpoints {old.tree_size} → {new.tree_size} are not "
                            f"consistent: {error}")


def verify_store(root: Path, public: Ed25519PublicKey,
                 log_id: str | None = None) -> list[PartitionReport]:
    """Verify every partition found under `root`."""
    return [verify_partition(root, p, public, log_id) for p in partitions_on_disk(root)]


def find_event(root: Path, event_id: str) -> list[tuple[int, int, bytes]]:
    """(partition, leaf index, record bytes) of every record about `event_id`."""
    return [(p, i, line) for p, i, line, record in _naming(root, [event_id])
            if record.get("event_id") == event_id]


def find_subject(root: Path, pseudonym: str) -> list[tuple[int, int, dict[str, Any]]]:
    """(partition, leaf index, record) of every record naming the subject's pseudonym."""
    return find_records(root, pseudonym, set())[0]


def find_records(root: Path, pseudonym: str, decision_ids: set[str]
                 ) -> tuple[list[tuple[int, int, dict[str, Any]]], dict[str, dict[str, Any]]]:
    """In one pass over the store: (partition, leaf index, record) of every record naming the
    subject's pseudonym, and the first record of each of these decisions, by decision id."""
    about: list[tuple[int, int, dict[str, Any]]] = []
    decisions: dict[str, dict[str, Any]] = {}
    for partition, index, _, record in _naming(root, [pseudonym, *decision_ids]):
        if record.get("subject_id") == pseudonym:
            about.append((partition, index, record))
        if record.get("decision_id") in decision_ids:
            decisions.setdefault(record["decision_id"], record)
    return about, decisions


def _naming(root: Path, values: list[str]) -> Iterator[tuple[int, int, bytes, dict[str, Any]]]:
    """(partition, leaf index, bytes, record) of every record whose bytes hold one of `values`
    as a JSON string (only those are parsed; the caller checks the field)."""
    needles = [orjson.dumps(v) for v in values]
    for partition in partitions_on_disk(root):
        lines, _ = _read_lines(root, partition)
        for index, line in enumerate(lines):
            if any(n in line for n in needles):
                yield partition, index, line, orjson.loads(line)


def build_inclusion(root: Path, partition: int, index: int) -> dict[str, Any]:
    """An inclusion proof of leaf `index` against the partition's latest covering checkpoint."""
    checkpoints = CheckpointLog(partition_dir(root, partition)).read()
    covering = [cp for cp in checkpoints if cp.tree_size > index]
    if not covering:
        raise ProofError(f"leaf {index} of partition {partition} is not yet covered by a signed "
                         "checkpoint; retry after the next checkpoint")
    checkpoint = covering[-1]
    lines, _ = _read_lines(root, partition)
    hashes = [leaf_hash(line) for line in lines[: checkpoint.tree_size]]
    path = inclusion_proof(index, hashes)
    verify_inclusion(index, checkpoint.tree_size, hashes[index], path, checkpoint.root_bytes())
    return {
        "format": INCLUSION_FORMAT,
        "partition": partition,
        "leaf_index": index,
        "tree_size": checkpoint.tree_size,
        "record": lines[index].decode(),
        "inclusion_path": [h.hex() for h in path],
        "checkpoint": checkpoint.model_dump(),
    }


def _hashes(items: list[Any]) -> list[bytes]:
    try:
        return [bytes.fromhex(str(h)) for h in items]
    except ValueError:
        raise ProofError("a proof hash is not hex") from None


def check_inclusion(proof: dict[str, Any], public: Ed25519PublicKey) -> str:
    """Check an inclusion proof with the public key alone; a summary, or ProofError."""
    if proof.get("format") != INCLUSION_FORMAT:
        raise ProofError(f"not a {INCLUSION_FORMAT} proof")
    try:
        checkpoint = Checkpoint.model_validate(proof["checkpoint"])
        index, size, partition = (int(proof["leaf_index"]), int(proof["tree_size"]),
                                  int(proof["partition"]))
        data = str(proof["record"]).encode()
        record = parse_record(data)
    except (KeyError, TypeError, ValueError) as error:
        raise ProofError(f"malformed proof: {error}") from None
    if not check_signature(checkpoint, public):
        raise ProofError("the checkpoint's signature does not verify with this public key")
    if checkpoint.tree_size != size or checkpoint.partition != partition:
        raise ProofError("the proof's tree size or partition differs from its checkpoint's")
    if (record.leaf_index, record.partition, record.log) != (index, partition, checkpoint.log):
        raise ProofError("the record names a different leaf, partition or log")
    verify_inclusion(index, size, leaf_hash(data), _hashes(proof["inclusion_path"]),
                     checkpoint.root_bytes())
    return (f"record {record.identity} ({record.kind}) is leaf {index} of {checkpoint.log} "
            f"partition {partition}, in the tree of {size} signed at {checkpoint.timestamp} "
            f"by key {checkpoint.key_id}")


def build_consistency(root: Path, partition: int, old_size: int | None = None,
                      new_size: int | None = None) -> dict[str, Any]:
    """A consistency proof between two checkpoints (default: the first and the latest)."""
    checkpoints = [cp for cp in CheckpointLog(partition_dir(root, partition)).read()
                   if cp.tree_size > 0]
    if not checkpoints:
        raise ProofError(f"partition {partition} has no checkpoints")
    by_size = {cp.tree_size: cp for cp in checkpoints}
    old = by_size.get(old_size) if old_size is not None else checkpoints[0]
    new = by_size.get(new_size) if new_size is not None else checkpoints[-1]
    if old is None or new is None:
        raise ProofError(f"no checkpoint of that size; sizes are {sorted(by_size)}")
    if old.tree_size > new.tree_size:
        raise ProofError("the old checkpoint is larger than the new one")
    lines, _ = _read_lines(root, partition)
    hashes = [leaf_hash(line) for line in lines[: new.tree_size]]
    path = consistency_proof(old.tree_size, hashes)
    verify_consistency(old.tree_size, new.tree_size, old.root_bytes(), new.root_bytes(), path)
    return {"format": CONSISTENCY_FORMAT, "partition": partition, "old": old.model_dump(),
            "new": new.model_dump(), "consistency_path": [h.hex() for h in path]}


def check_consistency(proof: dict[str, Any], public: Ed25519PublicKey) -> str:
    """Check a consistency proof with the public key alone; a summary, or ProofError."""
    if proof.get("format") != CONSISTENCY_FORMAT:
        raise ProofError(f"not a {CONSISTENCY_FORMAT} proof")
    try:
        old = Checkpoint.model_validate(proof["old"])
        new = Checkpoint.model_validate(proof["new"])
        path = _hashes(list(proof["consistency_path"]))
    except (KeyError, TypeError, ValueError) as error:
        raise ProofError(f"malformed proof: {error}") from None
    for cp in (old, new):
        if not check_signature(cp, public):
            raise ProofError(f"the checkpoint of size {cp.tree_size} has a bad signature")
    if (old.log, old.partition) != (new.log, new.partition):
        raise ProofError("the checkpoints are of different logs or partitions")
    verify_consistency(old.tree_size, new.tree_size, old.root_bytes(), new.root_bytes(), path)
    return (f"{old.log} partition {old.partition}: the tree of {old.tree_size} "
            f"({old.timestamp}) is a prefix of the tree of {new.tree_size} ({new.timestamp})")
