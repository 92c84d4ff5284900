"""Exactly once on a broker that keeps no transaction state (the embedded broker, librdkafka's
mock cluster). There a transaction's records are visible as each one arrives, committed or not,
so a process killed while it sends a batch could leave part of the batch's outputs, or its
input positions without all of its outputs. On such a broker the transactional runtime:

- stamps each output that answers one consumed record with `lepton.origin`
  (`topic/partition/offset` of that record);
- waits until the broker has every output of a batch before it sends the batch's input
  positions, so stored positions never run ahead of outputs;
- on assignment, and after an abort, reads back what its output topics received since the
  partition's last checkpoint, and skips producing any output already there.

Consumes the tails of the stage's output topics; produces the set of outputs already written
per consumed partition. On Apache Kafka, whose read_committed readers never see an unfinished
transaction, none of this runs.
"""

from __future__ import annotations

import logging
import time

from confluent_kafka import Consumer, Message, TopicPartition

from shared.config import LeptonSettings
from shared.events import Header, HeaderList
from shared.kafka import client_config
from shared.kafka.ranges import read_ranges
from shared.stage.model import Output, Source

log = logging.getLogger(__name__)

MOCK_CLUSTER = "mockCluster"  # the cluster id prefix of librdkafka's mock cluster
CHUNK = 2000
CLOCK_SLACK_MS = 10_000  # the outputs and the checkpoint were stamped by one host's clock
READ_TIMEOUT_S = 60.0


def origin_header(msg: Message) -> tuple[str, bytes]:
    """The `lepton.origin` header naming the consumed record `msg`."""
    return Header.ORIGIN, f"{msg.topic()}/{msg.partition()}/{msg.offset()}".encode()


def origin_of(msg: Message) -> tuple[Source, int] | None:
    """The consumed partition and offset `msg`'s origin header names; None without one, or
    with one that does not parse (a record another producer wrote)."""
    headers = msg.headers()
    for key, value in headers.items() if isinstance(headers, dict) else headers or ():
        if key == Header.ORIGIN and isinstance(value, bytes):
            try:
                topic, partition, offset = value.decode().rsplit("/", 2)
                return (topic, int(partition)), int(offset)
            except ValueError:  # UnicodeDecodeError is one
                return None
    return None


class WrittenOutputs:
    """What the stage's output topics already hold for its assigned partitions."""

    def __init__(self, reader: Consumer, topics: dict[str, int]) -> None:
        self._reader = reader
        self._topics = topics
        self._written: dict[Source, set[tuple[str, int]]] = {}  # {(output topic, offset)}

    @classmethod
    def needed(cls, cluster_id: str | None, settings: LeptonSettings, group: str,
               topics: dict[str, int]) -> WrittenOutputs | None:
        """A reader of `topics` (name: partition count) when the broker (`cluster_id`) keeps no
        transaction state; None when its transactions are atomic."""
        if not (cluster_id or "").startswith(MOCK_CLUSTER):
            return None
        log.info("the broker keeps no transaction state: outputs are read back on assignment "
                 "and never produced twice")
        return cls(Consumer(client_config(settings, log_level=3, **{
            "group.id": f"{group}.outputs-reader",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_uncommitted",  # all that the broker shows
            "fetch.wait.max.ms": 20,
        })), topics)

    def headers(self, out: Output) -> HeaderList | None:
        """`out`'s headers with its origin; None when it is already written."""
        origin = out.origin
        if origin is None:
            return out.headers
        written = self._written.get((origin.topic() or "", origin.partition() or 0))
        if written is not None and (out.topic, origin.offset() or 0) in written:
            return None
        return [*out.headers, origin_header(origin)]

    def scan(self, since: dict[Source, tuple[int, int]]) -> int:
        """Read back the outputs of each consumed partition's records from its offset on,
        among those stamped no earlier than its time (ms, less the clock slack); how many."""
        if not since:
            return 0
        floor = min(stamp for _, stamp in since.values()) - CLOCK_SLACK_MS
        found: dict[Source, set[tuple[str, int]]] = {source: set() for source in since}
        bounds: dict[tuple[str, int], tuple[int, int]] = {}
        for topic, count in self._topics.items():
            for partition in range(count):
                bounds[(topic, partition)] = self._reader.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=10)
        deadline = time.monotonic() + READ_TIMEOUT_S
        while bounds:
            ranges = {tp: (max(low, high - CHUNK), high)
                      for tp, (low, high) in bounds.items() if high > low}
            oldest: dict[tuple[str, int], int] = {}
            for msg in read_ranges(self._reader, ranges, deadline, "the stage's outputs"):
                tp = (msg.topic() or "", msg.partition() or 0)
                stamp = msg.timestamp()[1]
                oldest[tp] = min(oldest.get(tp, stamp), stamp)
                origin = origin_of(msg)
                if origin is not None and origin[0] in since and \
                        origin[1] >= since[origin[0]][0]:
                    found[origin[0]].add((tp[0], origin[1]))
            # a partition is read further back until it reaches records older than the floor
            bounds = {tp: (bounds[tp][0], start) for tp, (start, _) in ranges.items()
                      if oldest.get(tp, floor - 1) >= floor and start > bounds[tp][0]}
        self._written.update(found)
        total = sum(len(outputs) for outputs in found.values())
        if total:
            log.warning("%d outputs were already written by an unfinished transaction: they "
                        "are not produced again", total)
        return total

    def forget(self, sources: list[Source]) -> None:
        """Drop what is known of revoked partitions."""
        for source in sources:
            self._written.pop(source, None)

    def close(self) -> None:
        """Close the reader."""
        self._reader.close()
