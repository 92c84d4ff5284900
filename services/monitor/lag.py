"""Consumer-group lag as a broker sees it, with the permanent lag of transaction markers
excluded: every committed transaction leaves a commit marker offset after its last record, so a
group that consumed everything still trails the end of each partition by its markers. For a
partition whose apparent lag is small (at most `PROBE_MAX`), the records between the committed
position and the end are read (read_committed, which skips markers and aborted records) and
only real records count; a larger lag is counted as it is (markers are then one per batch).

The committed position is the later of the group's Kafka-committed offset and, for
transactional stages, its input position in their checkpoint topic (shared/positions.py; the
embedded broker keeps no offsets sent with a transaction). A partition whose checkpoint is not
read within PROBE_TIMEOUT_S (one consumed long ago, deep in an uncompacted checkpoint topic) is
`unread`: its lag is left out rather than guessed. A partition that holds no record has no lag,
and its checkpoint is not looked up.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from confluent_kafka import Consumer, TopicPartition

from shared.config import LeptonSettings
from shared.kafka import client_config
from shared.kafka.ranges import RangesUnread, read_ranges
from shared.positions import InputPositions

PROBE_MAX = 64
PROBE_TIMEOUT_S = 5.0
Source = tuple[str, int]


@dataclass(frozen=True)
class GroupSample:
    """One observation of a consumer group's input partitions."""

    at: float
    end: dict[Source, int]
    committed: dict[Source, int]
    lag: dict[Source, int]
    unread: tuple[Source, ...] = ()  # committed position not read in time: no lag counted

    @property
    def total_lag(self) -> int:
        """Records waiting, over every partition."""
        return sum(self.lag.values())


def sample_group(settings: LeptonSettings, group: str, topics: list[str],
                 positions_topic: str | None = None) -> GroupSample:
    """Watermarks, committed positions and marker-free lag of `group` on `topics`."""
    reader = Consumer(client_config(settings, log_level=3, **{
        "group.id": group, "enable.auto.commit": False, "isolation.level": "read_committed",
        "enable.partition.eof": True, "fetch.wait.max.ms": 20}))
    try:
        sources: list[Source] = []
        for topic in topics:
            meta = reader.list_topics(topic, timeout=10).topics[topic]
            sources += [(topic, p) for p in sorted(meta.partitions)]
        marks = {s: reader.get_watermark_offsets(TopicPartition(*s), timeout=10)
                 for s in sources}
        end = {s: high for s, (_, high) in marks.items()}
        committed = {(tp.topic, tp.partition): tp.offset for tp in reader.committed(
            [TopicPartition(*s) for s in sources], timeout=10)}
        unread: list[Source] = []
        # a partition that holds no record has no lag, whatever position its group stored
        holding = [s for s, (low, high) in marks.items() if high > low]
        if positions_topic:
            stored = InputPositions(settings, positions_topic, group, read_timeout=PROBE_TIMEOUT_S)
            try:
                found, unread = stored.load_partial(holding)
                for source, (offset, _) in found.items():
                    committed[source] = max(committed.get(source, -1), offset)
            finally:
                stored.close()
        lag = {s: backlog(end[s], committed.get(s, -1)) if s in holding else 0
               for s in sources if s not in unread}
        probe = {s: committed[s] for s in lag
                 if 0 < lag[s] <= PROBE_MAX and committed.get(s, -1) >= 0}
        lag.update(_records_after(reader, probe, end))
        return GroupSample(time.monotonic(), end, committed, lag, tuple(unread))
    finally:
        reader.close()


def backlog(end: int, committed: int) -> int:
    """Records from a committed position (-1: none) to the end snapshot. The positions are
    read after the snapshot, so a busy group's may already be past it: that is no lag, not
    a negative one."""
    return max(0, end - max(committed, 0))


def _records_after(reader: Consumer, start: dict[Source, int], end: dict[Source, int]
                   ) -> dict[Source, int]:
    """Real records (markers and aborted records skipped) from `start` to the end, per
    partition; a partition not read to its end in time keeps its apparent lag."""
    if not start:
        return {}
    counts = dict.fromkeys(start, 0)
    unread: set[Source] = set()
    try:
        for msg in read_ranges(reader, {s: (o, end[s]) for s, o in start.items()},
                               time.monotonic() + PROBE_TIMEOUT_S, "the lag probe"):
            counts[(msg.topic() or "", msg.partition() or 0)] += 1
    except RangesUnread as late:
        unread = late.pending
    return {s: n for s, n in counts.items() if s not in unread}
