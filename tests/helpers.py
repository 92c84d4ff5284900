"""Test helpers: read whole topics without a group join, run the `lepton` command."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from shared.config import LeptonSettings


@dataclass(frozen=True)
class Record:
    """One consumed Kafka record."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]


def read_topic(
    settings: LeptonSettings,
    topic: str,
    *,
    expect: int | None = None,
    timeout: float = 30.0,
    idle: float = 2.0,
    committed_only: bool = True,
) -> list[Record]:
    """Every record of `topic` from the beginning; stops at `expect` records, or when idle."""
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
            if expect is not None and len(records) >= expect:
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
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"lepton {' '.join(args)} exited {result.returncode}\n{result.stderr[-3000:]}"
        )
    return result
