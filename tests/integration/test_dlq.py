"""The PII-free dead-letter queue end to end on the real broker and Redis: 20k transactions with
1 % poison (an amount the strict spec rejects) through a running ingest leave no PII value or
raw subject id in clear anywhere on events.rejected; a forgotten subject's dead letter cannot be
opened; after the spec is fixed `lepton dlq replay` brings every other poisoned event through
exactly once (a second replay adds nothing), as a new attempt of the same event id. Records that
name no subject are sealed to the DLQ public key: `lepton dlq show --reveal` opens them with the
DLQ private key alone, and nothing else does."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from services.ingest.config import IngestSettings
from services.ingest.keystore import KeyStore
from services.ingest.worker import IngestWorker
from shared.config import LeptonSettings
from shared.crypto import KeyDestroyed
from shared.dlq import SEALED_HEADER, DeadLetterOpener, make_dlq_key
from shared.events import Envelope, Header, decode
from shared.kafka import make_producer
from shared.topics import Topics
from tests.helpers import TopicCollector, lepton
from tests.unit.ingest.samples import valid_docs

TOTAL = 20_000
CHUNK = 2_000
SPEC = Path(__file__).parents[2] / "shared/datasets/transactions.yaml"
FULL_RANGE = "valid_min: 0, valid_max: 1000000, clip_min: 0, clip_max: 5000"
STRICT_RANGE = "valid_min: 0, valid_max: 10000, clip_min: 0, clip_max: 5000"


class Ingest:
    """An ingest worker on a thread, reading dataset specs from `specs`."""

    def __init__(self, specs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("LEPTON_INGEST_SPECS_DIR", str(specs))
        monkeypatch.setenv("LEPTON_INGEST_INSTANCE", f"dlq-{specs.name}")
        self.stop = threading.Event()
        self.thread = threading.Thread(target=IngestWorker(IngestSettings(), self.stop).run)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(60)
        assert not self.thread.is_alive()


def _spec_dir(root: Path, name: str, text: str) -> Path:
    path = root / name
    path.mkdir()
    (path / "transactions.yaml").write_text(text)
    return path


@pytest.fixture
def collector(lepton_env: LeptonSettings) -> Iterator[TopicCollector]:
    topics = Topics(lepton_env.topic_prefix)
    found = TopicCollector(lepton_env, [topics.clean, topics.rejected])
    yield found
    found.stop()


def test_dlq_holds_no_pii_and_replay_after_a_fix_brings_them_through_once(
        lepton_env: LeptonSettings, collector: TopicCollector, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    topics = Topics(lepton_env.topic_prefix)
    spec = SPEC.read_text()
    assert FULL_RANGE in spec
    strict = _spec_dir(tmp_path, "strict", spec.replace(FULL_RANGE, STRICT_RANGE))
    docs = valid_docs(TOTAL, seed=21)
    poisoned = set(range(0, TOTAL, 100))
    for i in poisoned:
        docs[i]["payload"]["amount"] = 50_000.0 + i  # valid for the real spec, not the strict one
    ingest = Ingest(strict, monkeypatch)
    producer = make_producer(lepton_env)
    try:
        for start in range(0, TOTAL, CHUNK):
            for doc in docs[start:start + CHUNK]:
                producer.produce(topics.raw, key=str(doc["subject_id"]).encode(),
                                 value=orjson.dumps(doc))
            assert producer.flush(30) == 0
            want = start + CHUNK
            collector.wait_for(topics.clean, want - len([i for i in poisoned if i < want]), 120)
        clean = collector.wait_for(topics.clean, TOTAL - len(poisoned), 60)
        rejected = collector.wait_for(topics.rejected, len(poisoned), 60)
    finally:
        ingest.close()
    assert (len(clean), len(rejected)) == (TOTAL - len(poisoned), len(poisoned))

    # no PII value and no raw subject id in clear on events.rejected
    secrets = {str(docs[i]["payload"][f]).encode() for i in range(TOTAL)
               for f in ("email", "name", "card_number")}
    secrets |= {str(doc["subject_id"]).encode() for doc in docs}
    blob = b"\n".join(r.value + b"\n" + (r.key or b"") + b"\n" + b"\n".join(r.headers.values())
                      for r in rejected)
    leaks = [s for s in secrets if s in blob]
    assert leaks == []
    assert Counter(r.headers[Header.DLQ_REASON] for r in rejected) == {
        b"out_of_range": len(poisoned)}
    assert {r.headers[SEALED_HEADER] for r in rejected} == {b"subject"}
    assert {r.headers["__connect.errors.topic"] for r in rejected} == {topics.raw.encode()}
    store = KeyStore(lepton_env)
    opener = DeadLetterOpener.load(lepton_env, store.open_bytes)
    by_event = {str(docs[i]["event_id"]): docs[i] for i in poisoned}
    for record in rejected:
        original = orjson.loads(opener.open(record.value))
        assert original == by_event[original["event_id"]]
        assert record.key == store.pseudonyms.of(str(original["subject_id"])).encode()

    # forgetting a subject shreds its dead letters too
    victim = str(docs[min(poisoned)]["subject_id"])
    victim_events = {str(docs[i]["event_id"]) for i in poisoned if docs[i]["subject_id"] == victim}
    lepton("forget", victim)
    victim_letters = [r for r in rejected if r.key == store.pseudonyms.of(victim).encode()]
    assert len(victim_letters) == len(victim_events)
    for record in victim_letters:
        with pytest.raises(KeyDestroyed):
            DeadLetterOpener.load(lepton_env, KeyStore(lepton_env).open_bytes).open(record.value)

    shown = lepton("dlq", "show", "--reason", "out_of_range")
    rows = [json.loads(line) for line in shown.stdout.splitlines()]
    assert len(rows) == len(poisoned)
    assert {r["reason"] for r in rows} == {"out_of_range"} and "value" not in rows[0]
    assert shown.stderr.strip().endswith(f"{len(rows)} dead letters (out_of_range: {len(rows)})")
    assert not [s for s in secrets if s in shown.stdout.encode()]

    # fix the spec, restart ingest, replay: every shreddable-free poisoned event arrives once
    fixed = _spec_dir(tmp_path, "fixed", spec)
    ingest = Ingest(fixed, monkeypatch)
    try:
        out = lepton("dlq", "replay", "--reason", "out_of_range").stdout
        replayable = len(poisoned) - len(victim_events)
        assert f"replayed {replayable} dead letters" in out
        assert f"shredded (key destroyed): {len(victim_events)}" in out
        clean = collector.wait_for(topics.clean, TOTAL - len(victim_events), 120)
        again = lepton("dlq", "replay").stdout  # a second replay: ingest drops the duplicates
        assert f"replayed {replayable} dead letters" in again
        settle = collector.wait_for(topics.clean, TOTAL, 10)
    finally:
        ingest.close()
    assert len(settle) == len(clean) == TOTAL - len(victim_events)
    envelopes = [decode(Envelope, r.value) for r in clean]
    ids = Counter(e.event_id for e in envelopes)
    assert max(ids.values()) == 1
    assert set(ids) == {str(d["event_id"]) for d in docs} - victim_events
    replayed = [e for e in envelopes if e.event_id in by_event]
    assert len(replayed) == replayable
    assert all(e.payload["amount"] == 5000.0 for e in replayed)  # in range now, then clipped
    assert all(("amount", "clipped") in {(c.field, c.action) for c in e.changes}
               for e in replayed)
    assert len(collector.wait_for(topics.rejected, len(poisoned), 1)) == len(poisoned)


def test_letters_without_a_subject_open_with_the_dlq_private_key_only(
        lepton_env: LeptonSettings, collector: TopicCollector, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    topics = Topics(lepton_env.topic_prefix)
    poison = [b"\xff not json ada@example.com",
              orjson.dumps({"dataset": "transactions", "email": "ada@example.com",
                            "card_number": "4111111111111111"}),
              orjson.dumps(["Ada Okafor"])]
    ingest = Ingest(_spec_dir(tmp_path, "specs", SPEC.read_text()), monkeypatch)
    producer = make_producer(lepton_env)
    try:
        for value in poison:
            producer.produce(topics.raw, value=value)
        assert producer.flush(30) == 0
        rejected = collector.wait_for(topics.rejected, len(poison), 120)
    finally:
        ingest.close()
    assert {r.headers[SEALED_HEADER] for r in rejected} == {b"dlq"}
    assert all(r.value.startswith(b"dlq1:") and r.key is None for r in rejected)
    blob = b"\n".join(r.value for r in rejected)
    for secret in (b"ada@example.com", b"4111111111111111", b"Ada Okafor", b"not json"):
        assert secret not in blob

    def no_keyring(label: str, value: bytes) -> bytes:
        raise AssertionError("a DLQ-key letter needs no data key")

    opener = DeadLetterOpener.load(lepton_env, no_keyring)
    assert sorted(opener.open(r.value) for r in rejected) == sorted(poison)
    shown = [json.loads(line) for line in lepton("dlq", "show", "--reveal").stdout.splitlines()]
    assert sorted(row["value"].encode() for row in shown) == sorted(
        p.decode("utf-8", "replace").encode() for p in poison)
    # another DLQ key (or none) opens nothing: sealing needed only the public key
    other = tmp_path / "other" / "dlq.key"
    make_dlq_key(other, tmp_path / "other" / "dlq.pub")
    hidden = lepton("dlq", "show", "--reveal", env={"LEPTON_DLQ_KEY_FILE": str(other)}).stdout
    rows = [json.loads(line) for line in hidden.splitlines()]
    assert all("value" not in row and "not to this key" in row["value_error"] for row in rows)
