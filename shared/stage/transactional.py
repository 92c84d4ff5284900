"""The exactly-once runtime: consume a batch from the stage's inputs, `process` it, and produce
its outputs, its input positions (shared/positions.py) and its consumer offsets in one Kafka
transaction, so after a crash at any moment every input counts exactly once downstream
(read_committed). A batch's transaction always finishes before the next poll, so a rebalance
never meets an open transaction.

Policy, in one place:
- the stage's `waits_out` errors (Redis, a KMS) retry the batch with back-off;
- a transactional step that times out or meets a retriable error is called again (the broker is
  slow or away) until it completes, or until stop, which aborts it;
- an error that requires abort aborts, rewinds the batch and processes it again;
- a fenced producer or a fatal client error stops the process (exit status 1);
- a record below its partition's offset fence (shared/stage/fence.py) is never processed
  again, unless the runtime rewound to it;
- on a broker that keeps no transaction state, outputs are read back and never produced twice
  (shared/stage/written.py).
On stop the current batch finishes (status 0), or is aborted when the broker cannot take it
(status 1): nothing unfinished is ever committed.

Each transaction also re-writes the stored position of every assigned partition it has not
checkpointed for `position_refresh_s`, at the value last committed or resumed from (what the
log already says, so exactly once is unchanged): the positions topic is read backwards on
assignment, and a partition that stays idle must not leave its checkpoint ever deeper in it
(the embedded broker never compacts; reading 30,000 records back can outlast the read
timeout).

The stage's due outputs (signed checkpoints, closed quality windows: made once, from state that
has moved on) go with the next transaction and are carried into each one after it until one
commits, so an abort never loses them. On the embedded broker an aborted transaction may
already have shown one of them; it is then written twice (each names itself: the same signed
checkpoint or window).
"""

from __future__ import annotations

import gc
import logging
import math
import threading
import time
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from shared.abandon import reset_on_exit
from shared.config import LeptonSettings
from shared.kafka import ensure_topics, make_consumer, make_producer, wait_for_kafka
from shared.positions import InputPositions
from shared.readiness import clear_ready, mark_ready
from shared.service_record import count_work, note_consumer
from shared.stage.fence import OffsetFence
from shared.stage.metrics import StageMetrics
from shared.stage.model import (
    MAX_BACKOFF_S,
    Fenced,
    Output,
    Stage,
    first_offsets,
    is_fenced,
    is_retriable,
    next_offsets,
    poll_batch,
    process_waiting,
    produce,
    rewind,
)
from shared.stage.written import WrittenOutputs

log = logging.getLogger(__name__)

GC_THRESHOLD = 50_000
POSITION_REFRESH_S = 10.0  # also keeps observers' reads short (services/monitor/lag.py)
STEP_TIMEOUT_S = 5.0
STOPPING_STEP_TIMEOUT_S = 1.0
EXIT_OK = 0
EXIT_UNFINISHED = 1


class Stopped(Exception):
    """Stop was requested while a transactional step was still waiting for the broker."""


class TransactionalRuntime:
    """Runs one stage replica until `stop`; `run()` returns the exit status."""

    def __init__(self, settings: LeptonSettings, stage: Stage, stop: threading.Event, *,
                 group_id: str, transactional_id: str, positions_topic: str,
                 batch_size: int, poll_timeout_s: float, positions_read_timeout_s: float = 70.0,
                 consumer_config: dict[str, object] | None = None,
                 producer_config: dict[str, object] | None = None,
                 label: str | None = None,
                 position_refresh_s: float = POSITION_REFRESH_S) -> None:
        self.settings = settings
        self.stage = stage
        self.stop = stop
        self.group_id = group_id
        self.transactional_id = transactional_id
        self.positions_topic = positions_topic
        self.batch_size = batch_size
        self.poll_timeout_s = poll_timeout_s
        self.positions_read_timeout_s = positions_read_timeout_s
        self.consumer_config = consumer_config or {}
        self.producer_config = producer_config or {}
        self.label = label or stage.name  # names this replica in logs
        self.metrics = StageMetrics(stage.name)
        self.fence = OffsetFence()
        self.batches = 0
        self.processed = 0
        self.unfinished = False
        self._due: list[Output] = []  # due outputs no commit has carried yet
        self.position_refresh_s = position_refresh_s
        # per assigned partition: its committed (or resumed) position, and when it was written
        self._positions: dict[tuple[str, int], tuple[int, float]] = {}

    def run(self) -> int:
        """Consume, process, produce and commit until stopped; the exit status."""
        s, stage = self.settings, self.stage
        counts = ensure_topics(s, [*stage.inputs, *stage.outputs], stop=self.stop)
        # the transactional producer first: initialising it aborts a predecessor's open
        # transaction, which would otherwise block reading the committed positions
        self.producer: Producer = make_producer(s, transactional_id=self.transactional_id,
                                                stop=self.stop, **self.producer_config)
        cluster = wait_for_kafka(lambda: self.producer.list_topics(timeout=5).cluster_id,
                                 self.stop, "the cluster check")
        self.written = WrittenOutputs.needed(cluster, s, self.group_id,
                                             {t: counts[t] for t in stage.outputs})
        self.positions = InputPositions(s, self.positions_topic, self.group_id,
                                        read_timeout=self.positions_read_timeout_s,
                                        stop=self.stop)
        self.consumer: Consumer = make_consumer(s, self.group_id, **self.consumer_config)
        self.consumer.subscribe(stage.inputs, on_assign=self._on_assign,
                                on_revoke=self._on_revoke, on_lost=self._on_revoke)
        note_consumer(self.group_id, stage.inputs, self.positions_topic, self.batch_size)
        log.info("%s consuming %s as %s", self.label, ", ".join(stage.inputs),
                 self.transactional_id)
        mark_ready(s, stage.name)
        # A batch allocates tens of thousands of short-lived containers; at the default gen-0
        # threshold (700) the collector runs dozens of times a batch and walks the long-lived
        # state too (≈ 15 µs an event in governance). Start-up state is frozen out of it.
        gc.collect()
        gc.freeze()
        gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])
        try:
            self._loop()
            if not self.unfinished:
                self._commit([], [], final=True)
            return EXIT_UNFINISHED if self.unfinished else EXIT_OK
        except Fenced as error:
            log.error("%s: stopping", error)
            return EXIT_UNFINISHED
        finally:
            clear_ready(s, stage.name)
            if self.unfinished:  # the broker must not apply what it still buffers from us
                reset_on_exit()
            self._close()

    def _loop(self) -> None:
        while not self.stop.is_set() and not self.unfinished:
            self.metrics.heartbeat.beat()
            batch = self.fence.admit(
                poll_batch(self.consumer, self.batch_size, self.poll_timeout_s))
            self.metrics.update_lag(self.consumer)
            if not batch:
                self._commit([], [])
                continue
            started = time.perf_counter()
            outputs = process_waiting(self.stage, batch, self.stop, self.metrics.heartbeat)
            if outputs is None:
                self._rewind(batch)
                return
            if self._commit(batch, outputs):
                seconds = time.perf_counter() - started
                self.batches += 1
                self.processed += len(batch)
                self.metrics.committed(len(batch), seconds)
                count_work(len(batch), seconds)
                self.stage.committed(batch, seconds)
            else:
                self.metrics.aborted.add(1)
                self.stage.aborted(batch)
                self._rewind(batch)

    def _rewind(self, batch: list[Message]) -> None:
        self.fence.rewound(rewind(self.consumer, batch))

    def _commit(self, batch: list[Message], outputs: list[Output], final: bool = False) -> bool:
        """Produce `outputs`, then the due outputs no commit has carried yet and those the stage
        makes due now, and commit them with the batch's positions and offsets; False when the
        transaction was aborted (the caller rewinds)."""
        self._due.extend(self.stage.due(final))
        outputs = outputs + self._due
        offsets = next_offsets(batch)
        now = time.monotonic()
        stale = {source: offset for source, (offset, written) in self._positions.items()
                 if source not in offsets and now - written >= self.position_refresh_s}
        if not outputs and not offsets and not stale:
            return True
        producer, written = self.producer, self.written
        begun = time.time_ns() // 1_000_000
        try:
            producer.begin_transaction()
            for out in outputs:
                headers = out.headers if written is None else written.headers(out)
                if headers is not None:
                    produce(producer, out, headers)
            if written is not None and outputs:  # positions must not reach it before outputs
                self._step("deliver outputs", self._deliver)
            for partition, key, value in self.positions.records({**stale, **offsets}):
                produce(producer, Output(self.positions.topic, key, value, [], partition))
            if offsets:
                tps = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
                meta = self.consumer.consumer_group_metadata()
                self._step("send offsets", lambda t: producer.send_offsets_to_transaction(
                    tps, meta, t))
            self._step("commit", producer.commit_transaction)
            self.fence.commit(offsets)
            self._due.clear()
            self._positions.update(
                {source: (offset, now) for source, offset in {**stale, **offsets}.items()
                 if source in self.fence.next})  # still assigned
            return True
        except Stopped:
            log.warning("stopping with the broker unreachable: the open transaction is aborted")
            self.unfinished = True
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if is_fenced(error):
                raise Fenced(f"producer {self.transactional_id} was fenced or failed: another "
                             f"live replica with this id? ({error})") from None
            log.warning("transaction aborted, the batch will be processed again: %s", error)
        self._abort()
        if written is not None and not self.unfinished and offsets:
            since = {source: (offset, begun) for source, offset in first_offsets(batch).items()}
            try:
                wait_for_kafka(lambda: written.scan(since), self.stop, "reading back outputs")
            except (KafkaException, TimeoutError) as exc:  # a restart reads them back
                log.error("could not read back the aborted batch's outputs: %s", exc)
                self.unfinished = True
        return False

    def _deliver(self, timeout: float) -> None:
        if self.producer.flush(timeout):
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "outputs undelivered",
                                            retriable=True))

    def _step(self, what: str, call: Callable[[float], object]) -> None:
        """Call a transactional step until it completes; retriable errors (timeouts, the broker
        away) call it again, until stop."""
        wait = 0.1
        while True:
            try:
                call(STOPPING_STEP_TIMEOUT_S if self.stop.is_set() else STEP_TIMEOUT_S)
                return
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if not is_retriable(error):
                    raise
                if self.stop.is_set():
                    raise Stopped(what) from None
                log.warning("%s waits for the broker: %s", what, error)
                self.metrics.heartbeat.beat()
                self.stop.wait(wait)
                wait = min(wait * 2, MAX_BACKOFF_S)

    def _abort(self) -> None:
        try:
            self._step("abort", self.producer.abort_transaction)
        except Stopped:
            self.unfinished = True  # the broker aborts it: a restart fences this producer
        except KafkaException as exc:
            if is_fenced(exc.args[0]):
                raise Fenced(f"producer failed while aborting: {exc.args[0]}") from None
            raise

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Resume each partition at the later of its Kafka-committed and stored position; a
        broker that does not answer meanwhile (frozen during a rejoin) is waited for until
        stop, as a raise here would leave consume() and end the service."""
        wait_for_kafka(lambda: self._resume(consumer, partitions), self.stop,
                       f"{self.label} (reading its input positions)")
        self.fence.assigned(partitions)
        # written again by the next transaction: at the tail of the positions topic from now on
        self._positions.update({(tp.topic, tp.partition): (tp.offset, -math.inf)
                                for tp in partitions if tp.offset >= 0})
        consumer.assign(partitions)
        log.info("%s assigned %s", self.label,
                 ", ".join(f"{tp.topic}[{tp.partition}]@{tp.offset}" for tp in partitions))

    def _resume(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        stamps = self.positions.resume(consumer, partitions)
        if self.written is not None:
            self.written.scan({(tp.topic, tp.partition): (max(tp.offset, 0),
                                                          stamps.get((tp.topic, tp.partition), 0))
                               for tp in partitions})

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.fence.revoked(partitions)
        if self.written is not None:
            self.written.forget([(tp.topic, tp.partition) for tp in partitions])
        for tp in partitions:
            self._positions.pop((tp.topic, tp.partition), None)
            self.metrics.lag.pop((tp.topic, tp.partition), None)
        log.info("%s revoked %s", self.label,
                 ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions))

    def _close(self) -> None:
        closers = [("consumer", self.consumer.close), ("positions reader", self.positions.close)]
        if self.written is not None:
            closers.append(("outputs reader", self.written.close))
        for name, close in closers:
            try:
                close()
            except (KafkaException, RuntimeError) as exc:
                log.warning("closing %s: %s", name, exc)
        self.producer.flush(0 if self.unfinished else 5)
        # the consumer holds this runtime's rebalance callbacks: a reference cycle that would
        # keep both clients, and librdkafka's threads, alive until some later gc pass
        del self.consumer, self.producer
