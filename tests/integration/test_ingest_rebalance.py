"""Two ingest replicas in one consumer group: a replica joining mid-stream triggers a rebalance,
partitions move with their checkpoints, and every event still comes out exactly once."""

from __future__ import annotations

import logging
import threading
import time

import orjson
import pytest
from confluent_kafka import Consumer, Producer

from services.ingest.config import IngestSettings
from services.ingest.worker import IngestWorker
from shared.config import LeptonSettings
from shared.events import Envelope, decode
from shared.topics import Topics
from tests.helpers import read_topic, records_written
from tests.unit.ingest.samples import valid_docs

EVENTS = 10_000
PRELOAD = 2000
RATE = 1500.0


def test_a_replica_joining_mid_stream_loses_and_duplicates_nothing(
    lepton_env: LeptonSettings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="shared.stage.transactional")
    topics = Topics(lepton_env.topic_prefix)
    docs = valid_docs(EVENTS, seed=41)
    producer = Producer({"bootstrap.servers": lepton_env.bootstrap_servers(), "linger.ms": 5,
                         "compression.type": "lz4"})

    def send(start: int, stop_at: int, rate: float | None) -> None:
        began = time.monotonic()
        for index in range(start, stop_at):
            producer.produce(topics.raw, value=orjson.dumps(docs[index]),
                             key=str(index % 31).encode())
            producer.poll(0)
            if rate is not None:
                time.sleep(max(0.0, (index - start) / rate - (time.monotonic() - began)))
        producer.flush(30)

    send(0, PRELOAD, None)
    sender = threading.Thread(target=send, args=(PRELOAD, EVENTS, RATE))
    sender.start()

    stop = threading.Event()
    codes: list[int] = []
    threads = []
    watcher = Consumer({"bootstrap.servers": lepton_env.bootstrap_servers(),
                        "group.id": "rebalance-watcher", "log_level": 3})
    for name in ("one", "two"):
        settings = IngestSettings(ingest_instance=name, ingest_batch_size=200,
                                  ingest_session_timeout_ms=6000)
        thread = threading.Thread(
            target=lambda s=settings: codes.append(IngestWorker(s, stop).run()))
        thread.start()
        threads.append(thread)
        deadline = time.monotonic() + 60
        while records_written(watcher, topics.clean) < PRELOAD // 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    watcher.close()
    try:
        sender.join(60)
        clean = read_topic(lepton_env, topics.clean, expect=EVENTS, timeout=120)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert codes == [0, 0]
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("one revoked") for m in messages)
    assert any(m.startswith("two assigned") for m in messages)
    ids = [decode(Envelope, r.value).event_id for r in clean]
    assert len(ids) == len(set(ids)) == EVENTS
    assert len(read_topic(lepton_env, topics.clean, idle=1.0)) == EVENTS
