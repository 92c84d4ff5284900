"""One training round's input: prefetched `events.governed` batches taken until this rank's
batch is full, the longest wait passes or the stream runs dry; every rank sees the same summed
flags, so all decide alike. Records the trainer cannot use are sealed to the DLQ public key
and dead-lettered on `events.rejected`; the consumed positions advance with each round. Where
rounds train as they come (not DP-SGD's one step at the cycle's end), the rows of subjects
forgotten after governance released them are left out first.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from confluent_kafka import Producer

from services.trainer.comm import Comm
from services.trainer.config import TrainerSettings
from services.trainer.decode import Batch
from services.trainer.prefetch import Prefetcher
from services.trainer.retry import until_redis
from services.trainer.telemetry import TrainerMetrics
from shared.dlq import SEALED_HEADER, DeadLetterSealer
from shared.events import dlq_headers
from shared.topics import Topics

POLL_SLICE_S = 0.05


@dataclass(frozen=True)
class RoundFlags:
    """What every rank agreed on about a round (sums over ranks)."""

    total: float
    train_rows: float
    stopping: bool
    idle_expired: bool


class RoundReader:
    """Takes a round's batches from the prefetcher and tracks the next offset per partition."""

    def __init__(self, settings: TrainerSettings, comm: Comm, prefetch: Prefetcher,
                 metrics: TrainerMetrics, producer: Producer, sealer: DeadLetterSealer,
                 stop: threading.Event, positions: dict[int, int],
                 forgotten: Callable[[Sequence[str]], set[str] | None] | None = None) -> None:
        self.settings = settings
        self.forgotten = forgotten  # which of these subjects are forgotten (None: unknown)
        self.comm = comm
        self.prefetch = prefetch
        self.metrics = metrics
        self.producer = producer
        self.sealer = sealer
        self.stop = stop
        self.positions = positions
        self.rejected_topic = Topics(settings.topic_prefix).rejected

    def poll(self, idle_since: float) -> tuple[Batch, RoundFlags]:
        """Take prefetched batches until a rank's batch is full, the max wait passes, or the
        stream runs dry (every rank sees the same summed flags, so all decide alike)."""
        batch = Batch()
        want = self.settings.trainer_batch_size
        started = time.monotonic()
        limit = self.settings.trainer_exit_when_idle_s
        while True:
            self.metrics.heartbeat.beat()
            got = None
            if not self.stop.is_set() and batch.consumed < want:
                got = self.prefetch.take(want - batch.consumed,
                                         min(POLL_SLICE_S, self.settings.trainer_max_wait_s))
            if got is not None:
                batch.extend(got)
            now = time.monotonic()
            leader = self.comm.leader
            total, new, full, stop, waited, idle = self.comm.sum([
                batch.consumed, got.consumed if got else 0, batch.consumed >= want,
                self.stop.is_set(), leader and now - started >= self.settings.trainer_max_wait_s,
                leader and limit is not None and now - idle_since >= limit])
            if full or stop or waited or (total > 0 and new == 0) or (total == 0 and idle):
                break
        self._reject(batch)
        forgotten = self.forgotten
        if forgotten is not None and (batch.train or batch.validation):
            subjects = batch.subjects()
            gone = until_redis(lambda: forgotten(subjects), "forgotten subjects", self.stop)
            if gone:  # unknown (None): kept, and the release is refused
                batch.drop_forgotten(gone)
        for partition, offset in batch.next_offsets.items():
            self.positions[partition] = max(self.positions.get(partition, 0), offset)
        train_rows = self.comm.sum([len(batch.train)])[0]
        return batch, RoundFlags(total, train_rows, stop > 0, total == 0 and idle > 0)

    def _reject(self, batch: Batch) -> None:
        for item in batch.rejected:
            headers = dlq_headers(item.headers, reason=item.reason, detail=item.detail,
                                  stage="trainer", exception="EnvelopeError", topic=item.topic,
                                  partition=item.partition, offset=item.offset,
                                  service="trainer")
            value, how = self.sealer.seal(item.value or b"")
            headers.append((SEALED_HEADER, how.value.encode()))
            self.producer.produce(self.rejected_topic, key=item.key, value=value,
                                  headers=headers)
