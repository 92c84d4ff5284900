"""Ingest end to end on the embedded broker and real Redis: 20k events with 1% poison of every
kind, duplicates and kcat-style plain JSON; every poison record dead-lettered with its reason,
every good event in events.clean exactly once, and no PII in clear anywhere in events.clean."""

from __future__ import annotations

import random
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer

from lepton.generators import AGE_BANDS, FIRST, LAST
from services.ingest.config import IngestSettings
from services.ingest.keystore import KeyStore
from services.ingest.worker import IngestWorker
from shared.config import LeptonSettings
from shared.events import Envelope, Header, decode
from shared.topics import Topics
from tests.helpers import read_topic
from tests.unit.ingest.samples import BROKEN_DATASET, BROKEN_SPEC_YAML, POISON, poison, valid_docs

TOTAL = 20_000
POISON_SHARE = 0.01
DUPLICATES = 100
PLAIN = 50


@pytest.fixture
def ingest_env(lepton_env: LeptonSettings, tmp_path: Path,
               monkeypatch: pytest.MonkeyPatch) -> IngestSettings:
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / f"{BROKEN_DATASET}.yaml").write_text(BROKEN_SPEC_YAML)
    monkeypatch.setenv("LEPTON_INGEST_SPECS_DIR", str(specs))
    monkeypatch.setenv("LEPTON_INGEST_INSTANCE", "pipeline")
    monkeypatch.setenv("LEPTON_INGEST_SESSION_TIMEOUT_MS", "6000")
    return IngestSettings()


@pytest.fixture
def worker(ingest_env: IngestSettings) -> Iterator[tuple[threading.Event, list[int]]]:
    stop = threading.Event()
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(IngestWorker(ingest_env, stop).run()))
    thread.start()
    yield stop, codes
    stop.set()
    thread.join(30)
    assert not thread.is_alive()


def build_input(rng: random.Random) -> tuple[list[bytes], set[str], Counter[str]]:
    """Records to publish, the event ids that must come out clean, and expected DLQ reasons."""
    kinds = [k for k in POISON if k != "too_large"]
    poison_count = int(TOTAL * POISON_SHARE)
    docs = valid_docs(TOTAL - poison_count - DUPLICATES - PLAIN)
    records = [orjson.dumps(d) for d in docs]
    valid = {d["event_id"] for d in docs}
    reasons: Counter[str] = Counter()
    spoiled = [poison("too_large", docs[0]), poison("too_large", docs[1])]
    reasons["too_large"] += 2
    for index in range(poison_count - 2):
        kind = kinds[index % len(kinds)]
        spoiled.append(poison(kind, docs[rng.randrange(len(docs))]))
        reasons[POISON[kind][0]] += 1
    plain = []
    for doc in valid_docs(PLAIN, seed=99):
        plain.append(orjson.dumps({"dataset": doc["dataset"], "payload": doc["payload"]}))
    duplicates = [records[rng.randrange(len(records))] for _ in range(DUPLICATES)]
    mixed = records + spoiled + duplicates + plain
    rng.shuffle(mixed)
    return mixed, valid, reasons


def publish(settings: LeptonSettings, records: list[bytes]) -> None:
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers(), "linger.ms": 5,
                         "compression.type": "lz4", "enable.idempotence": True,
                         "message.max.bytes": 2_000_000})
    topic = Topics(settings.topic_prefix).raw
    for index, value in enumerate(records):
        headers = [("x-producer", b"pipeline-test"),
                   ("traceparent", f"00-{index:032x}-{index + 1:016x}-01".encode())]
        while True:
            try:
                producer.produce(topic, value=value, key=str(index % 97).encode(),
                                 headers=headers)
                break
            except BufferError:
                producer.poll(0.1)
    assert producer.flush(30) == 0


PII_PATTERNS = [
    re.compile(rb"[a-z]+\.[a-z]+\d+@example\.com"),
    re.compile(rb"(?<![0-9A-Za-z.+/])4\d{15}(?![0-9A-Za-z])"),  # not a fraction's digits
    re.compile(b"(" + b"|".join(f.encode() for f in FIRST) + b") (" +
               b"|".join(n.encode() for n in LAST) + b")"),
]


def test_poison_is_dead_lettered_and_good_events_come_out_once(
    ingest_env: IngestSettings, worker: tuple[threading.Event, list[int]]
) -> None:
    rng = random.Random(5)
    records, valid, reasons = build_input(rng)
    publish(ingest_env, records)
    topics = Topics(ingest_env.topic_prefix)
    expected_clean = len(valid) + PLAIN
    clean = read_topic(ingest_env, topics.clean, expect=expected_clean, timeout=120)
    rejected = read_topic(ingest_env, topics.rejected, expect=sum(reasons.values()), timeout=60)

    envelopes = [decode(Envelope, r.value) for r in clean]
    ids = [e.event_id for e in envelopes]
    assert len(ids) == len(set(ids)) == expected_clean
    assert valid <= set(ids)
    assert all(e.dataset == "transactions" for e in envelopes)
    assert Counter(r.headers[Header.DLQ_REASON].decode() for r in rejected) == reasons
    sources = {(r.headers[Header.DLQ_PARTITION], r.headers[Header.DLQ_OFFSET]) for r in rejected}
    assert len(sources) == len(rejected)
    assert all(r.headers["x-producer"] == b"pipeline-test" for r in rejected)
    traces = {r.headers["traceparent"].split(b"-")[1] for r in clean}
    assert len(traces) == len(clean)  # each event continues its own producer trace
    for r in clean:
        assert r.key == decode(Envelope, r.value).subject_id.encode()

    blob = b"\n".join(r.value for r in clean)
    for pattern in PII_PATTERNS:
        assert pattern.search(blob) is None, pattern.pattern[:40]
    for doc in valid_docs(300):
        for field in ("email", "name", "card_number"):
            assert doc["payload"][field].encode() not in blob
    store = KeyStore(ingest_env)
    for envelope in envelopes[:: len(envelopes) // 50]:
        email = store.decrypt_field(envelope.event_id, "email", str(envelope.payload["email"]))
        assert email.endswith("@example.com")
        assert envelope.payload["age_band"] in AGE_BANDS

    stop, codes = worker
    stop.set()
    deadline = time.monotonic() + 10
    while not codes and time.monotonic() < deadline:
        time.sleep(0.1)
    assert codes == [0]
    assert len(read_topic(ingest_env, topics.clean, idle=1.0)) == len(clean)
