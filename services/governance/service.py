"""The governance process: a confluent-kafka transactional batch loop.

Consumes `events.clean` and `audit.requests` (one consumer group), and per batch: govern and
seal (processor.py; charges, audit leaves and checkpoints are durable on disk first), then
produce `events.governed`, `audit.log`, dead letters and the input positions (shared/positions.py),
`send_offsets_to_transaction` and commit, so outputs and input offsets become visible together
or not at all. After a crash the
uncommitted batch is consumed again and reuses its ledger charges and audit leaves.
"""

from __future__ import annotations

import fcntl
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import redis
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from opentelemetry.trace import Tracer

from services.governance.config import GovernanceSettings
from services.governance.ledger import ChargeLog, Ledger
from services.governance.policy import Policy
from services.governance.processor import Processor
from services.governance.sealing import AUDIT_TYPE_HEADER, Output
from services.governance.store import AuditStore
from services.governance.telemetry import GovernanceMetrics
from shared.crypto import KeyStore
from shared.events import CONTENT_TYPE_JSON, Header
from shared.kafka import ensure_topics, make_consumer, make_producer
from shared.positions import InputPositions
from shared.readiness import clear_ready, mark_ready
from shared.signing import load_or_create_private_key
from shared.state import make_redis
from shared.topics import Topic, Topics

log = logging.getLogger(__name__)


class AlreadyRunning(RuntimeError):
    """Another governance process holds this data directory."""


@contextmanager
def exclusive(directory: Path) -> Iterator[None]:
    """Hold the governance data directory's lock (one writer of the audit and ledger stores)."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "governance.lock").open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AlreadyRunning(f"another governance process is using {directory}") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class GovernanceService:
    """Runs the batch loop until `stop` is set."""

    def __init__(self, settings: GovernanceSettings, stop: threading.Event,
                 tracer: Tracer | None = None) -> None:
        self.settings = settings
        self.tracer = tracer
        self.stop = stop
        self.topics = Topics(settings.topic_prefix)
        self.metrics = GovernanceMetrics()
        self.batches = 0
        self.processed = 0
        self._redis_failures = 0

    def run(self) -> None:
        """Open the stores, then consume, govern, produce and commit until stopped."""
        s = self.settings
        with exclusive(s.governance_dir()):
            counts = ensure_topics(s, [self.topics.clean, self.topics.audit_requests,
                                       self.topics.governed, self.topics.audit_log,
                                       self.topics.rejected])
            client = make_redis(s)
            charge_log = ChargeLog(s.ledger_dir(), segment_bytes=s.governance_segment_bytes,
                                   fsync=s.governance_fsync)
            charge_log.open()
            ledger = Ledger(client, s, charge_log)
            rebuilt = ledger.ensure_ready()
            if rebuilt:
                log.warning("privacy ledger was missing from Redis: rebuilt from %d charges",
                            rebuilt)
            store = AuditStore(s.audit_dir(), self.topics.audit_log,
                               segment_bytes=s.governance_segment_bytes, fsync=s.governance_fsync)
            store.open(counts[self.topics.audit_log])
            self.store = store
            self.key = load_or_create_private_key(s.audit_key_path())
            policy = Policy(client, s, s.audit_dir())
            self.processor = Processor(s, store, ledger, policy, self.metrics,
                                       counts[self.topics.audit_log],
                                       KeyStore(s, client=client), self.tracer)
            # the transactional producer first: initialising it aborts a predecessor's open
            # transaction, which would otherwise block reading the committed positions
            producer = make_producer(s, transactional_id=s.transactional_id())
            self.positions = InputPositions(
                s, self.topics.name(Topic.GOVERNANCE_OFFSETS), s.group_id(), read_timeout=60.0)
            consumer = make_consumer(s, s.group_id(),
                                     **{"session.timeout.ms": s.governance_session_timeout_ms})
            self._last_signed = time.monotonic()
            try:
                consumer.subscribe([self.topics.clean, self.topics.audit_requests],
                                   on_assign=self._on_assign)
                log.info("governance consuming %s and %s (DP %s)", self.topics.clean,
                         self.topics.audit_requests,
                         "on" if s.governance_dp_enabled else "OFF")
                mark_ready(s, "governance")
                self._loop(consumer, producer)
                self._transaction(producer, consumer, [], {}, final=True)
            finally:
                clear_ready(s, "governance")
                consumer.close()
                self.positions.close()
                producer.flush(10)
                store.close()
                charge_log.close()
                client.close()

    def _loop(self, consumer: Consumer, producer: Producer) -> None:
        s = self.settings
        while not self.stop.is_set():
            messages = consumer.consume(s.governance_batch_size, s.governance_poll_timeout_s)
            good: list[Message] = []
            for msg in messages:
                error = msg.error()
                if error is None:
                    good.append(msg)
                elif error.code() != KafkaError._PARTITION_EOF:
                    log.warning("consume error: %s", error)
            if not good:
                if self._due_partitions():
                    self._transaction(producer, consumer, [], {})
                continue
            started = time.perf_counter()
            try:
                result = self.processor.process(good)
            except (redis.ConnectionError, redis.TimeoutError) as error:
                # every step is idempotent (charges by id, audit leaves by identity), so the
                # batch is simply processed again once Redis answers
                wait = min(5.0, 0.2 * 2 ** self._redis_failures)
                self._redis_failures += 1
                log.warning("batch waits for Redis (%s); retrying in %.1f s",
                            type(error).__name__, wait)
                self._rewind(consumer, good)
                self.stop.wait(wait)
                continue
            self._redis_failures = 0
            if self._transaction(producer, consumer, result.outputs, result.offsets, good=good):
                self.batches += 1
                self.processed += len(good)
            self.metrics.batch_seconds.record(time.perf_counter() - started)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Resume each partition at the later of its Kafka-committed and stored position."""
        self.positions.resume(consumer, partitions)
        consumer.assign(partitions)
        log.info("assigned %s", ", ".join(f"{tp.topic}[{tp.partition}]@{tp.offset}"
                                          for tp in partitions))

    def _due_partitions(self, final: bool = False) -> list[int]:
        s = self.settings
        late = time.monotonic() - self._last_signed >= s.governance_checkpoint_seconds
        return [p for p in self.store.parts
                if (n := self.store.unsigned(p)) > 0
                and (final or late or n >= s.governance_checkpoint_every)]

    def _checkpoint_outputs(self, final: bool = False) -> list[Output]:
        outputs = []
        for partition in self._due_partitions(final=final):
            checkpoint = self.store.checkpoint(partition, self.key)
            self.metrics.checkpoints.add(1)
            outputs.append(Output(self.topics.audit_log, b"checkpoint",
                                  orjson.dumps(checkpoint.model_dump()),
                                  [(Header.CONTENT_TYPE, CONTENT_TYPE_JSON),
                                   (AUDIT_TYPE_HEADER, b"checkpoint")], partition))
        if outputs or final:
            self._last_signed = time.monotonic()
        return outputs

    def _transaction(self, producer: Producer, consumer: Consumer, outputs: list[Output],
                     offsets: dict[tuple[str, int], int], *, final: bool = False,
                     good: list[Message] | None = None) -> bool:
        """Produce outputs (plus due checkpoints) and commit them with the input offsets;
        False when the transaction aborted and the batch was rewound."""
        outputs = outputs + self._checkpoint_outputs(final=final)
        if not outputs and not offsets:
            return True
        try:
            producer.begin_transaction()
            for out in outputs:
                self._produce(producer, out)
            for partition, key, value in self.positions.records(offsets):
                self._produce(producer, Output(self.positions.topic, key, value, [], partition))
            if offsets:
                producer.send_offsets_to_transaction(
                    [TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                    consumer.consumer_group_metadata(), 30)
            producer.commit_transaction(60)
            return True
        except KafkaException as error:
            kerr = error.args[0]
            if not kerr.txn_requires_abort() or final:
                raise
            log.warning("transaction aborted (%s); the batch will be processed again", kerr)
            producer.abort_transaction(30)
            self._rewind(consumer, good or [])
            return False

    @staticmethod
    def _produce(producer: Producer, out: Output) -> None:
        while True:
            try:
                if out.partition is None:
                    producer.produce(out.topic, key=out.key, value=out.value,
                                     headers=out.headers)
                else:
                    producer.produce(out.topic, key=out.key, value=out.value,
                                     headers=out.headers, partition=out.partition)
                return
            except BufferError:
                producer.poll(0.05)

    @staticmethod
    def _rewind(consumer: Consumer, messages: list[Message]) -> None:
        first: dict[tuple[str, int], int] = {}
        for msg in messages:
            key = (msg.topic() or "", msg.partition() or 0)
            first[key] = min(first.get(key, msg.offset() or 0), msg.offset() or 0)
        for (topic, partition), offset in first.items():
            consumer.seek(TopicPartition(topic, partition, offset))
