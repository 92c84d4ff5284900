"""A background thread that consumes and decodes the next batches while the current one
trains, so Kafka fetch latency and JSON decoding overlap with the optimiser (torch releases
the GIL inside its kernels, confluent-kafka while it waits).

Only batches the loop has taken count: a batch still queued when the trainer stops was never
trained, and since offsets advance only with taken batches, a restart reads it again.
While the thread runs it is the only one that touches the consumer: offset commits are handed
to it (a synchronous commit from another thread during `consume` can block forever).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from services.trainer.decode import Batch
from shared.models.features import FeatureTransform
from shared.stage.metrics import ConsumerLag

log = logging.getLogger(__name__)

STOPPING_WAIT_S = 5.0


class Prefetcher:
    """Consume `chunk` messages at a time in a thread; hand decoded batches to the loop, with
    their features already computed when the loop has published its current transform."""

    def __init__(self, consumer: Consumer, chunk: int,
                 decode: Callable[[Sequence[Any]], Batch], depth: int = 4,
                 lag: ConsumerLag | None = None) -> None:
        self.transform: FeatureTransform | None = None
        self._lag = lag
        self._consumer = consumer
        self._chunk = chunk
        self._decode = decode
        self._queue: queue.Queue[Batch] = queue.Queue(maxsize=depth)
        self._closed = threading.Event()
        self._error: BaseException | None = None
        self._commits: queue.Queue[tuple[list[TopicPartition], queue.Queue[BaseException | None]]]
        self._commits = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="trainer-prefetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._closed.is_set():
                self._serve_commits()
                messages = self._consumer.consume(self._chunk, timeout=0.1)
                if self._lag is not None:  # lag behind the fetch position (prefetched: taken)
                    self._lag.update(self._consumer)
                if not messages:
                    continue
                batch = self._decode(messages)
                transform = self.transform
                if transform is not None and batch.train:
                    batch.featurize(transform)
                while not self._closed.is_set():
                    self._serve_commits()
                    try:
                        self._queue.put(batch, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as error:  # surfaced to the loop by take()
            self._error = error

    def _serve_commits(self) -> None:
        while True:
            try:
                offsets, reply = self._commits.get_nowait()
            except queue.Empty:
                return
            try:
                self._consumer.commit(offsets=offsets, asynchronous=False)
                reply.put(None)
            except Exception as error:
                reply.put(error)

    def commit(self, offsets: list[TopicPartition], stop: threading.Event) -> bool:
        """Commit `offsets` synchronously on the consumer's thread, retrying a failed commit
        with back-off (a broker outage) until it succeeds. Once `stop` is set, the commit in
        flight gets STOPPING_WAIT_S more and is not retried: False then (the offsets are in
        the Redis resume mirror already, so nothing is lost)."""
        wait = 0.2
        while True:
            reply: queue.Queue[BaseException | None] = queue.Queue(maxsize=1)
            self._commits.put((offsets, reply))
            give_up: float | None = None
            while True:
                try:
                    error = reply.get(timeout=0.2)
                    break
                except queue.Empty:
                    if self._error is not None:
                        return False
                    if stop.is_set():
                        give_up = give_up or time.monotonic() + STOPPING_WAIT_S
                        if time.monotonic() > give_up:
                            return False
            if error is None:
                return True
            if not isinstance(error, KafkaException):
                raise error
            log.warning("offset commit waits (%s); retrying in %.1f s", error, wait)
            if stop.wait(wait):
                return False
            wait = min(wait * 2, 5.0)

    def take(self, limit: int, timeout: float) -> Batch | None:
        """Decoded batches (up to about `limit` messages), waiting at most `timeout` for the
        first; None when nothing arrived."""
        if self._error is not None:
            raise RuntimeError("the prefetch thread failed") from self._error
        try:
            batch = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        while batch.consumed < limit:
            try:
                batch.extend(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def close(self) -> None:
        """Stop the thread (queued, untaken batches are dropped: their offsets never advanced)."""
        self._closed.set()
        self._thread.join(10)
