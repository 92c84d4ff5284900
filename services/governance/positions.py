"""Input positions committed inside each Kafka transaction, read back on partition assignment.

Every transaction also produces, per consumed input partition, a record keyed
`<group>/<topic>/<partition>` with `{"offset": next offset}` to `<prefix>governance.offsets`,
so the resume point commits atomically with the outputs on any broker. The embedded broker
(librdkafka's mock cluster) accepts `send_offsets_to_transaction` but does not store the
offsets; on Apache Kafka both agree, and the resume point is the larger of the two. On
assignment the latest committed record per key is found by reading the checkpoint partition
backwards in chunks (read_committed: records of aborted transactions never count). On a real
cluster give the topic `cleanup.policy=compact`.
"""

from __future__ import annotations

import time
import zlib

import orjson
from confluent_kafka import Consumer, KafkaError, TopicPartition

from shared.config import LeptonSettings
from shared.kafka import ensure_topics

CHUNK = 2000
Source = tuple[str, int]


def positions_topic(settings: LeptonSettings) -> str:
    """The topic holding the governance loop's committed input positions."""
    return f"{settings.topic_prefix}governance.offsets"


class InputPositions:
    """Writes and reads the committed input positions of one consumer group."""

    def __init__(self, settings: LeptonSettings, group: str, timeout: float = 60.0) -> None:
        self.topic = positions_topic(settings)
        self._group = group
        self._timeout = timeout
        self.partitions = ensure_topics(settings, [self.topic])[self.topic]
        self._reader = Consumer({
            "bootstrap.servers": settings.bootstrap_servers(),
            "group.id": f"{group}.positions-reader",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
            "log_level": 3,
        })

    def key(self, source: Source) -> bytes:
        """The record key of an input partition."""
        return f"{self._group}/{source[0]}/{source[1]}".encode()

    def partition_of(self, source: Source) -> int:
        """The positions-topic partition an input partition always writes to."""
        return zlib.crc32(self.key(source)) % self.partitions

    def records(self, offsets: dict[Source, int]) -> list[tuple[int, bytes, bytes]]:
        """(partition, key, value) records for a transaction's next input offsets."""
        return [(self.partition_of(s), self.key(s), orjson.dumps({"offset": o}))
                for s, o in offsets.items()]

    def load(self, sources: list[Source]) -> dict[Source, int]:
        """The latest committed position of each input partition that has one."""
        wanted: dict[int, dict[bytes, Source]] = {}
        for source in sources:
            wanted.setdefault(self.partition_of(source), {})[self.key(source)] = source
        found: dict[Source, int] = {}
        deadline = time.monotonic() + self._timeout
        for partition, keys in wanted.items():
            low, stop = self._reader.get_watermark_offsets(
                TopicPartition(self.topic, partition), timeout=10)
            while keys and stop > low:
                start = max(low, stop - CHUNK)
                for key, offset in self._scan(partition, start, stop, deadline).items():
                    if key in keys:
                        found[keys.pop(key)] = offset
                stop = start
        return found

    def _scan(self, partition: int, start: int, stop: int, deadline: float
              ) -> dict[bytes, int]:
        """The latest position per key among committed records in [start, stop)."""
        self._reader.assign([TopicPartition(self.topic, partition, start)])
        latest: dict[bytes, int] = {}
        try:
            while True:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"could not read {self.topic}: an open transaction "
                                       "blocks read_committed")
                for msg in self._reader.consume(500, 0.2):
                    error = msg.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            return latest
                        continue
                    offset = msg.offset() or 0
                    if offset >= stop:
                        return latest
                    if msg.key():
                        latest[bytes(msg.key() or b"")] = int(
                            orjson.loads(msg.value() or b"{}")["offset"])
        finally:
            self._reader.unassign()

    def close(self) -> None:
        """Close the reader."""
        self._reader.close()
