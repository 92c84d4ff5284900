"""The exactly-once runtime's offset fence: what it admits, drops, rewinds and raises."""

from __future__ import annotations

from confluent_kafka import OFFSET_INVALID, Message, TopicPartition

from shared.stage.fence import OffsetFence


def _batch(partition: int, offsets: range, topic: str = "in") -> list[Message]:
    return [Message(topic=topic, partition=partition, offset=o, value=b"v") for o in offsets]


def _offsets(batch: list[Message]) -> list[tuple[int, int]]:
    return [(m.partition() or 0, m.offset() or 0) for m in batch]


def test_admits_new_records_and_drops_what_it_already_admitted() -> None:
    fence = OffsetFence()
    fence.assigned([TopicPartition("in", 0, 10), TopicPartition("in", 1, OFFSET_INVALID)])
    assert _offsets(fence.admit(_batch(0, range(5, 15)))) == [(0, o) for o in range(10, 15)]
    assert fence.admit(_batch(0, range(10, 15))) == []  # delivered again
    # no resume offset known: the first record sets the fence
    assert len(fence.admit(_batch(1, range(3, 6)) + _batch(1, range(3, 6)))) == 3
    assert _offsets(fence.admit(_batch(0, range(15, 17)))) == [(0, 15), (0, 16)]


def test_drops_partitions_not_assigned_and_rewinds_on_purpose() -> None:
    fence = OffsetFence()
    fence.assigned([TopicPartition("in", 0, 0), TopicPartition("in", 1, 0)])
    assert len(fence.admit(_batch(0, range(4)) + _batch(1, range(4)))) == 8
    fence.revoked([TopicPartition("in", 1)])
    assert _offsets(fence.admit(_batch(1, range(4, 6)))) == []
    fence.rewound({("in", 0): 0, ("in", 1): 0})  # an aborted batch is processed again
    assert len(fence.admit(_batch(0, range(4)) + _batch(1, range(4)))) == 4


def test_a_resume_offset_below_a_committed_position_is_raised() -> None:
    fence = OffsetFence()
    fence.assigned([TopicPartition("in", 0, 0)])
    fence.commit({("in", 0): 40})
    fence.commit({("in", 0): 20})  # never lowered
    stale, fresh, unknown = (TopicPartition("in", 0, 25), TopicPartition("in", 0, 50),
                             TopicPartition("in", 0, OFFSET_INVALID))
    fence.assigned([stale])
    assert stale.offset == 40
    fence.assigned([fresh])
    assert fresh.offset == 50
    fence.assigned([unknown])
    assert unknown.offset == 40
    other = TopicPartition("in", 1, OFFSET_INVALID)  # nothing committed here: left to Kafka
    fence.assigned([other])
    assert other.offset == OFFSET_INVALID
