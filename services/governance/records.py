"""The AuditRecord: one sealed decision, a leaf of the audit log's Merkle tree.

A record's leaf data is its canonical JSON (sorted keys, compact), exactly as stored in the
segment line and published on `audit.log`. The record names its own log, partition and leaf
index and the hash of the previous leaf, so a leaf cannot be replayed elsewhere and a reader of
the topic can follow the chain without the whole tree.
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

RECORD_VERSION = 1


class Kind:
    """Decision kinds that governance itself records (others come from `audit.requests`)."""

    RELEASED = "event_released"
    WITHHELD = "event_withheld"
    REJECTED = "event_rejected"
    DECISION_REJECTED = "decision_rejected"
    RELEASE_CHARGE = "release_charge"


class Reason:
    """Why an event was withheld or rejected."""

    FORGOTTEN = "subject_forgotten"
    NO_CONSENT = "consent_withdrawn"
    SUBJECT_BUDGET = "subject_budget_exhausted"
    DATASET_BUDGET = "dataset_budget_exhausted"
    CONTRIBUTION_BOUND = "contribution_bound_reached"
    INVALID_CHARGE = "invalid_charge"
    DUPLICATE = "duplicate_event"
    BAD_ENVELOPE = "bad_envelope"
    UNKNOWN_DATASET = "unknown_dataset"
    BAD_EPSILON = "invalid_epsilon"


class AuditRecord(BaseModel):
    """A sealed decision about data."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: int = RECORD_VERSION
    log: str
    partition: int = Field(ge=0)
    leaf_index: int = Field(ge=0)
    prev: str = Field(description="Hex leaf hash of the previous record ('' for the first).")
    identity: str = Field(description="What makes this decision unique (idempotency key).")
    kind: str
    actor: str
    principal: str | None = Field(
        default=None, description="The verified principal that signed the decision.")
    key_id: str | None = Field(default=None, description="Its signing key's id.")
    reason: str | None = None
    event_id: str | None = None
    decision_id: str | None = None
    subject_id: str | None = None
    dataset: str | None = None
    epsilon: float | None = None
    rho: float | None = None
    delta: float | None = None
    mechanism: str | None = None
    dp_enabled: bool | None = None
    source: str = Field(description="topic/partition/offset the decision was made from.")
    occurred_at: str | None = None
    recorded_at: str
    detail: dict[str, Any] = Field(default_factory=dict)

    def canonical(self) -> bytes:
        """The leaf data: sorted-key compact JSON."""
        return canonical_json(self.model_dump(mode="json"))


FIELDS = frozenset(AuditRecord.model_fields)
_OPTIONAL = {name: info.get_default(call_default_factory=True)
             for name, info in AuditRecord.model_fields.items() if not info.is_required()}
_REQUIRED = FIELDS - _OPTIONAL.keys()


def record_bytes(fields: dict[str, Any], **more: Any) -> bytes:
    """The canonical JSON of an AuditRecord built from `fields` and `more` (defaults filled
    in) without model validation, for the hot path; `parse_record` reads it back. The bytes
    are right-sized: orjson's own keep their whole output buffer (8 KiB behind a ~700-byte
    leaf), and a batch's leaves live until its outputs are produced."""
    record = {**_OPTIONAL, **fields, **more}
    if not record.keys() <= FIELDS or not record.keys() >= _REQUIRED:
        raise ValueError(f"AuditRecord fields unknown: {sorted(record.keys() - FIELDS)}, "
                         f"missing: {sorted(_REQUIRED - record.keys())}")
    return bytes(memoryview(canonical_json(record)))


def canonical_json(obj: dict[str, Any]) -> bytes:
    """Sorted-key compact JSON bytes."""
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)


def parse_record(line: bytes) -> AuditRecord:
    """Decode a stored or published record (ValueError when malformed)."""
    return AuditRecord.model_validate_json(line)
