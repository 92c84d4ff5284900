"""A fixed read of `events.governed` for the jobs that train repeatedly on one data set (`lepton
tune`'s trials, a federated site's rounds): every record from the beginning up to end offsets
(the high watermarks when first read, or offsets pinned by an earlier read, so a restart reads
the same records), decoded exactly as the trainer's rounds decode them (governance's MAC checked
first, the held-out split by event id), with at most `max_events_per_subject` training rows per
subject (optionally only the subjects an earlier charge covered), less the training and held-out
rows of forgotten subjects: governance withholds their new events, but those governed before the
forget stay on the topic.

Consumes `events.governed` with manual assignment and no offset commits; produces a Snapshot:
training rows, held-out rows, lineage (offset and audit-leaf ranges, counts) and the end offsets.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from services.trainer.decode import SUBJECT_KEY, Batch, decode_batch, leave_out, row_subjects
from services.trainer.forgotten import FORGOTTEN_UNKNOWN, forgotten_among
from services.trainer.lineage import CycleLineage, merge
from shared.config import LeptonSettings
from shared.datasets.spec import DatasetSpec
from shared.governed_mac import GovernedMac
from shared.kafka import make_consumer, wait_for_kafka
from shared.state import make_redis
from shared.topics import Topics

CHUNK = 2000
ATTEMPT_S = 5.0  # one metadata request on an unreachable broker


class SnapshotTimeout(RuntimeError):
    """The end offsets were not reached in time (broker down, or records gone)."""


class ForgottenUnknown(ValueError):
    """Redis lost the forgotten set and governance has not restored it: nobody can tell whose
    rows to leave out."""


@dataclass
class Snapshot:
    """A fixed set of governed records, decoded and bounded per subject."""

    train: list[dict[str, Any]] = field(default_factory=list)
    validation: list[dict[str, Any]] = field(default_factory=list)
    ends: dict[int, int] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)
    over_bound: int = 0
    uncharged: int = 0
    forgotten: int = 0  # training rows left out: their subjects are forgotten
    forgotten_subjects: int = 0  # of the training rows

    @property
    def subjects(self) -> list[str]:
        """The distinct subjects of the training rows."""
        return sorted(row_subjects(self.train))

    def drop_forgotten(self, client: redis.Redis[bytes], settings: LeptonSettings) -> int:
        """Leave out the training and held-out rows of subjects forgotten by now; how many
        training subjects (ForgottenUnknown while Redis has lost the forgotten set)."""
        training = row_subjects(self.train)
        everyone = training | row_subjects(self.validation)
        if not everyone:
            return 0
        gone = forgotten_among(client, settings, sorted(everyone))
        if gone is None:
            raise ForgottenUnknown(FORGOTTEN_UNKNOWN)
        train = leave_out(self.train, gone)
        self.forgotten += len(self.train) - len(train)
        self.forgotten_subjects += len(gone & training)
        self.train, self.validation = train, leave_out(self.validation, gone)
        return len(gone & training)


def _high_watermarks(consumer: Consumer, topic: str, deadline: float) -> dict[int, int]:
    """The high watermark of each of `topic`'s partitions; each request waits at most
    ATTEMPT_S, and none past `deadline` (a stop or the timeout is then seen soon)."""
    def timeout() -> float:
        return max(0.5, min(ATTEMPT_S, deadline - time.monotonic()))

    partitions = sorted(consumer.list_topics(topic, timeout=timeout()).topics[topic].partitions)
    return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout(),
                                              cached=False)[1] for p in partitions}


def read_snapshot(settings: LeptonSettings, spec: DatasetSpec, group: str, val_percent: int, *,
                  ends: Mapping[int, int] | None = None, subjects: set[str] | None = None,
                  stop: threading.Event | None = None, timeout_s: float = 120.0) -> Snapshot:
    """Read `events.governed` up to `ends` (default: the high watermarks now); SnapshotTimeout
    when the end offsets or the records are not read within `timeout_s`."""
    assert spec.label is not None
    topic = Topics(settings.topic_prefix).governed
    consumer = make_consumer(settings, group, **{"log_level": 3, "fetch.wait.max.ms": 50})
    deadline = time.monotonic() + timeout_s
    try:
        if ends is None:
            try:
                ends = wait_for_kafka(lambda: _high_watermarks(consumer, topic, deadline), stop,
                                      "the snapshot's end offsets", deadline=deadline)
            except KafkaException as error:
                if stop is not None and stop.is_set():
                    raise
                raise SnapshotTimeout(f"{topic}: its end offsets could not be read (is the "
                                      f"broker reachable? {error})") from None
        target = {int(p): int(o) for p, o in ends.items() if int(o) > 0}
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in target])
        messages: list[Any] = []
        pending = set(target)
        while pending:
            if (stop is not None and stop.is_set()) or time.monotonic() > deadline:
                raise SnapshotTimeout(f"{topic}: partitions {sorted(pending)} not read up to "
                                      f"{ {p: target[p] for p in pending} }")
            for msg in consumer.consume(CHUNK, timeout=0.2):
                if msg.error() is None and (msg.offset() or 0) < target[msg.partition() or 0]:
                    messages.append(msg)
            positions = consumer.position([TopicPartition(topic, p) for p in pending])
            pending -= {tp.partition for tp in positions if tp.offset >= target[tp.partition]}
    finally:
        consumer.close()
    messages.sort(key=lambda m: (m.partition(), m.offset()))
    decode = partial(decode_batch, dataset=spec.name, label=spec.label.name,
                     val_percent=val_percent, mac=GovernedMac.load(settings))
    batch: Batch = decode(messages)
    lineage = CycleLineage()
    lineage.add(batch)
    snapshot = Snapshot(validation=batch.validation, ends=target,
                        lineage={**merge([lineage.to_json()]), "topic": topic,
                                 "end_offsets": {str(p): o for p, o in sorted(target.items())}})
    seen: Counter[str] = Counter()
    limit = spec.privacy.max_events_per_subject
    for row in batch.train:
        subject = str(row[SUBJECT_KEY])
        if subjects is not None and subject not in subjects:
            snapshot.uncharged += 1
            continue
        if seen[subject] >= limit:
            snapshot.over_bound += 1
            continue
        seen[subject] += 1
        snapshot.train.append(row)
    snapshot.drop_forgotten(make_redis(settings), settings)
    return snapshot
