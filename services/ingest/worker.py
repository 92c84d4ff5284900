"""The ingest stage on the shared transactional runtime: consume `events.raw` in batches,
process them (processor.py), and commit each batch's outputs (`events.clean`,
`events.rejected`), input positions and consumer offsets in one Kafka transaction
(shared/stage), so after a crash at any moment every input counts exactly once downstream.

Redis and KMS failures are waited out (the batch is processed again); an aborted transaction
counts one more attempt for each of its records; a fenced producer (another live process
with this transactional id) stops the worker with exit status 1. Committed batches' quality
counts go to the replica's per-window quality log (quality_log.py); each window it closes is
also published on `quality.windows`, signed by the ingest principal, in the transaction of the
batch that closed it (quality_bus.py). A window whose transaction aborts is only in the file.
"""

from __future__ import annotations

import logging
import threading

import redis
from confluent_kafka import Message
from opentelemetry.trace import Tracer

from services.ingest.config import IngestSettings
from services.ingest.decoding import Datasets
from services.ingest.dedup import Deduper
from services.ingest.keystore import KeyStore
from services.ingest.processor import BatchResult, Processor, SourceKey
from services.ingest.protect import Protector
from services.ingest.quality_bus import window_outputs
from services.ingest.quality_log import QualityLog
from services.ingest.telemetry import IngestMetrics
from shared.crypto import KmsError
from shared.dlq import DeadLetterSealer
from shared.principals import Principal
from shared.stage import Output, TransactionalRuntime
from shared.state import make_redis
from shared.topics import Topics
from shared.tracing import get_tracer

log = logging.getLogger(__name__)


def build_processor(settings: IngestSettings, tracer: Tracer) -> Processor:
    """The batch processor wired to Redis, the key store, the DLQ key and the dataset
    specs."""
    client = make_redis(settings)
    keystore = KeyStore(settings, client=client,
                        cache_size=settings.ingest_key_cache_size,
                        cache_ttl=settings.ingest_key_cache_ttl_s)
    return Processor(
        Topics(settings.topic_prefix),
        Datasets(settings.ingest_specs_dir, settings.ingest_unknown_fields),
        Deduper(settings, client, settings.ingest_dedup_window_s), keystore,
        Protector(), tracer, settings.group_id(), DeadLetterSealer.load(settings),
    )


class IngestStage:
    """Validate, clean and protect a batch; count committed batches and retried records."""

    name = "ingest"
    waits_out: tuple[type[BaseException], ...] = (redis.RedisError, KmsError)

    def __init__(self, settings: IngestSettings, processor: Processor,
                 metrics: IngestMetrics) -> None:
        topics = Topics(settings.topic_prefix)
        self.inputs = [topics.raw]
        self.outputs = [topics.clean, topics.rejected, topics.quality_windows]
        self.quality_topic = topics.quality_windows
        self.signer = Principal.load(settings, "ingest")  # signs the quality windows
        self.processor = processor
        self.metrics = metrics
        self.quality = QualityLog(settings.quality_dir(), settings.ingest_instance,
                                  settings.ingest_quality_window_s, processor.min_index)
        metrics.latest = self.quality.last
        self._attempts: dict[SourceKey, int] = {}
        self._result: BatchResult | None = None

    def process(self, batch: list[Message]) -> list[Output]:
        """Clean outputs and dead letters of the batch (attempt counts on the letters)."""
        self._result = self.processor.process(batch, self._attempts)
        return self._result.outputs

    def due(self, final: bool) -> list[Output]:
        """The signed summaries of the quality windows closed now (when over, or at stop)."""
        return window_outputs(self.quality.roll(final), self.quality_topic, self.signer)

    def committed(self, batch: list[Message], seconds: float) -> None:
        """Count the batch; its records start again from attempt 1."""
        if self._attempts:  # only after an aborted transaction
            for msg in batch:
                self._attempts.pop(_source(msg), None)
        if self._result is not None:
            self.metrics.record(self._result)
            self.quality.add(self._result.quality)

    def aborted(self, batch: list[Message]) -> None:
        """One more attempt for each record of the batch."""
        for msg in batch:
            key = _source(msg)
            self._attempts[key] = self._attempts.get(key, 0) + 1


def _source(msg: Message) -> SourceKey:
    return (msg.topic() or "", msg.partition() or 0, msg.offset() or 0)


class IngestWorker:
    """One ingest replica."""

    def __init__(self, settings: IngestSettings, stop: threading.Event) -> None:
        self.settings = settings
        self.stop = stop
        self.stage = IngestStage(settings, build_processor(settings, get_tracer("lepton.ingest")),
                                 IngestMetrics())

    def run(self) -> int:
        """Process until stopped; returns the process exit status."""
        s = self.settings
        return TransactionalRuntime(
            s, self.stage, self.stop, group_id=s.group_id(),
            transactional_id=s.transactional_id(), positions_topic=s.offsets_topic(),
            batch_size=s.ingest_batch_size, poll_timeout_s=s.ingest_batch_wait_ms / 1000,
            positions_read_timeout_s=s.ingest_transaction_timeout_ms / 1000 + 10,
            consumer_config={
                "group.instance.id": f"{s.group_id()}.{s.ingest_instance}",
                "session.timeout.ms": s.ingest_session_timeout_ms,
                "fetch.wait.max.ms": s.ingest_fetch_wait_ms},
            producer_config={"transaction.timeout.ms": s.ingest_transaction_timeout_ms},
            label=s.ingest_instance,
        ).run()
