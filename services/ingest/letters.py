"""Dead letters of ingest and what a raw record's headers say about it: the sealed
`events.rejected` record (original headers + `lepton.dlq.*`, the bytes sealed under the
subject's data key or to the DLQ public key, discarded for a forgotten subject, cut to fit when
huge), the subject a broken record hints at, and a replayed record's origin and attempt
count."""

from __future__ import annotations

import orjson
from confluent_kafka import Message

from services.ingest.ciphers import DataKey
from services.ingest.rejection import Rejection
from shared.dlq import (
    LABEL,
    REPLAY_ATTEMPT,
    REPLAY_ORIGIN,
    SEALED_HEADER,
    DeadLetterSealer,
    Sealing,
)
from shared.events import dlq_headers
from shared.stage import Output

DLQ_MAX_VALUE = 1_900_000  # below the producer's message.max.bytes, leaving room for headers
DLQ_TRUNCATED = "lepton.dlq.truncated"
Headers = list[tuple[str, str | bytes | None]]


def dead_letter(record: Message, rejection: Rejection, attempt: int, subject: str | None,
                key: DataKey | None, forgotten: bool, sealer: DeadLetterSealer,
                topic: str) -> Output:
    """The `events.rejected` record for `record` (`subject`: its pseudonym, if known)."""
    value = record.value()
    raw = value.encode() if isinstance(value, str) else (value or b"")
    headers = dlq_headers(
        record_headers(record), reason=rejection.reason.value, detail=rejection.detail,
        stage=rejection.stage.value, exception=rejection.exception,
        topic=record.topic() or "", partition=record.partition() or 0,
        offset=record.offset() or 0, attempt=attempt, service="ingest",
    )
    if len(raw) > DLQ_MAX_VALUE:  # the producer could not send it whole; the source has it
        headers.append((DLQ_TRUNCATED, str(len(raw)).encode()))
        raw = raw[:DLQ_MAX_VALUE]
    if key is not None and not forgotten:  # `forget` shreds it with the subject's key
        sealed, how = key.seal(LABEL, raw), Sealing.SUBJECT
    else:
        sealed, how = sealer.seal(raw, forgotten=forgotten)
    headers.append((SEALED_HEADER, how.value.encode()))
    return Output(topic, subject.encode() if subject else None, sealed, headers, origin=record)


def subject_hint(raw: bytes) -> str | None:
    """The `subject_id` a rejected record names, if it is JSON with a plausible one."""
    if not raw or len(raw) > DLQ_MAX_VALUE:
        return None
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    subject = obj.get("subject_id") if isinstance(obj, dict) else None
    return subject if isinstance(subject, str) and 0 < len(subject) <= 200 else None


def origin(record: Message) -> tuple[str, int, int] | None:
    """A replayed record's first source (topic, partition, offset), if it names one."""
    for key, value in record_headers(record):
        if key == REPLAY_ORIGIN and value is not None:
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
            topic, _, rest = text.rpartition("/")
            topic, _, partition = topic.rpartition("/")
            if topic and partition.isdigit() and rest.isdigit():
                return topic, int(partition), int(rest)
    return None


def replay_attempt(record: Message) -> int:
    """The dead-letter attempts a replayed record already had (0 for a new record)."""
    for key, value in record_headers(record):
        if key == REPLAY_ATTEMPT and value is not None:
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
            return int(text) if text.isdigit() and len(text) < 6 else 0
    return 0


def record_headers(record: Message) -> Headers:
    """A consumed record's headers as a list."""
    headers = record.headers()
    if isinstance(headers, dict):
        return list(headers.items())
    return headers or []
