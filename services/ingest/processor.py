"""Turn a batch of raw Kafka records into output records: clean events for `events.clean`,
dead letters for `events.rejected`, and nothing for duplicates.

Every subject id leaving ingest is its keyed pseudonym (`shared.pseudonym`): the envelope's
`subject_id`, the payload's subject field and the Kafka key. Dead letters are sealed
(letters.py). A record replayed by `lepton dlq replay` carries `lepton.replay.origin` (its first
source, so a derived event id stays the same) and `lepton.replay.attempt` (its dead-letter
attempt count, continued here).

Per batch, as columns: decode every record (orjson + the fast envelope check); clean each
dataset's payloads column by column (cleaning.py, with the quality counts); one Redis round
trip for dedup claims and forgotten subjects; at most two for data keys; protect each PII
column (protect.py); then, per record, one process span (continuing the producer's trace;
unsampled ones cost no SDK work) and the output with the span's context in its headers. A
record-level failure, expected or not, becomes a dead letter; Redis and Kafka failures
propagate so the caller retries the whole batch.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from confluent_kafka import Message
from opentelemetry.trace import Span, Status, StatusCode, Tracer

from services.ingest.ciphers import DataKey
from services.ingest.cleaning import Cleaner
from services.ingest.decoding import Datasets, decode_record
from services.ingest.dedup import Claim, Deduper
from services.ingest.encoding import clean_json
from services.ingest.keystore import KeyStore
from services.ingest.letters import (
    dead_letter,
    origin,
    record_headers,
    replay_attempt,
    subject_hint,
)
from services.ingest.protect import Protectee, Protector
from services.ingest.quality import BatchQuality
from services.ingest.rejection import Reason, Rejection, Stage, internal
from shared.dlq import DeadLetterSealer
from shared.events import CONTENT_TYPE_JSON, Change, Header, Scalar
from shared.fast_envelope import LeanEnvelope
from shared.record_trace import record_trace
from shared.stage import Output
from shared.topics import Topics

log = logging.getLogger(__name__)

SourceKey = tuple[str, int, int]


@dataclass
class BatchResult:
    """What a batch produced and how its records ended."""

    outputs: list[Output] = field(default_factory=list)
    consumed: int = 0
    clean: int = 0
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    datasets: Counter[str] = field(default_factory=Counter)
    quality: BatchQuality = field(default_factory=BatchQuality)


@dataclass(slots=True)
class _Item:
    record: Message
    topic: str
    partition: int
    offset: int
    envelope: LeanEnvelope | None = None  # subject_id already the pseudonym
    cleaner: Cleaner | None = None
    raw_subject: str = ""
    payload: dict[str, Scalar] | None = None
    changes: list[Change] = field(default_factory=list)
    rejection: Rejection | None = None
    duplicate: bool = False
    subject: str | None = None  # the pseudonym, when the record names a subject

    @property
    def source(self) -> str:
        return f"{self.topic}/{self.partition}/{self.offset}"

    def reject(self, rejection: Rejection) -> None:
        """Dead-letter this record (an internal error is logged, without values)."""
        self.rejection = rejection
        if rejection.reason is Reason.INTERNAL_ERROR:
            log.error("internal error at %s (%s stage): %s", self.source,
                      rejection.stage.value, rejection.exception)


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

    def min_index(self, dataset: str) -> float | None:
        """The dataset spec's `quality.min_index` (None when unset or no such spec)."""
        try:
            cleaner = self._datasets.cleaner(dataset)
        except ValueError:
            return None
        return cleaner.spec.quality.min_index if cleaner is not None else None

    def process(self, records: Sequence[Message],
                attempts: Mapping[SourceKey, int] | None = None) -> BatchResult:
        """Outputs for `records`; raises only for infrastructure failures (Redis, KMS store)."""
        started = time.time_ns()
        items = [self._decode(record) for record in records]
        result = BatchResult(consumed=len(items))
        groups = self._clean(items, result.quality)
        keys, forgotten = self._check(items)
        for cleaner, group in groups.items():
            self._protect(cleaner, [i for i in group if i.rejection is None and not i.duplicate],
                          keys, forgotten)
            result.quality.rejected(cleaner.spec.name, sum(i.rejection is not None for i in group))
        for item in items:
            self._finish(item, keys, forgotten, attempts or {}, result, started)
        return result

    def _decode(self, record: Message) -> _Item:
        item = _Item(record, record.topic() or "", record.partition() or 0, record.offset() or 0)
        raw = b""
        try:
            value = record.value()
            raw = value.encode() if isinstance(value, str) else (value or b"")
            topic, partition, offset = origin(record) or (item.topic, item.partition,
                                                          item.offset)
            envelope = decode_record(value if value is None else raw, topic, partition,
                                     offset, record.timestamp(), self._datasets)
            item.raw_subject = envelope.subject_id
            item.subject = envelope.subject_id = self._pseudonyms.of(envelope.subject_id)
            item.envelope = envelope
            item.cleaner = self._datasets.require(envelope)
        except Rejection as rejection:
            item.reject(rejection)
        except Exception as error:  # a poison record must never stop the partition
            item.reject(internal(error, Stage.VALIDATE))
            log.debug("internal error detail", exc_info=error)
        if item.rejection is not None and item.subject is None:
            hint = subject_hint(raw)
            item.subject = self._pseudonyms.of(hint) if hint else None
        return item

    def _clean(self, items: list[_Item], quality: BatchQuality) -> dict[Cleaner, list[_Item]]:
        """Clean each dataset's events as one batch of columns."""
        groups: dict[Cleaner, list[_Item]] = {}
        for item in items:
            if item.rejection is None and item.cleaner is not None:
                groups.setdefault(item.cleaner, []).append(item)
        for cleaner, group in groups.items():
            payloads = [i.envelope.payload for i in group if i.envelope is not None]
            try:
                cleaned = cleaner.clean_batch(payloads, [i.raw_subject for i in group])
            except Exception as error:  # never let a cleaning bug stop the partition
                log.debug("internal error detail", exc_info=error)
                for item in group:
                    item.reject(internal(error, Stage.VALIDATE))
                continue
            quality.cleaned(cleaner, cleaned)
            subject_field = cleaner.subject_field
            for item, payload, changes, rejection in zip(
                    group, cleaned.payloads, cleaned.changes, cleaned.rejections, strict=True):
                if rejection is not None or payload is None:
                    item.reject(rejection or internal(ValueError(), Stage.VALIDATE))
                    continue
                if subject_field is not None and subject_field in payload:
                    payload[subject_field] = item.subject
                item.payload, item.changes = payload, changes
        return groups

    def _check(self, items: list[_Item]) -> tuple[dict[str, DataKey], set[str]]:
        """Dedup claims and forgotten subjects in one round trip; then the data keys needed
        (minted for valid events, only looked up for subjects of undecodable records)."""
        claims, valid, subjects = [], [], dict[str, None]()
        for item in items:
            if item.rejection is None and item.envelope is not None:
                valid.append(item)
                claims.append(Claim(item.envelope.dataset, item.envelope.event_id, item.source))
            if item.subject is not None and (item.rejection is not None or (
                    item.cleaner is not None and self._protector.pii_fields(item.cleaner.spec))):
                subjects[item.subject] = None
        duplicate, forgotten = self._deduper.check(claims, list(subjects))
        need_keys: dict[str, None] = {}
        existing: dict[str, None] = {}
        for item, dup in zip(valid, duplicate, strict=True):
            item.duplicate = dup
            assert item.cleaner is not None
            assert item.subject is not None
            if not dup and item.subject not in forgotten and self._protector.needs_key(
                    item.cleaner.spec):
                need_keys[item.subject] = None
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
        return keys, forgotten

    def _protect(self, cleaner: Cleaner, group: list[_Item], keys: Mapping[str, DataKey],
                 forgotten: set[str]) -> None:
        events = [Protectee(i.envelope.event_id if i.envelope else "", i.payload or {},
                            i.changes, keys.get(i.subject or ""), i.subject in forgotten)
                  for i in group]
        try:
            self._protector.protect(cleaner.spec, events)
        except Exception as error:  # never let one record fail the batch
            log.debug("internal error detail", exc_info=error)
            for event in events:
                event.rejection = internal(error, Stage.PROTECT)
        for item, event in zip(group, events, strict=True):
            if event.rejection is not None:
                item.reject(event.rejection)

    def _finish(self, item: _Item, keys: Mapping[str, DataKey], forgotten: set[str],
                attempts: Mapping[SourceKey, int], result: BatchResult, started: int) -> None:
        envelope = item.envelope
        headers = record_headers(item.record)
        span, trace_headers = record_trace(
            self._tracer, item.topic, headers, partition=item.partition, offset=item.offset,
            group=self._group, start_time=started,
            attributes={"lepton.dataset": envelope.dataset if envelope else "",
                        "lepton.event_id": envelope.event_id if envelope else ""})
        outcome = "rejected"
        try:
            if item.rejection is None and item.duplicate:
                result.duplicates += 1
                outcome = "duplicate"
            elif item.rejection is None and envelope is not None and item.payload is not None:
                if not trace_headers:  # tracing is off: pass the producer's context through
                    trace_headers = [(k, v) for k, v in headers
                                     if k in (Header.TRACEPARENT, Header.TRACESTATE)]
                try:
                    value = clean_json(envelope, item.payload, item.changes)
                except Exception as error:  # e.g. an integer JSON cannot hold
                    item.reject(internal(error, Stage.PROTECT))
                    self._dead_letter(item, keys, forgotten, attempts, result, span)
                    return
                result.outputs.append(Output(
                    self._topics.clean, envelope.subject_id.encode(), value,
                    [(Header.CONTENT_TYPE, CONTENT_TYPE_JSON), *trace_headers],
                    origin=item.record))
                result.clean += 1
                result.datasets[envelope.dataset] += 1
                outcome = "clean"
            else:
                self._dead_letter(item, keys, forgotten, attempts, result, span)
        finally:
            if span is not None:
                span.set_attribute("lepton.outcome", outcome)
                span.end()

    def _dead_letter(self, item: _Item, keys: Mapping[str, DataKey], forgotten: set[str],
                     attempts: Mapping[SourceKey, int], result: BatchResult,
                     span: Span | None) -> None:
        final = item.rejection or internal(ValueError(), Stage.ENCODE)
        attempt = (attempts.get((item.topic, item.partition, item.offset), 0) + 1
                   + replay_attempt(item.record))
        subject = item.subject
        result.outputs.append(dead_letter(
            item.record, final, attempt, subject, keys.get(subject) if subject else None,
            subject in forgotten, self._sealer, self._topics.rejected))
        result.rejected[final.reason.value] += 1
        if span is not None:
            span.set_attribute("lepton.dlq.reason", final.reason.value)
            if final.reason is Reason.INTERNAL_ERROR:
                span.set_status(Status(StatusCode.ERROR, final.exception))
