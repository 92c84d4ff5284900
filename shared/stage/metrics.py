"""The runtime's own instruments, the same for every stage: consumer lag per input partition
(commit markers excluded), batch size and duration, aborted transactions, and the loop's
heartbeat (shared/liveness.py)."""

from __future__ import annotations

import time
from collections.abc import Iterable

from confluent_kafka import Consumer, KafkaException
from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Meter, Observation

from shared.liveness import Heartbeat

LAG_EVERY_S = 2.0
# sub-second batches: the SDK's default buckets (0, 5, 10 … 10000) would put them all in le=5
DURATION_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                      30.0)


class ConsumerLag:
    """`lepton.<service>.consumer.lag`: high watermark minus position, per assigned input
    partition (commit markers excluded); the stage runtimes and the trainer report it."""

    def __init__(self, service: str, meter: Meter) -> None:
        self.lag: dict[tuple[str, int], int] = {}
        self._at = 0.0
        meter.create_observable_gauge(
            f"lepton.{service}.consumer.lag", callbacks=[self._observe], unit="{message}",
            description="High watermark minus position, per assigned input partition")

    def update(self, consumer: Consumer) -> None:
        """Refresh the lag of every assigned partition (at most every LAG_EVERY_S; from the
        watermarks the last fetch brought, no broker round trip)."""
        now = time.monotonic()
        if now - self._at < LAG_EVERY_S:
            return
        self._at = now
        try:
            lag = {}
            for tp in consumer.position(consumer.assignment()):
                _, high = consumer.get_watermark_offsets(tp, cached=True)
                if tp.offset >= 0 and high >= 0:
                    lag[(tp.topic, tp.partition)] = max(0, high - tp.offset)
            self.lag = lag
        except KafkaException:
            return

    def _observe(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(n, {"topic": t, "partition": str(p)})
                for (t, p), n in list(self.lag.items())]


class StageMetrics:
    """`lepton.<stage>.consumer.lag`, `.batch.size`, `.batch.duration`,
    `.transactions.aborted`, `.loop.heartbeat`."""

    def __init__(self, stage: str, meter: Meter | None = None) -> None:
        meter = meter or metrics.get_meter(f"lepton.{stage}")
        self.batch_size = meter.create_histogram(
            f"lepton.{stage}.batch.size", unit="{record}",
            description="Records per committed batch")
        self.batch_seconds = meter.create_histogram(
            f"lepton.{stage}.batch.duration", unit="s",
            description="Consume-to-commit time per batch",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS_S)
        self.aborted = meter.create_counter(
            f"lepton.{stage}.transactions.aborted", unit="{transaction}",
            description="Transactions aborted (their batch is processed again)")
        self.heartbeat = Heartbeat(stage, meter)
        self.consumer_lag = ConsumerLag(stage, meter)

    @property
    def lag(self) -> dict[tuple[str, int], int]:
        """The last lag per (topic, partition)."""
        return self.consumer_lag.lag

    def committed(self, records: int, seconds: float) -> None:
        """Count a committed batch."""
        self.batch_size.record(records)
        self.batch_seconds.record(seconds)

    def update_lag(self, consumer: Consumer) -> None:
        """Refresh the lag of every assigned partition (at most every LAG_EVERY_S)."""
        self.consumer_lag.update(consumer)
