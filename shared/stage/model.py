"""What a stage gives the runtime (its topics, `process(batch)`, the errors it waits out) and
what it gets back: `Output` records to produce; plus the helpers every loop shares (next
offsets, rewinding, classifying Kafka errors)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from shared.events import HeaderList
from shared.liveness import Heartbeat

log = logging.getLogger(__name__)

Source = tuple[str, int]
MAX_BACKOFF_S = 5.0


class Fenced(RuntimeError):
    """Another live producer took this transactional id, or the client hit a fatal error:
    this process must stop (exit status 1) rather than write anything more."""


@dataclass(frozen=True)
class Output:
    """One record to produce in the batch's transaction (partition None: by key); `origin` is
    the consumed record it answers, if one (a stage gives each record at most one output per
    topic)."""

    topic: str
    key: bytes | None
    value: bytes
    headers: HeaderList = field(default_factory=list)
    partition: int | None = None
    origin: Message | None = None


class Stage(Protocol):
    """A service's processing step; the runtime calls it from one thread."""

    name: str
    inputs: list[str]
    outputs: list[str]
    waits_out: tuple[type[BaseException], ...]

    def process(self, batch: list[Message]) -> list[Output]:
        """The outputs of one consumed batch (idempotent: a batch may be processed again)."""
        ...

    def due(self, final: bool) -> list[Output]:
        """Outputs due now whatever the input (e.g. signed checkpoints); `final` at stop."""
        ...

    def committed(self, batch: list[Message], seconds: float) -> None:
        """The batch's transaction committed (count it)."""
        ...

    def aborted(self, batch: list[Message]) -> None:
        """The batch's transaction aborted; it will be consumed again."""
        ...


def next_offsets(batch: Sequence[Message]) -> dict[Source, int]:
    """The offset after the last record of each source partition in `batch`."""
    offsets: dict[Source, int] = {}
    for msg in batch:
        source = (msg.topic() or "", msg.partition() or 0)
        offsets[source] = max(offsets.get(source, 0), (msg.offset() or 0) + 1)
    return offsets


def first_offsets(batch: Sequence[Message]) -> dict[Source, int]:
    """The offset of the first record of each source partition in `batch`."""
    first: dict[Source, int] = {}
    for msg in batch:
        source = (msg.topic() or "", msg.partition() or 0)
        first[source] = min(first.get(source, msg.offset() or 0), msg.offset() or 0)
    return first


def rewind(consumer: Consumer, batch: Sequence[Message]) -> dict[Source, int]:
    """Seek each partition back to the batch's first record so it is consumed again; those
    first offsets."""
    first = first_offsets(batch)
    for (topic, partition), offset in first.items():
        try:
            consumer.seek(TopicPartition(topic, partition, offset))
        except KafkaException:
            continue  # revoked meanwhile: its new owner resumes from the committed position
    return first


def is_fenced(error: KafkaError) -> bool:
    """A fatal error, or another producer with our transactional id."""
    return bool(error.fatal()) or error.code() in (
        KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH)


def is_retriable(error: KafkaError) -> bool:
    """Worth calling the same transactional step again (the broker is slow or away)."""
    return bool(error.retriable()) and not error.txn_requires_abort() and not is_fenced(error)


def poll_batch(consumer: Consumer, size: int, timeout_s: float, *, eager: bool = False
               ) -> list[Message]:
    """Up to `size` records, waiting at most `timeout_s` for them (`eager`: only for the first,
    then whatever is already fetched: lowest latency); a fatal client error raises Fenced,
    other errors are logged."""
    if eager:
        first = consumer.poll(timeout_s)
        messages = [] if first is None else [first, *consumer.consume(size - 1, timeout=0)]
    else:
        messages = consumer.consume(size, timeout_s)
    batch = []
    for msg in messages:
        error = msg.error()
        if error is None:
            batch.append(msg)
        elif error.fatal():
            raise Fenced(f"consumer hit a fatal error: {error}")
        elif error.code() != KafkaError._PARTITION_EOF:
            log.warning("consume: %s", error)
    return batch


def process_waiting(stage: Stage, batch: list[Message], stop: threading.Event,
                    heartbeat: Heartbeat) -> list[Output] | None:
    """The stage's outputs for `batch`, waiting out its infrastructure errors with back-off
    (each retry beats: waiting out an outage is alive); None when stopped first."""
    wait = 0.1
    while True:
        try:
            return stage.process(batch)
        except stage.waits_out as error:
            log.warning("batch of %d waits (%s: %s); retrying in %.1f s", len(batch),
                        type(error).__name__, error, wait)
            heartbeat.beat()
            if stop.wait(wait):
                return None
            wait = min(wait * 2, MAX_BACKOFF_S)


def produce(producer: Producer, out: Output, headers: HeaderList | None = None) -> None:
    """Queue `out` (with `headers` instead of its own, if given), serving delivery reports while
    the local queue is full."""
    if headers is None:
        headers = out.headers
    while True:
        try:
            if out.partition is None:
                producer.produce(out.topic, key=out.key, value=out.value, headers=headers)
            else:
                producer.produce(out.topic, key=out.key, value=out.value, headers=headers,
                                 partition=out.partition)
            return
        except BufferError:
            producer.poll(0.05)
