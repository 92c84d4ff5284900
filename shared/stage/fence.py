"""The offset fence of the exactly-once runtime: per assigned input partition, the next offset
this replica may process. It consumes the consumer's assignments and polled batches and
produces the batch to process, without any record that lies below the fence (already
processed and committed here, or a stale copy re-delivered around a rebalance) or that
belongs to a partition no longer assigned. It also remembers the positions this replica
committed, so a resume point read back lower than one of them (a stale read) is raised to it.

Why here: after a broker outage both consumer groups lose their sessions and rejoin while
batches are in flight. A record consumed twice would be governed twice (the second time as a
replay of its sealed audit leaf), so the runtime must never hand a processed offset to
`process` again unless it rewound on purpose (an aborted batch).
"""

from __future__ import annotations

import logging

from confluent_kafka import Message, TopicPartition

from shared.stage.model import Source

log = logging.getLogger(__name__)


class OffsetFence:
    """Tracks the next offset to process per assigned partition (None: not known yet)."""

    def __init__(self) -> None:
        self.next: dict[Source, int | None] = {}
        self.committed: dict[Source, int] = {}

    def assigned(self, partitions: list[TopicPartition]) -> None:
        """Fence newly assigned partitions at their resume offsets, raising a resume offset
        that is below a position this replica committed (and saying so)."""
        for tp in partitions:
            source = (tp.topic, tp.partition)
            floor = self.committed.get(source)
            if floor is not None and floor > tp.offset:
                log.warning("%s[%d]: resume offset %d is below the position %d committed here; "
                            "resuming at %d", tp.topic, tp.partition, tp.offset, floor, floor)
                tp.offset = floor
            self.next[source] = tp.offset if tp.offset >= 0 else None

    def revoked(self, partitions: list[TopicPartition]) -> None:
        """Forget revoked or lost partitions: their records are no longer this replica's."""
        for tp in partitions:
            self.next.pop((tp.topic, tp.partition), None)

    def admit(self, batch: list[Message]) -> list[Message]:
        """The records of `batch` at or above their partition's fence, each advancing it."""
        admitted: list[Message] = []
        dropped: dict[Source, list[int]] = {}
        for msg in batch:
            source = (msg.topic() or "", msg.partition() or 0)
            offset = msg.offset() or 0
            if source not in self.next:
                dropped.setdefault(source, []).append(offset)
                continue
            expected = self.next[source]
            if expected is not None and offset < expected:
                dropped.setdefault(source, []).append(offset)
                continue
            self.next[source] = offset + 1
            admitted.append(msg)
        for (topic, partition), offsets in dropped.items():
            log.warning("%s[%d]: dropped %d records at offsets %d..%d (already processed here, or "
                        "no longer assigned)", topic, partition, len(offsets), min(offsets),
                        max(offsets))
        return admitted

    def rewound(self, first: dict[Source, int]) -> None:
        """Lower the fence to a rewound batch's `first` offsets: they will be processed again."""
        for source, offset in first.items():
            if source in self.next:
                self.next[source] = offset

    def commit(self, next_offsets: dict[Source, int]) -> None:
        """Remember positions committed by this replica."""
        for source, offset in next_offsets.items():
            self.committed[source] = max(self.committed.get(source, offset), offset)
