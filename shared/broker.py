"""The embedded Kafka-protocol broker: librdkafka's built-in mock cluster, served on 127.0.0.1
to every client (confluent-kafka, aiokafka/faust, kcat). In memory and size-capped (about
5 MB a partition), so nothing durable may live only in it."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from types import TracebackType

from confluent_kafka import Producer

from shared.config import LeptonSettings
from shared.kafka import ensure_topics

log = logging.getLogger(__name__)

PARTITIONS = 4  # what the mock cluster gives every auto-created topic


class EmbeddedBroker:
    """Owns a mock cluster for as long as it is open."""

    def __init__(self, brokers: int = 1) -> None:
        self._brokers = brokers
        self._handle: Producer | None = None
        self.bootstrap = ""

    def start(self) -> str:
        """Start the cluster and return its bootstrap address."""
        self._handle = Producer(
            {"test.mock.num.brokers": self._brokers, "bootstrap.servers": "unused",
             "log_level": 3}
        )
        metadata = self._handle.list_topics(timeout=10)
        self.bootstrap = ",".join(
            f"{b.host}:{b.port}" for b in sorted(metadata.brokers.values(), key=lambda b: b.id)
        )
        return self.bootstrap

    def ensure_topics(self, topics: list[str]) -> dict[str, int]:
        """Make `topics` exist and return their partition counts."""
        settings = LeptonSettings(kafka_bootstrap=self.bootstrap)
        return ensure_topics(settings, topics)

    def stop(self) -> None:
        """Tear the cluster down."""
        if self._handle is not None:
            self._handle.flush(1)
            self._handle = None

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def write_bootstrap_file(path: Path, bootstrap: str) -> None:
    """Write the address atomically, so a reader never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(bootstrap + "\n")
    tmp.replace(path)


def serve(
    topics: list[str], bootstrap_file: Path | None, stop: threading.Event, brokers: int = 1
) -> None:
    """Run a broker until `stop` is set; announce its address on stdout and in the file."""
    with EmbeddedBroker(brokers) as broker:
        counts = broker.ensure_topics(topics)
        if bootstrap_file is not None:
            write_bootstrap_file(bootstrap_file, broker.bootstrap)
        print(f"bootstrap {broker.bootstrap}", flush=True)
        log.info("embedded broker on %s with %d topics", broker.bootstrap, len(counts))
        try:
            stop.wait()
        finally:
            if bootstrap_file is not None:
                bootstrap_file.unlink(missing_ok=True)
