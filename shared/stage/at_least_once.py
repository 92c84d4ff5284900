"""The at-least-once runtime (serving's Kafka path): consume a batch, `process` it, produce
its outputs and wait until they are delivered, tell the stage (which marks the batch done for
deduplication), then commit the offsets. A crash re-delivers rather than loses; the stage
skips what it already marked done."""

from __future__ import annotations

import logging
import threading
import time

from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition

from shared.config import LeptonSettings
from shared.kafka import make_consumer, make_producer
from shared.service_record import note_consumer
from shared.stage.metrics import StageMetrics
from shared.stage.model import (
    MAX_BACKOFF_S,
    Stage,
    next_offsets,
    poll_batch,
    process_waiting,
    produce,
    rewind,
)

log = logging.getLogger(__name__)


class AtLeastOnceRuntime:
    """Runs one stage until `stop`; `run()` returns the exit status (0 after a clean stop)."""

    def __init__(self, settings: LeptonSettings, stage: Stage, stop: threading.Event, *,
                 group_id: str, batch_size: int, poll_timeout_s: float,
                 consumer_config: dict[str, object] | None = None) -> None:
        self.settings = settings
        self.stage = stage
        self.stop = stop
        self.group_id = group_id
        self.batch_size = batch_size
        self.poll_timeout_s = poll_timeout_s
        self.consumer_config = consumer_config or {}
        self.metrics = StageMetrics(stage.name)

    def run(self) -> int:
        """Consume, process, deliver, acknowledge and commit until stopped."""
        self.producer: Producer = make_producer(self.settings)
        self.consumer: Consumer = make_consumer(self.settings, self.group_id,
                                                **self.consumer_config)
        self.consumer.subscribe(self.stage.inputs)
        note_consumer(self.group_id, self.stage.inputs, batch_size=self.batch_size)
        finished = True
        try:
            while finished and not self.stop.is_set():
                self.metrics.heartbeat.beat()
                batch = poll_batch(self.consumer, self.batch_size, self.poll_timeout_s,
                                   eager=True)
                self.metrics.update_lag(self.consumer)
                if batch:
                    finished = self._handle(batch)
        finally:
            self.producer.flush(5 if finished else 0)
            self.consumer.close()
        return 0 if finished else 1

    def _handle(self, batch: list[Message]) -> bool:
        """One batch through to its offset commit; False when stopped before it finished."""
        started = time.perf_counter()
        outputs = process_waiting(self.stage, batch, self.stop, self.metrics.heartbeat)
        if outputs is None:
            rewind(self.consumer, batch)
            return False
        for out in outputs:
            produce(self.producer, out)
        while self.producer.flush(1.0) > 0:
            if self.stop.is_set():
                return False  # not acknowledged: redelivered after a restart
            log.warning("%d %s outputs wait for the broker", len(self.producer),
                        self.stage.name)
            self.metrics.heartbeat.beat()
        seconds = time.perf_counter() - started
        self.stage.committed(batch, seconds)
        offsets = [TopicPartition(t, p, o) for (t, p), o in next_offsets(batch).items()]
        wait = 0.1
        while True:
            try:
                self.consumer.commit(offsets=offsets, asynchronous=False)
                break
            except KafkaException as exc:
                log.warning("offset commit waits: %s", exc.args[0])
                self.metrics.heartbeat.beat()
                if self.stop.wait(wait):
                    return False  # redelivered after a restart, and skipped as done
                wait = min(wait * 2, MAX_BACKOFF_S)
        self.metrics.committed(len(batch), seconds)
        return True
