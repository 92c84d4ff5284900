"""Rank 0's reader of `quality.windows`: a thread that consumes the topic from the beginning
(assigned partitions, read_committed, no offsets committed), verifies each record against the
ingest principal's public key (shared/quality_windows.py, the allow-list of shared/allowlist.py)
and keeps the verified windows of the trainer's dataset in a QualityBook. A record that is not
signed, is signed by an unknown key or a principal not allowed to say `quality_window`, or whose
signature or content does not check is ignored and counted by reason
(`lepton.trainer.quality.ignored`), never trusted.

`start` waits (at most `catch_up_s`) until the windows already on the topic are read, so a
restarted trainer judges its first cycle with them; a broker that does not answer meanwhile is
waited for until the trainer is stopped.
"""

from __future__ import annotations

import logging
import threading
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from services.trainer.config import TrainerSettings
from services.trainer.quality_hold import QualityBook, QualityIndex
from services.trainer.telemetry import TrainerMetrics
from shared.allowlist import AllowList
from shared.kafka import ensure_topics, make_consumer, wait_for_kafka
from shared.principals import public_keys_dir
from shared.quality_windows import SIGNERS, verify_window
from shared.topics import Topics

log = logging.getLogger(__name__)


class QualityFeed:
    """Verified quality windows of one dataset, read on a background thread."""

    def __init__(self, settings: TrainerSettings, dataset: str, metrics: TrainerMetrics) -> None:
        self.settings = settings
        self.topic = Topics(settings.topic_prefix).quality_windows
        self.metrics = metrics
        self.allow = AllowList(public_keys_dir(settings), SIGNERS)
        self.book = QualityBook(dataset)
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._caught_up = threading.Event()
        self._high: dict[int, int] = {}
        self._thread: threading.Thread | None = None
        self._consumer: Consumer | None = None

    def start(self, stop: threading.Event, catch_up_s: float = 10.0) -> None:
        """Assign every partition from the beginning, start reading, and wait until what was
        on the topic at start is read (or `catch_up_s` passed). An unreachable broker is
        waited for until `stop` is set, as at every other start-up call."""
        ensure_topics(self.settings, [self.topic], stop=stop)
        consumer = make_consumer(self.settings, f"{self.settings.group_id()}-quality",
                                 **{"client.id": "trainer-quality", "log_level": 3})
        self._consumer = consumer
        partitions, self._high = wait_for_kafka(lambda: self._ends(consumer), stop,
                                                "the quality windows' offsets")
        consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in partitions])
        if not self._high:
            self._caught_up.set()
        self._thread = threading.Thread(target=self._run, name="trainer-quality", daemon=True)
        self._thread.start()
        if not self._caught_up.wait(catch_up_s):
            log.warning("quality windows not read up to the end in %.0f s: the first cycles "
                        "are judged by those read so far", catch_up_s)

    def _ends(self, consumer: Consumer) -> tuple[list[int], dict[int, int]]:
        """The topic's partitions, and the end offset of each one that holds records."""
        partitions = sorted(consumer.list_topics(self.topic, timeout=5)
                            .topics[self.topic].partitions)
        ends: dict[int, int] = {}
        for partition in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(self.topic, partition),
                                                       timeout=5)
            if high > low:
                ends[partition] = high
        return partitions, ends

    def _run(self) -> None:
        assert self._consumer is not None
        while not self._closed.is_set():
            try:
                messages = self._consumer.consume(500, timeout=0.2)
            except KafkaException as error:
                log.warning("reading %s: %s", self.topic, error)
                time.sleep(1.0)
                continue
            for msg in messages:
                if msg.error() is None:
                    self.handle(msg.value() or b"")
            if self._high:  # the position skips transaction markers; the last offset does not
                for tp in self._consumer.position(
                        [TopicPartition(self.topic, p) for p in self._high]):
                    if tp.offset >= self._high[tp.partition]:
                        del self._high[tp.partition]
            if not self._high:
                self._caught_up.set()

    def handle(self, value: bytes) -> bool:
        """Verify one record and keep its window; False when it was ignored or not news."""
        found = verify_window(value, self.allow)
        if isinstance(found, str):
            self.metrics.quality_ignored.add(1, {"reason": found})
            log.warning("quality window record ignored: %s", found)
            return False
        with self._lock:
            return self.book.add(found)

    def index_for(self, first_s: float, last_s: float) -> QualityIndex | None:
        """The combined index of the data consumed between `first_s` and `last_s`."""
        with self._lock:
            return self.book.index_for(first_s, last_s, self.settings.trainer_quality_slack_s)

    def close(self) -> None:
        """Stop the thread and close the consumer."""
        self._closed.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._consumer is not None:
            self._consumer.close()
