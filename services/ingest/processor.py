"""Turn a batch of raw Kafka records into output records: clean events for `events.clean`,
dead letters for `events.rejected`, and nothing for duplicates.

Every subject id leaving ingest is its keyed pseudonym (`shared.pseudonym`): the envelope's
`subject_id`, the payload's subject field and the Kafka key. Dead letters are sealed
(`shared.dlq`): under the subject's data key when the record names a subject (so `forget` shreds
them), else to the DLQ public key; a forgotten subject's rejected bytes are discarded. A record
replayed by `lepton dlq replay` carries `lepton.replay.origin` (its first source, so a derived
event id stays the same) and `lepton.replay.attempt` (its dead-letter attempt count, continued
here).

Per batch: decode + validate + clean every record (CPU only); one Redis round trip for dedup
claims and forgotten subjects; at most two for data keys; then, per record, one process span
(continuing the producer's trace, backdated to when the record's work began) in which the PII is
protected and the output encoded with the span's context in its headers. A record-level failure,
expected or not, becomes a dead letter; Redis and Kafka failures propagate so the caller retries
the whole batch.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import orjson
from confluent_kafka import Message
from opentelemetry.trace import Status, StatusCode, Tracer

from services.ingest.ciphers import DataKey
from services.ingest.cleaning import Cleaner
from services.ingest.decoding import Datasets, decode_record
from services.ingest.dedup import Claim, Deduper
from services.ingest.keystore import KeyStore
from services.ingest.protect import Protector
from services.ingest.rejection import Reason, Rejection, Stage
from shared.dlq import (
    LABEL,
    REPLAY_ATTEMPT,
    REPLAY_ORIGIN,
    SEALED_HEADER,
    DeadLetterSealer,
    Sealing,
)
from shared.events import (
    CONTENT_TYPE_JSON,
    Change,
    Envelope,
    Header,
    HeaderList,
    Scalar,
    dlq_headers,
    encode,
)
from shared.stage import Output
from shared.topics import Topics
from shared.tracing import inject_headers, process_span

log = logging.getLogger(__name__)

SourceKey = tuple[str, int, int]
DLQ_MAX_VALUE = 1_900_000  # below the producer's message.max.bytes, leaving room for headers
DLQ_TRUNCATED = "lepton.dlq.truncated"
Headers = list[tuple[str, str | bytes | None]]


@dataclass
class BatchResult:
    """What a batch produced and how its records ended."""

    outputs: list[Output] = field(default_factory=list)
    consumed: int = 0
    clean: int = 0
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    datasets: Counter[str] = field(default_factory=Counter)


@dataclass(slots=True)
class _Item:
    record: Message
    topic: str
    partition: int
    offset: int
    started: int
    envelope: Envelope | None = None
    cleaner: Cleaner | None = None
    payload: dict[str, Scalar] | None = None
    changes: list[Change] = field(default_factory=list)
    rejection: Rejection | None = None
    exception: str = ""
    duplicate: bool = False
    subject: str | None = None  # the pseudonym, when the record names a subject

    @property
    def source(self) -> str:
        return f"{self.topic}/{self.partition}/{self.offset}"


class Processor:
    """The ingest pipeline for one batch, independent of the Kafka client loop."""

    def __init__(self, topics: Topics, datasets: Datasets, deduper: Deduper,
                 keystore: KeyStore, protector: Protector, tracer: Tracer, group: str,
                 sealer: DeadLetterSealer) -> None:
        self._topics = topics
        self._datasets = datasets
        self._deduper = deduper
        self._keystore = keystore
        self._protector = protector
        self._tracer = tracer
        self._group = group
        self._pseudonyms = keystore.pseudonyms
        self._sealer = sealer

    def process(self, records: Sequence[Message],
                attempts: Mapping[SourceKey, int] | None = None) -> BatchResult:
        """Outputs for `records`; raises only for infrastructure failures (Redis, KMS store)."""
        items = [self._prepare(record) for record in records]
        valid = [item for item in items if item.rejection is None]
        claims = []
        subjects: dict[str, None] = {}
        for item in items:
            if item.rejection is not None:
                if item.subject is not None:
                    subjects[item.subject] = None
                continue
            assert item.envelope is not None
            assert item.cleaner is not None
            claims.append(Claim(item.envelope.dataset, item.envelope.event_id, item.source))
            if self._protector.pii_fields(item.cleaner.spec):
                subjects[item.envelope.subject_id] = None
        duplicate, forgotten = self._deduper.check(claims, list(subjects))
        need_keys: dict[str, None] = {}
        for item, dup in zip(valid, duplicate, strict=True):
            item.duplicate = dup
            assert item.envelope is not None
            assert item.cleaner is not None
            subject = item.envelope.subject_id
            if not dup and subject not in forgotten and self._protector.needs_key(
                item.cleaner.spec
            ):
                need_keys[subject] = None
        existing: dict[str, None] = {}  # subjects only hinted at by an undecodable record
        for item in items:
            if item.rejection is not None and item.subject and item.subject not in forgotten:
                (need_keys if item.envelope is not None else existing)[item.subject] = None
        keys: dict[str, DataKey] = {}
        if need_keys:
            keys, failures = self._keystore.data_keys(need_keys)
            forgotten.update(s for s, why in failures.items() if why == "forgotten")
        if existing.keys() - keys.keys():
            found, _ = self._keystore.data_keys(existing.keys() - keys.keys(), create=False)
            keys.update(found)
        result = BatchResult(consumed=len(items))
        for item in items:
            self._finish(item, keys, forgotten, attempts or {}, result)
        return result

    def _prepare(self, record: Message) -> _Item:
        item = _Item(record, record.topic() or "", record.partition() or 0,
                     record.offset() or 0, time.time_ns())
        raw = b""
        try:
            value = record.value()
            raw = value.encode() if isinstance(value, str) else (value or b"")
            topic, partition, offset = _origin(record) or (item.topic, item.partition,
                                                           item.offset)
            envelope = decode_record(value if value is None else raw, topic, partition,
                                     offset, record.timestamp(), self._datasets)
            item.subject = self._pseudonyms.of(envelope.subject_id)
            item.envelope = envelope.model_copy(update={"subject_id": item.subject})
            item.cleaner = self._datasets.require(item.envelope)
            item.payload, item.changes = item.cleaner.clean(
                envelope.payload, envelope.subject_id
            )
            if item.cleaner.subject_field in item.payload:
                item.payload[item.cleaner.subject_field] = item.subject
        except Rejection as rejection:
            item.rejection = rejection
        except Exception as error:  # a poison record must never stop the partition
            self._internal(item, error, Stage.VALIDATE)
        if item.rejection is not None and item.subject is None:
            hint = _subject_hint(raw)
            item.subject = self._pseudonyms.of(hint) if hint else None
        return item

    def _internal(self, item: _Item, error: Exception, stage: Stage) -> None:
        item.exception = type(error).__name__
        item.rejection = Rejection(Reason.INTERNAL_ERROR, f"{item.exception} while processing",
                                   stage=stage)
        log.error("internal error at %s (%s stage): %s", item.source, stage.value,
                  item.exception)
        log.debug("internal error detail", exc_info=error)

    def _finish(self, item: _Item, keys: Mapping[str, DataKey], forgotten: set[str],
                attempts: Mapping[SourceKey, int], result: BatchResult) -> None:
        envelope = item.envelope
        attributes = {"lepton.dataset": envelope.dataset if envelope else "",
                      "lepton.event_id": envelope.event_id if envelope else ""}
        with process_span(self._tracer, item.topic, _headers(item.record),
                          partition=item.partition, offset=item.offset, group=self._group,
                          attributes=attributes, start_time=item.started) as span:
            if item.rejection is None and item.duplicate:
                result.duplicates += 1
                span.set_attribute("lepton.outcome", "duplicate")
                return
            if item.rejection is None:
                try:
                    result.outputs.append(self._clean_output(item, keys, forgotten))
                    result.clean += 1
                    result.datasets[envelope.dataset if envelope else ""] += 1
                    span.set_attribute("lepton.outcome", "clean")
                    return
                except Rejection as rejection:
                    item.rejection = rejection
                except Exception as error:  # never let one record fail the batch
                    self._internal(item, error, Stage.PROTECT)
            final = item.rejection
            assert final is not None
            attempt = (attempts.get((item.topic, item.partition, item.offset), 0) + 1
                       + _replay_attempt(item.record))
            result.outputs.append(self._dead_letter(item, final, attempt, keys, forgotten))
            result.rejected[final.reason.value] += 1
            span.set_attribute("lepton.outcome", "rejected")
            span.set_attribute("lepton.dlq.reason", final.reason.value)
            if final.reason is Reason.INTERNAL_ERROR:
                span.set_status(Status(StatusCode.ERROR, item.exception))

    def _clean_output(self, item: _Item, keys: Mapping[str, DataKey],
                      forgotten: set[str]) -> Output:
        envelope, cleaner, payload = item.envelope, item.cleaner, item.payload
        assert envelope is not None
        assert cleaner is not None
        assert payload is not None
        subject = envelope.subject_id  # already the pseudonym
        self._protector.protect(cleaner.spec, envelope.event_id, payload, keys.get(subject),
                                subject in forgotten, item.changes)
        out = envelope.model_copy(update={"payload": payload, "changes": tuple(item.changes)})
        headers: HeaderList = [(Header.CONTENT_TYPE, CONTENT_TYPE_JSON)]
        inject_headers(headers)
        if len(headers) == 1:  # tracing is off: pass the producer's context through unchanged
            headers.extend((k, v) for k, v in _headers(item.record)
                           if k in (Header.TRACEPARENT, Header.TRACESTATE))
        return Output(self._topics.clean, subject.encode(), encode(out), headers)

    def _dead_letter(self, item: _Item, rejection: Rejection, attempt: int,
                     keys: Mapping[str, DataKey], forgotten: set[str]) -> Output:
        value = item.record.value()
        raw = value.encode() if isinstance(value, str) else (value or b"")
        headers = dlq_headers(
            _headers(item.record), reason=rejection.reason.value, detail=rejection.detail,
            stage=rejection.stage.value, exception=item.exception or rejection.exception,
            topic=item.topic, partition=item.partition, offset=item.offset, attempt=attempt,
            service="ingest",
        )
        if len(raw) > DLQ_MAX_VALUE:  # the producer could not send it whole; the source has it
            headers.append((DLQ_TRUNCATED, str(len(raw)).encode()))
            raw = raw[:DLQ_MAX_VALUE]
        subject = item.subject
        key = keys.get(subject) if subject else None
        if key is not None and subject not in forgotten:
            sealed, how = key.seal(LABEL, raw), Sealing.SUBJECT
        else:
            sealed, how = self._sealer.seal(raw, forgotten=subject in forgotten)
        headers.append((SEALED_HEADER, how.value.encode()))
        return Output(self._topics.rejected, subject.encode() if subject else None, sealed,
                      headers)


def _subject_hint(raw: bytes) -> str | None:
    """The `subject_id` a rejected record names, if it is JSON with a plausible one."""
    if not raw or len(raw) > DLQ_MAX_VALUE:
        return None
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    subject = obj.get("subject_id") if isinstance(obj, dict) else None
    return subject if isinstance(subject, str) and 0 < len(subject) <= 200 else None


def _origin(record: Message) -> tuple[str, int, int] | None:
    """A replayed record's first source (topic, partition, offset), if it names one."""
    for key, value in _headers(record):
        if key == REPLAY_ORIGIN and value is not None:
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
            topic, _, rest = text.rpartition("/")
            topic, _, partition = topic.rpartition("/")
            if topic and partition.isdigit() and rest.isdigit():
                return topic, int(partition), int(rest)
    return None


def _replay_attempt(record: Message) -> int:
    for key, value in _headers(record):
        if key == REPLAY_ATTEMPT and value is not None:
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
            return int(text) if text.isdigit() and len(text) < 6 else 0
    return 0


def _headers(record: Message) -> Headers:
    headers = record.headers()
    if isinstance(headers, dict):
        return list(headers.items())
    return headers or []
