"""Turn consumed `events.governed` records into a training batch: payloads split into train and
held-out rows, the offset and audit-leaf ranges they came from, and what had to be rejected.

Only records carrying governance's MAC over their exact bytes (`shared.governed_mac`) are
used; any other is dead-lettered as `unauthenticated` and never trained on or put in lineage.
Governance already validated each envelope; the trainer checks only the fields it uses
(event_id, dataset, payload, label, audit reference) with a lean decoder, which costs a fifth
of a full pydantic validation on this hot path.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
from confluent_kafka import TIMESTAMP_NOT_AVAILABLE

from services.trainer.split import is_validation
from shared.governed_mac import MAC_HEADER, GovernedMac
from shared.models.features import FeatureTransform, label_value

Headers = list[tuple[str, bytes]]
SUBJECT_KEY = "__subject_id"  # a row's data subject (bound, charge, forgetting)
UNAUTHENTICATED = "unauthenticated"


def row_subjects(rows: Iterable[Mapping[str, Any]]) -> set[str]:
    """The distinct data subjects of decoded rows."""
    return {str(row.get(SUBJECT_KEY)) for row in rows}


def leave_out(rows: list[dict[str, Any]], gone: set[str]) -> list[dict[str, Any]]:
    """`rows` less those of the `gone` subjects."""
    return [row for row in rows if str(row.get(SUBJECT_KEY)) not in gone]


@dataclass(frozen=True)
class Rejected:
    """A record the trainer cannot use, with the reason it goes to the DLQ."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: Headers
    reason: str
    detail: str


@dataclass
class Batch:
    """What one worker consumed in one round."""

    train: list[dict[str, Any]] = field(default_factory=list)
    validation: list[dict[str, Any]] = field(default_factory=list)
    headers: list[Headers] = field(default_factory=list)
    offsets: dict[int, tuple[int, int]] = field(default_factory=dict)
    audit: dict[int, tuple[int, int]] = field(default_factory=dict)
    next_offsets: dict[int, int] = field(default_factory=dict)
    consumed: int = 0
    skipped: int = 0
    unlabelled: int = 0
    rejected: list[Rejected] = field(default_factory=list)
    features: tuple[FeatureTransform, npt.NDArray[np.float32], npt.NDArray[np.float32]] | None = (
        None)
    times: tuple[float, float] | None = None  # first and last Kafka timestamp (s) of the data
    forgotten: int = 0  # training rows left out: their subject was forgotten after governance

    def subjects(self) -> list[str]:
        """The distinct subjects of the training and held-out rows."""
        return sorted(row_subjects((*self.train, *self.validation)))

    def drop_forgotten(self, gone: set[str]) -> None:
        """Leave out the training and held-out rows of `gone` subjects."""
        keep = [i for i, row in enumerate(self.train) if str(row.get(SUBJECT_KEY)) not in gone]
        if len(keep) < len(self.train):
            self.forgotten += len(self.train) - len(keep)
            self.train = [self.train[i] for i in keep]
            if self.features is not None:
                transform, x, y = self.features
                self.features = (transform, x[keep], y[keep])
        self.validation = leave_out(self.validation, gone)

    def saw(self, seconds: float) -> None:
        """Widen the data window to a record's timestamp."""
        low, high = self.times or (seconds, seconds)
        self.times = (min(low, seconds), max(high, seconds))

    def featurize(self, transform: FeatureTransform) -> tuple[
            npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """The training rows' (features, labels) under `transform` (computed once per batch)."""
        if self.features is None or self.features[0] is not transform:
            self.features = (transform, transform.transform(self.train),
                             transform.labels(self.train))
        return self.features[1], self.features[2]

    def extend(self, other: Batch) -> None:
        """Append a later batch of the same worker."""
        if (self.features is not None and other.features is not None
                and self.features[0] is other.features[0]):
            self.features = (self.features[0],
                             np.concatenate([self.features[1], other.features[1]]),
                             np.concatenate([self.features[2], other.features[2]]))
        elif self.train or other.train:
            self.features = None
        self.train.extend(other.train)
        self.validation.extend(other.validation)
        self.headers.extend(other.headers)
        for partition, (low, high) in other.offsets.items():
            _span(self.offsets, partition, low)
            _span(self.offsets, partition, high)
        for partition, (low, high) in other.audit.items():
            _span(self.audit, partition, low)
            _span(self.audit, partition, high)
        for partition, offset in other.next_offsets.items():
            self.next_offsets[partition] = max(self.next_offsets.get(partition, 0), offset)
        if other.times is not None:
            self.saw(other.times[0])
            self.saw(other.times[1])
        self.consumed += other.consumed
        self.skipped += other.skipped
        self.unlabelled += other.unlabelled
        self.rejected.extend(other.rejected)


def _span(ranges: dict[int, tuple[int, int]], key: int, value: int) -> None:
    low, high = ranges.get(key, (value, value))
    ranges[key] = (min(low, value), max(high, value))


def _check(obj: Any, dataset: str) -> tuple[str, dict[str, Any], tuple[int, int] | None] | str:
    """(event_id, payload, audit) for a usable envelope, an error text otherwise; an empty
    text means the event belongs to another dataset."""
    if not isinstance(obj, dict):
        return "envelope: top level must be a JSON object"
    event_id, payload = obj.get("event_id"), obj.get("payload")
    if not isinstance(event_id, str) or not event_id:
        return "event_id: missing or not a string"
    if obj.get("dataset") != dataset:
        return "" if isinstance(obj.get("dataset"), str) else "dataset: missing"
    if not isinstance(payload, dict):
        return "payload: missing or not an object"
    audit = obj.get("audit")
    ref = None
    if isinstance(audit, dict):
        part, leaf = audit.get("partition"), audit.get("leaf_index")
        if isinstance(part, int) and isinstance(leaf, int):
            ref = (part, leaf)
    return event_id, payload, ref


def decode_batch(messages: Sequence[Any], dataset: str, label: str, val_percent: int,
                 mac: GovernedMac) -> Batch:
    """Sort confluent-kafka messages into a Batch (messages with errors are ignored; records
    without governance's valid MAC are rejected as `unauthenticated`, before being parsed)."""
    batch = Batch()
    for msg in messages:
        if msg.error() is not None:
            continue
        partition, offset = msg.partition(), msg.offset()
        batch.consumed += 1
        _span(batch.offsets, partition, offset)
        batch.next_offsets[partition] = max(batch.next_offsets.get(partition, 0), offset + 1)
        value = msg.value() or b""
        headers = [(k, v) for k, v in (msg.headers() or []) if v is not None]
        tag = next((v for k, v in headers if k == MAC_HEADER), None)
        if not mac.verify(value, tag):
            batch.rejected.append(Rejected(
                msg.topic(), partition, offset, msg.key(), value, headers, UNAUTHENTICATED,
                "no valid governance MAC" if tag else "no governance MAC header"))
            continue
        kind, stamp = msg.timestamp()
        if kind != TIMESTAMP_NOT_AVAILABLE:
            batch.saw(stamp / 1000)
        try:
            obj = orjson.loads(value)
            checked = _check(obj, dataset)
        except orjson.JSONDecodeError as error:
            obj, checked = None, f"envelope: not valid JSON: {error}"
        if isinstance(checked, str):
            if checked:
                batch.rejected.append(Rejected(msg.topic(), partition, offset, msg.key(), value,
                                               headers, "invalid_envelope", checked))
            else:
                batch.skipped += 1
            continue
        event_id, payload, ref = checked
        if label_value(payload.get(label)) is None:
            batch.unlabelled += 1
            continue
        if ref is not None:
            _span(batch.audit, ref[0], ref[1])
        batch.headers.append(headers)
        subject = obj.get("subject_id") if isinstance(obj, dict) else None
        payload[SUBJECT_KEY] = subject if isinstance(subject, str) else event_id
        if is_validation(event_id, val_percent):
            batch.validation.append({**payload, "__event_id": event_id})
        else:
            batch.train.append(payload)
    return batch
