"""The ingest loop: consume `events.raw` in batches, process, and commit each batch's outputs
(`events.clean`, `events.rejected`), offset checkpoints and consumer offsets in one Kafka
transaction, so after a crash at any moment every input counts exactly once downstream
(read_committed).

A batch's transaction is always finished before the next poll, so a rebalance never meets an
open transaction. An abortable error aborts and rewinds the batch; Redis failures back off and
retry it; a fenced producer (another live process with this transactional id) stops the worker
with exit status 1. SIGINT/SIGTERM finish the current batch, close the clients and return 0.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

import redis
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from opentelemetry.trace import Tracer

from services.ingest.config import IngestSettings
from services.ingest.decoding import Datasets
from services.ingest.dedup import Deduper
from services.ingest.processor import BatchResult, Processor, SourceKey
from services.ingest.protect import Protector
from services.ingest.telemetry import IngestMetrics
from shared.crypto import KeyStore
from shared.kafka import ensure_topics, make_consumer, make_producer
from shared.keyring import KmsError
from shared.positions import InputPositions, Source
from shared.readiness import clear_ready, mark_ready
from shared.state import make_redis
from shared.topics import Topics
from shared.tracing import get_tracer

log = logging.getLogger(__name__)

EXIT_FENCED = 1
LAG_EVERY_S = 2.0


class Fenced(RuntimeError):
    """Another producer with our transactional id took over; this one must stop."""


def build_processor(settings: IngestSettings, tracer: Tracer) -> Processor:
    """The batch processor wired to Redis, the key store and the dataset specs."""
    client = make_redis(settings)
    keystore = KeyStore(settings, client=client,
                        cache_size=settings.ingest_key_cache_size,
                        cache_ttl=settings.ingest_key_cache_ttl_s)
    return Processor(
        Topics(settings.topic_prefix),
        Datasets(settings.ingest_specs_dir, settings.ingest_unknown_fields),
        Deduper(settings, client, settings.ingest_dedup_window_s), keystore,
        Protector(keystore), tracer, settings.group_id(),
    )


class IngestWorker:
    """One ingest replica: a transactional consume-process-produce loop."""

    def __init__(self, settings: IngestSettings, stop: threading.Event) -> None:
        self.settings = settings
        self.stop = stop
        self.topics = Topics(settings.topic_prefix)
        self.metrics = IngestMetrics()
        self.processor = build_processor(settings, get_tracer("lepton.ingest"))
        self._attempts: dict[SourceKey, int] = {}
        self._lag_at = 0.0

    def run(self) -> int:
        """Process until stopped; returns the process exit status."""
        settings = self.settings
        ensure_topics(settings, [self.topics.raw, self.topics.clean, self.topics.rejected])
        self.checkpoints = InputPositions(
            settings, settings.offsets_topic(), settings.group_id(),
            read_timeout=settings.ingest_transaction_timeout_ms / 1000 + 10)
        self.producer = make_producer(
            settings, transactional_id=settings.transactional_id(),
            **{"transaction.timeout.ms": settings.ingest_transaction_timeout_ms})
        self.consumer = make_consumer(
            settings, settings.group_id(),
            **{"group.instance.id": f"{settings.group_id()}.{settings.ingest_instance}",
               "session.timeout.ms": settings.ingest_session_timeout_ms,
               "fetch.wait.max.ms": settings.ingest_fetch_wait_ms})
        self.consumer.subscribe([self.topics.raw], on_assign=self._on_assign,
                                on_revoke=self._on_revoke, on_lost=self._on_revoke)
        log.info("ingest %s consuming %s as %s", settings.ingest_instance, self.topics.raw,
                 settings.transactional_id())
        mark_ready(settings, "ingest")
        try:
            return self._loop()
        finally:
            clear_ready(settings, "ingest")

    def _loop(self) -> int:
        try:
            while not self.stop.is_set():
                batch = self._poll()
                if batch:
                    self._handle(batch)
                self._update_lag()
            return 0
        except Fenced as error:
            log.error("%s: stopping", error)
            return EXIT_FENCED
        finally:
            self._close()

    def _poll(self) -> list[Message]:
        settings = self.settings
        batch = []
        for msg in self.consumer.consume(settings.ingest_batch_size,
                                         settings.ingest_batch_wait_ms / 1000):
            error = msg.error()
            if error is None:
                batch.append(msg)
            elif error.fatal():
                raise Fenced(f"consumer {self.settings.group_id()}.{self.settings.ingest_instance}"
                             f" hit a fatal error: another live replica uses "
                             f"LEPTON_INGEST_INSTANCE={self.settings.ingest_instance}? ({error})")
            else:
                log.warning("consume: %s", error)
        return batch

    def _handle(self, batch: list[Message]) -> None:
        """Process one batch and commit it, retrying until done, rewound, or stopped."""
        started = time.monotonic()
        backoff = 0.1
        while True:
            try:
                result = self.processor.process(batch, self._attempts)
                break
            except (redis.RedisError, KmsError) as error:
                log.warning("batch of %d waits for infrastructure: %s", len(batch),
                            type(error).__name__)
                if self.stop.wait(backoff):
                    self._rewind(batch)
                    return
                backoff = min(backoff * 2, 5.0)
        if self._commit(batch, result):
            for msg in batch:
                self._attempts.pop((msg.topic() or "", msg.partition() or 0, msg.offset() or 0),
                                   None)
            self.metrics.record(result, time.monotonic() - started)
        else:
            self.metrics.aborted.add(1)
            for msg in batch:
                key = (msg.topic() or "", msg.partition() or 0, msg.offset() or 0)
                self._attempts[key] = self._attempts.get(key, 0) + 1
            self._rewind(batch)

    def _commit(self, batch: Sequence[Message], result: BatchResult) -> bool:
        """Produce and commit the batch in one transaction; False when it had to abort."""
        producer = self.producer
        next_offsets: dict[Source, int] = {}
        for msg in batch:
            next_offsets[(msg.topic() or "", msg.partition() or 0)] = (msg.offset() or 0) + 1
        try:
            producer.begin_transaction()
            for out in result.outputs:
                self._produce(out.topic, out.key, out.value, out.headers, -1)
            for partition, key, value in self.checkpoints.records(next_offsets):
                self._produce(self.checkpoints.topic, key, value, None, partition)
            producer.send_offsets_to_transaction(
                [TopicPartition(t, p, o) for (t, p), o in next_offsets.items()],
                self.consumer.consumer_group_metadata(), 30)
            return self._commit_transaction()
        except KafkaException as exc:
            return self._abort(exc.args[0])

    def _commit_transaction(self) -> bool:
        while True:
            try:
                self.producer.commit_transaction(30)
                return True
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if error.retriable() and not error.txn_requires_abort() \
                        and not self.stop.is_set():
                    log.warning("commit retry: %s", error)
                    continue
                return self._abort(error)

    def _abort(self, error: KafkaError) -> bool:
        if error.fatal() or error.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED,
                                              KafkaError.INVALID_PRODUCER_EPOCH):
            raise Fenced(f"producer {self.settings.transactional_id()} was fenced: another "
                         "live replica uses LEPTON_INGEST_INSTANCE="
                         f"{self.settings.ingest_instance} ({error})")
        log.warning("transaction aborted, batch will be retried: %s", error)
        try:
            self.producer.abort_transaction(30)
        except KafkaException as exc:
            if exc.args[0].fatal():
                raise Fenced(f"producer failed while aborting: {exc.args[0]}") from None
            raise
        return False

    def _produce(self, topic: str, key: bytes | None, value: bytes,
                 headers: list[tuple[str, str | bytes | None]] | None, partition: int) -> None:
        while True:
            try:
                self.producer.produce(topic, value=value, key=key, headers=headers,
                                      partition=partition)
                return
            except BufferError:
                self.producer.poll(0.05)

    def _rewind(self, batch: Sequence[Message]) -> None:
        """Seek each partition back to the batch's first record so it is consumed again."""
        first: dict[Source, int] = {}
        for msg in batch:
            source = (msg.topic() or "", msg.partition() or 0)
            first[source] = min(first.get(source, msg.offset() or 0), msg.offset() or 0)
        for (topic, partition), offset in first.items():
            try:
                self.consumer.seek(TopicPartition(topic, partition, offset))
            except KafkaException as exc:
                log.info("not rewinding %s/%d (no longer assigned): %s", topic, partition, exc)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.checkpoints.resume(consumer, partitions)
        consumer.assign(partitions)
        log.info("%s assigned %s", self.settings.ingest_instance,
                 ", ".join(f"{tp.partition}@{tp.offset}" for tp in partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.metrics.lag.pop(tp.partition, None)
        log.info("%s revoked %s", self.settings.ingest_instance,
                 ", ".join(str(tp.partition) for tp in partitions))

    def _update_lag(self) -> None:
        now = time.monotonic()
        if now - self._lag_at < LAG_EVERY_S:
            return
        self._lag_at = now
        try:
            for tp in self.consumer.position(self.consumer.assignment()):
                _, high = self.consumer.get_watermark_offsets(tp, cached=True)
                if tp.offset >= 0 and high >= 0:
                    self.metrics.lag[tp.partition] = max(0, high - tp.offset)
        except KafkaException as exc:
            log.debug("lag update failed: %s", exc)

    def _close(self) -> None:
        for name, close in (("consumer", self.consumer.close),
                            ("checkpoint reader", self.checkpoints.close)):
            try:
                close()
            except (KafkaException, RuntimeError) as exc:
                log.warning("closing %s: %s", name, exc)
        self.producer.flush(5)
