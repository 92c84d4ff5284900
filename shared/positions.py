"""Input positions written inside each Kafka transaction, read back on partition assignment.

Every transaction that consumes from a partition also produces a checkpoint record
(key `<group>/<topic>/<partition>`, value `{"offset": next offset}`) to the service's
positions topic (`<prefix><service>.offsets`), so the input position commits atomically with
the outputs on any broker. This matters because
the embedded broker (librdkafka's mock cluster) accepts `send_offsets_to_transaction` but does
not store the offsets; on Apache Kafka both agree and the resume point is the larger of the two.
On assignment the latest committed checkpoint of each partition is found by reading its
checkpoint partition backwards in chunks that grow from FIRST_CHUNK to CHUNK records, so the
checkpoints of partitions consumed in the last transactions are found in the first small read
(read_committed: on Apache Kafka aborted checkpoints never count; the embedded broker shows
every record it received, see shared/abandon.py).
`lepton topics create` gives the topic `cleanup.policy=compact` on a real cluster.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections.abc import Iterable

import orjson
from confluent_kafka import Consumer, TopicPartition

from shared.config import LeptonSettings
from shared.kafka import client_config, ensure_topics
from shared.kafka.ranges import RangesUnread, read_ranges

log = logging.getLogger(__name__)

FIRST_CHUNK = 64
CHUNK = 2000
Source = tuple[str, int]


class InputPositions:
    """Writes and reads the positions topic of one consumer group."""

    def __init__(self, settings: LeptonSettings, topic: str, group: str,
                 read_timeout: float = 70.0, stop: threading.Event | None = None) -> None:
        self.topic = topic
        self._group = group
        self._read_timeout = read_timeout
        # with `stop` (a service starting), an unreachable broker is waited out, not fatal
        self._partitions = ensure_topics(settings, [topic], stop=stop)[topic]
        self._reader = Consumer(client_config(settings, log_level=3, **{
            "group.id": f"{group}.positions-reader",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
            "fetch.wait.max.ms": 20,
        }))

    def key(self, source: Source) -> bytes:
        """The checkpoint key of a source partition."""
        return f"{self._group}/{source[0]}/{source[1]}".encode()

    def partition_of(self, source: Source) -> int:
        """The checkpoint partition a source partition always writes to."""
        return zlib.crc32(self.key(source)) % self._partitions

    def records(self, next_offsets: dict[Source, int]) -> Iterable[tuple[int, bytes, bytes]]:
        """(partition, key, value) checkpoint records for a transaction's consumed positions."""
        for source, offset in next_offsets.items():
            yield self.partition_of(source), self.key(source), orjson.dumps({"offset": offset})

    def load(self, sources: list[Source]) -> dict[Source, tuple[int, int]]:
        """(offset, record time in ms) of the latest committed checkpoint of each source
        partition that holds records and has one; RangesUnread when the read timeout passes
        first."""
        found: dict[Source, tuple[int, int]] = {}
        self._load(self._wanted(self._holding(sources)), found)
        return found

    def load_partial(self, holding: list[Source]
                     ) -> tuple[dict[Source, tuple[int, int]], list[Source]]:
        """As `load` for source partitions the caller knows hold records, but what the read
        timeout leaves unread is returned (its sources), not raised: for observers (lag,
        scaling advice), never for a resume."""
        found: dict[Source, tuple[int, int]] = {}
        wanted = self._wanted(holding)
        try:
            self._load(wanted, found)
        except RangesUnread:  # what is still wanted was not read
            left = {s for keys in wanted.values() for s in keys.values()}
            return found, [s for s in holding if s in left]
        return found, []

    def _holding(self, sources: list[Source]) -> list[Source]:
        """The source partitions that hold a record: one that holds none needs no position
        (earliest is where any was), and one never consumed has no checkpoint, so looking
        for it would read every one."""
        holding = []
        for source in sources:
            low, high = self._reader.get_watermark_offsets(TopicPartition(*source), timeout=10)
            if high > low:
                holding.append(source)
        return holding

    def _wanted(self, sources: list[Source]) -> dict[int, dict[bytes, Source]]:
        """The checkpoint keys to look for, by checkpoint partition."""
        wanted: dict[int, dict[bytes, Source]] = {}
        for source in sources:
            wanted.setdefault(self.partition_of(source), {})[self.key(source)] = source
        return wanted

    def _load(self, wanted: dict[int, dict[bytes, Source]],
              found: dict[Source, tuple[int, int]]) -> None:
        """Read backwards until every wanted key is found (popped from `wanted`) or the
        partition's start is reached."""
        bounds: dict[int, tuple[int, int]] = {}
        for partition in wanted:
            low, high = self._reader.get_watermark_offsets(
                TopicPartition(self.topic, partition), timeout=10)
            bounds[partition] = (low, high)
        deadline = time.monotonic() + self._read_timeout
        size = FIRST_CHUNK
        while True:
            ranges = {}
            for partition, keys in wanted.items():
                low, high = bounds[partition]
                if keys and high > low:
                    start = max(low, high - size)
                    ranges[(self.topic, partition)] = (start, high)
                    bounds[partition] = (low, start)
            if not ranges:
                return
            size = min(size * 4, CHUNK)
            for partition, key, checkpoint in self._scan(ranges, deadline):
                source = wanted[partition].pop(key, ("", -1))
                if source[1] >= 0:
                    found[source] = checkpoint

    def _scan(self, ranges: dict[tuple[str, int], tuple[int, int]], deadline: float
              ) -> list[tuple[int, bytes, tuple[int, int]]]:
        """The latest checkpoint per key within the given range of each partition."""
        latest: dict[tuple[int, bytes], tuple[int, tuple[int, int]]] = {}  # by record offset
        for msg in read_ranges(self._reader, ranges, deadline,
                               f"checkpoints from {self.topic} "
                               "(an open transaction blocks read_committed)"):
            partition, offset, key = msg.partition() or 0, msg.offset() or 0, msg.key()
            # the record with the highest offset wins, whatever order they came in
            if key is not None and offset > latest.get((partition, key), (-1, (0, 0)))[0]:
                position = int(orjson.loads(msg.value() or b"{}")["offset"])
                latest[(partition, key)] = (offset, (position, msg.timestamp()[1]))
        return [(p, k, checkpoint) for (p, k), (_, checkpoint) in latest.items()]

    def resume(self, consumer: Consumer, partitions: list[TopicPartition]
               ) -> dict[Source, int]:
        """Set each assigned partition's offset to the later of its stored position and the
        group's committed offset (left alone when neither exists); the record time (ms) of
        each stored position found."""
        stored = self.load([(tp.topic, tp.partition) for tp in partitions])
        committed = {(tp.topic, tp.partition): tp.offset
                     for tp in consumer.committed(partitions, timeout=30)}
        for tp in partitions:
            source = (tp.topic, tp.partition)
            best = max(stored.get(source, (-1, 0))[0], committed.get(source, -1))
            if best >= 0:
                tp.offset = best
        return {source: stamp for source, (_, stamp) in stored.items()}

    def close(self) -> None:
        """Close the reader."""
        self._reader.close()
