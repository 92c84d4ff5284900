"""Test helpers: read whole topics without a group join, run the `lepton` command, open dead
letters as the operator, check that a start waits for an unreachable broker until stopped."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import redis
import yaml
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from shared.accounting import ORDERS
from shared.config import LeptonSettings
from shared.datasets import load_spec
from shared.dlq import DeadLetterOpener
from shared.events import Decision
from shared.lifecycle import parent_death
from shared.releases import RELEASE_CHARGE, store_subjects, subjects_digest


def open_dead_letter(settings: LeptonSettings, value: bytes) -> bytes:
    """A DLQ-key dead letter's bytes, opened with the DLQ private key alone (no keyring: a
    subject-sealed letter fails the test)."""

    def no_keyring(label: str, sealed: bytes) -> bytes:
        raise AssertionError("not sealed to the DLQ public key")

    return DeadLetterOpener.load(settings, no_keyring).open(value)


@dataclass(frozen=True)
class Record:
    """One consumed Kafka record."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]


def records_written(consumer: Consumer, *topics: str) -> int:
    """Records written so far to `topics` (their high watermarks: committed or not)."""
    total = 0
    for topic in topics:
        info = consumer.list_topics(topic, timeout=10).topics.get(topic)
        for partition in info.partitions if info else {}:
            total += max(consumer.get_watermark_offsets(TopicPartition(topic, partition),
                                                        timeout=10)[1], 0)
    return total


def read_topic(
    settings: LeptonSettings,
    topic: str,
    *,
    expect: int | None = None,
    timeout: float = 30.0,
    idle: float = 2.0,
    committed_only: bool = True,
    settle: float | None = None,
) -> list[Record]:
    """Every record of `topic` from the beginning; stops at `expect` records (with `settle`:
    once `expect` are in, when no more came for `settle` s: what arrived beyond them
    counts too), or when idle."""
    consumer = Consumer({
        "bootstrap.servers": settings.bootstrap_servers(),
        "group.id": f"test-reader-{os.getpid()}-{time.monotonic_ns()}",
        "enable.auto.commit": False,
        "isolation.level": "read_committed" if committed_only else "read_uncommitted",
        "log_level": 3,
    })
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        partitions = metadata.topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        records: list[Record] = []
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        while time.monotonic() < deadline:
            if expect is not None and len(records) >= expect and (
                    settle is None or time.monotonic() - last > settle):
                break
            if expect is None and time.monotonic() - last > idle:
                break
            for msg in consumer.consume(1000, timeout=0.2):
                if msg.error():
                    continue
                last = time.monotonic()
                records.append(Record(
                    topic=msg.topic() or topic, partition=msg.partition() or 0,
                    offset=msg.offset() or 0, key=msg.key(), value=msg.value() or b"",
                    headers={k: v for k, v in (msg.headers() or []) if v is not None},
                ))
        return records
    finally:
        consumer.close()


def lepton(*args: str, env: dict[str, str] | None = None, timeout: float = 120,
           check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `python -m lepton ARGS` in a subprocess with the current environment."""
    result = subprocess.run(
        [sys.executable, "-m", "lepton", *args],
        env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout,
        preexec_fn=parent_death(),
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"lepton {' '.join(args)} exited {result.returncode}\n{result.stderr[-3000:]}"
        )
    return result


class TopicCollector:
    """Reads topics from the beginning on a background thread while a test runs, so records
    are kept even after the embedded broker's ~5 MB retention drops them from a partition."""

    def __init__(self, settings: LeptonSettings, topics: list[str]) -> None:
        import threading

        self.records: dict[str, list[Record]] = {topic: [] for topic in topics}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._consumer = Consumer({
            "bootstrap.servers": settings.bootstrap_servers(),
            "group.id": f"test-collector-{os.getpid()}-{time.monotonic_ns()}",
            "enable.auto.commit": False, "isolation.level": "read_committed",
            "fetch.wait.max.ms": 50, "log_level": 3,
        })
        assignment = []
        for topic in topics:
            partitions = self._consumer.list_topics(topic, timeout=10).topics[topic].partitions
            assignment += [TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions]
        self._consumer.assign(assignment)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for msg in self._consumer.consume(1000, timeout=0.2):
                if msg.error():
                    continue
                topic = msg.topic() or ""
                record = Record(topic=topic, partition=msg.partition() or 0,
                                offset=msg.offset() or 0, key=msg.key(),
                                value=msg.value() or b"",
                                headers={k: v for k, v in (msg.headers() or []) if v is not None})
                with self._lock:
                    self.records[topic].append(record)
        self._consumer.close()

    def count(self, topic: str) -> int:
        """Records of `topic` seen so far."""
        with self._lock:
            return len(self.records[topic])

    def wait_for(self, topic: str, count: int, timeout: float) -> list[Record]:
        """Wait until `count` records of `topic` were seen (or the timeout); return them all."""
        deadline = time.monotonic() + timeout
        while self.count(topic) < count and time.monotonic() < deadline:
            time.sleep(0.1)
        with self._lock:
            return list(self.records[topic])

    def stop(self) -> None:
        """Stop reading and close the consumer."""
        self._stop.set()
        self._thread.join(10)


@cache
def local_mode_specs() -> Path:
    """A specs directory whose transactions is in `local` privacy mode (per-event noise and
    per-event ledger charges), for the exactly-once tests of the per-event ledger."""
    data = load_spec("transactions").model_dump(mode="json")
    data["privacy"]["mode"] = "local"
    folder = Path(tempfile.mkdtemp(prefix="lepton-local-specs-"))
    (folder / "transactions.yaml").write_text(yaml.safe_dump(data))
    return folder


class PrivateRedisServer:
    """A redis-server of this test alone (free port, own directory), AOF on by default: for
    tests that wipe Redis or read its files. Never the shared server."""

    def __init__(self, directory: str, *, aof: bool = True, rdb: bool = True) -> None:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.directory = directory
        self.args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                     "--dir", directory, "--appendonly", "yes" if aof else "no",
                     "--appendfsync", "always", "--save", "3600 1" if rdb else ""]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> PrivateRedisServer:
        """Start the server (from its files, if any) and wait until it answers."""
        import redis

        self.process = subprocess.Popen(self.args, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, preexec_fn=parent_death())
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 20
        while True:
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise
                time.sleep(0.05)
        client.close()
        return self

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def files(self) -> bytes:
        """Every byte of every file the server keeps (AOF parts and RDB). A background save
        renames its temp file when done: a file gone mid-read means the listing is read again."""
        from pathlib import Path

        for _ in range(50):
            try:
                return b"".join(p.read_bytes() for p in sorted(Path(self.directory).rglob("*"))
                                if p.is_file())
            except FileNotFoundError:
                time.sleep(0.1)
        raise AssertionError(f"files in {self.directory} kept changing while read")


def release_charge(client: redis.Redis, settings: LeptonSettings, release: str,
                   subjects: list[str], *, epsilon: float, delta: float, curve: list[float],
                   sample_rate: float = 1.0, steps: int = 1) -> Decision:
    """An (unsigned) release charge on the `central` test dataset as the trainer sends it
    (services/trainer/charge.py): the subject ids stored in Redis, their count and digest in
    the decision; σ = 1.2."""
    store_subjects(client, settings, "central", release, subjects)
    return Decision(decision_id=release, kind=RELEASE_CHARGE, actor="trainer", dataset="central",
                    detail={"release_id": release, "model": "central", "epsilon": epsilon,
                            "delta": delta, "accountant": "rdp", "orders": list(ORDERS),
                            "rdp": curve, "noise_multiplier": 1.2, "sample_rate": sample_rate,
                            "steps": steps, "max_events_per_subject": 1,
                            "subjects_count": len(set(subjects)),
                            "subjects_sha256": subjects_digest(subjects)})


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def waits_until_stopped(start: Callable[[LeptonSettings, threading.Event], object]) -> None:
    """`start` against an unreachable broker is still waiting after 8 s (longer than one
    attempt: not failed), and raises KafkaException within 10 s of stop."""
    settings = LeptonSettings(kafka_bootstrap=f"127.0.0.1:{free_port()}")
    stop = threading.Event()
    outcome: list[BaseException] = []

    def wait() -> None:
        try:
            start(settings, stop)
        except BaseException as error:
            outcome.append(error)
    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(8.0)
    assert waiter.is_alive() and not outcome
    stop.set()
    waiter.join(10.0)
    assert not waiter.is_alive() and isinstance(outcome[0], KafkaException)
