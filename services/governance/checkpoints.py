"""Ed25519-signed checkpoints (signed tree heads) of the audit log, one file per partition.

A checkpoint commits to (log, partition, tree size, root hash, time); its signature covers a
fixed text form of exactly those fields, so anyone with the public key alone can check it.
Checkpoints are appended to `<partition dir>/checkpoints.jsonl` after the records they cover
are on disk.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field

from shared.signing import key_id, sign, verify

CHECKPOINT_FILE = "checkpoints.jsonl"
HEADER = "lepton-audit-checkpoint/v1"


class Checkpoint(BaseModel):
    """A signed statement: partition `partition` of log `log` had `tree_size` leaves and root
    `root` at `timestamp`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    log: str
    partition: int = Field(ge=0)
    tree_size: int = Field(ge=0)
    root: str = Field(pattern=r"^[0-9a-f]{64}$")
    timestamp: str
    key_id: str
    signature: str

    def signed_bytes(self) -> bytes:
        """The exact bytes the signature covers."""
        return signed_text(self.log, self.partition, self.tree_size, self.root, self.timestamp)

    def root_bytes(self) -> bytes:
        """The root hash as bytes."""
        return bytes.fromhex(self.root)


def signed_text(log: str, partition: int, tree_size: int, root_hex: str, timestamp: str) -> bytes:
    """The text form a checkpoint signature covers."""
    return f"{HEADER}\n{log}\n{partition}\n{tree_size}\n{root_hex}\n{timestamp}\n".encode()


def make_checkpoint(
    key: Ed25519PrivateKey, log: str, partition: int, tree_size: int, root: bytes
) -> Checkpoint:
    """Sign a checkpoint of the given tree head now."""
    stamp = datetime.now(UTC).isoformat(timespec="microseconds")
    text = signed_text(log, partition, tree_size, root.hex(), stamp)
    return Checkpoint(log=log, partition=partition, tree_size=tree_size, root=root.hex(),
                      timestamp=stamp, key_id=key_id(key.public_key()),
                      signature=sign(key, text))


def check_signature(checkpoint: Checkpoint, public: Ed25519PublicKey) -> bool:
    """True when the checkpoint is signed by `public` (and names that key)."""
    return checkpoint.key_id == key_id(public) and verify(
        public, checkpoint.signed_bytes(), checkpoint.signature)


class CheckpointLog:
    """The append-only file of one partition's checkpoints."""

    def __init__(self, directory: Path, *, fsync: bool = True) -> None:
        self.path = directory / CHECKPOINT_FILE
        self.fsync = fsync

    def append(self, checkpoint: Checkpoint) -> None:
        """Append (and fsync) one checkpoint."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab") as handle:
            handle.write(orjson.dumps(checkpoint.model_dump()) + b"\n")
            handle.flush()
            if self.fsync:
                os.fsync(handle.fileno())

    def read(self) -> list[Checkpoint]:
        """Every complete checkpoint line, in order (ValueError on a malformed line)."""
        if not self.path.exists():
            return []
        body, _, _torn = self.path.read_bytes().rpartition(b"\n")
        out = []
        for number, line in enumerate(body.split(b"\n") if body else [], start=1):
            try:
                out.append(Checkpoint.model_validate_json(line))
            except ValueError as error:
                raise ValueError(f"{self.path} line {number}: {error}") from None
        return out
