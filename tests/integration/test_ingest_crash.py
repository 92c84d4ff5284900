"""Exactly once across crashes: SIGKILL the ingest process eight times mid-stream, each time
the moment a commit's records start reaching the broker, restart it, and the committed output
(read_committed) is exactly the valid input, each event once; poison is dead-lettered exactly
once; finally SIGTERM stops it cleanly with status 0."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import orjson
import pytest
from confluent_kafka import Consumer, Producer

from shared.config import LeptonSettings
from shared.events import Envelope, Header, decode
from shared.lifecycle import parent_death
from shared.topics import Topics
from tests.helpers import read_topic, records_written
from tests.unit.ingest.samples import POISON, poison, valid_docs

VALID = 12_000
POISON_COUNT = 120
DUPLICATES = 60
KILL_AT = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


@pytest.fixture
def spawn(lepton_env: LeptonSettings) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def start(procs: list[subprocess.Popen[bytes]], *command: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "LEPTON_INGEST_INSTANCE": "crash", "LEPTON_INGEST_BATCH_SIZE": "300",
           "LEPTON_INGEST_SESSION_TIMEOUT_MS": "6000", "LEPTON_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen([sys.executable, "-m", *(command or ("services.ingest",))], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=parent_death())
    procs.append(proc)
    return proc


@pytest.mark.slow
def test_eight_sigkills_mid_commit_lose_and_duplicate_nothing(
    lepton_env: LeptonSettings, spawn: list[subprocess.Popen[bytes]]
) -> None:
    rng = random.Random(17)
    topics = Topics(lepton_env.topic_prefix)
    docs = valid_docs(VALID, seed=23)
    records = [orjson.dumps(d) for d in docs]
    kinds = [k for k in POISON if k not in ("too_large", "internal_error")]
    records += [poison(kinds[i % len(kinds)], docs[i]) for i in range(POISON_COUNT)]
    records += [records[rng.randrange(VALID)] for _ in range(DUPLICATES)]
    rng.shuffle(records)
    producer = Producer({"bootstrap.servers": lepton_env.bootstrap_servers(), "linger.ms": 5,
                         "compression.type": "lz4", "enable.idempotence": True})
    for index, value in enumerate(records):
        producer.produce(topics.raw, value=value, key=str(index % 101).encode())
        if index % 5000 == 0:
            producer.poll(0)
    assert producer.flush(30) == 0

    watcher = Consumer({"bootstrap.servers": lepton_env.bootstrap_servers(),
                        "group.id": "crash-watcher", "log_level": 3})
    expected = VALID + POISON_COUNT
    for share in KILL_AT:
        proc = start(spawn)
        deadline = time.monotonic() + 90
        while (written := records_written(watcher, topics.clean, topics.rejected)) < \
                share * expected:
            assert proc.poll() is None, "ingest exited on its own"
            assert time.monotonic() < deadline, "ingest made no progress"
            time.sleep(0.05)
        # kill as soon as the next commit's records reach the broker: within the window where
        # a broker without transaction state (the embedded one) shows part of a transaction
        while records_written(watcher, topics.clean, topics.rejected) == written:
            assert time.monotonic() < deadline, "ingest made no progress"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    watcher.close()

    final = start(spawn, "lepton", "ingest")
    clean = read_topic(lepton_env, topics.clean, expect=VALID, timeout=120)
    rejected = read_topic(lepton_env, topics.rejected, expect=POISON_COUNT, timeout=60)
    final.send_signal(signal.SIGTERM)
    assert final.wait(15) == 0

    ids = [decode(Envelope, r.value).event_id for r in clean]
    assert len(ids) == len(set(ids)) == VALID
    assert set(ids) == {d["event_id"] for d in docs}
    offsets = [r.headers[Header.DLQ_OFFSET] + b"@" + r.headers[Header.DLQ_PARTITION]
               for r in rejected]
    assert len(offsets) == len(set(offsets)) == POISON_COUNT
    assert len(read_topic(lepton_env, topics.clean, idle=1.0)) == VALID
    assert len(read_topic(lepton_env, topics.rejected, idle=0.5)) == POISON_COUNT
