"""The shape of one governance batch: consumes Kafka messages, and carries each through the
processor's steps as an Item (decoded envelope or decision, verdict, charge, release, sealed
audit position); produces the still-undecided events grouped by dataset."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Message
from pydantic import BaseModel

from services.governance.charges import ChargeResult
from services.governance.store import Sealed
from shared.allowlist import Allowed
from shared.events import Change, Decision, PrivacyStamp, Scalar
from shared.fast_envelope import LeanEnvelope


@dataclass(slots=True)
class Item:
    """One consumed record on its way through the batch."""

    msg: Message
    source: str
    envelope: LeanEnvelope | None = None
    obj: dict[str, Any] | None = None  # the parsed input JSON (becomes the governed event's)
    decision: Decision | None = None
    detail: BaseModel | None = None
    principal: Allowed | None = None
    error: str | None = None
    identity: str = ""
    kind: str | None = None
    reason: str | None = None
    replay: bool = False
    charge: ChargeResult | None = None
    payload: dict[str, Scalar] | None = None
    changes: list[Change] = field(default_factory=list)
    stamp: PrivacyStamp | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    sealed: Sealed | None = None
    line: bytes = b""
    publish: bool = True


def undecided_by_dataset(events: list[Item]) -> dict[str, list[Item]]:
    """Events not yet withheld or released, grouped by dataset (in arrival order)."""
    groups: dict[str, list[Item]] = defaultdict(list)
    for item in events:
        if item.kind is None and item.envelope is not None:
            groups[item.envelope.dataset].append(item)
    return groups
