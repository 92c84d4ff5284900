"""Reading fixed offset ranges of topic partitions: consumes the records in [start, stop) of
each given partition with an assigned (group-less) consumer and produces them as messages, for
the readers that look back over a log's tail (input positions, a stage's own outputs)."""

from __future__ import annotations

import time
from collections.abc import Iterator

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

Partition = tuple[str, int]


class RangesUnread(TimeoutError):
    """The deadline passed before every range was read; `pending` are the partitions left."""

    def __init__(self, what: str, pending: set[Partition]) -> None:
        super().__init__(f"could not read {what}")
        self.pending = pending


def read_ranges(reader: Consumer, ranges: dict[Partition, tuple[int, int]], deadline: float,
                what: str) -> Iterator[Message]:
    """The records in [start, stop) of each partition, in no particular order across
    partitions; RangesUnread naming `what` past `deadline` (time.monotonic)."""
    reader.assign([TopicPartition(t, p, start) for (t, p), (start, _) in ranges.items()])
    pending = set(ranges)
    try:
        while pending:
            if time.monotonic() > deadline:
                raise RangesUnread(what, pending)
            for msg in reader.consume(500, 0.2):
                part = (msg.topic() or "", msg.partition() or 0)
                error = msg.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        pending.discard(part)
                    continue
                start, stop = ranges[part]
                offset = msg.offset() or 0
                if offset >= stop - 1:
                    pending.discard(part)
                if start <= offset < stop:
                    yield msg
    finally:
        reader.unassign()
