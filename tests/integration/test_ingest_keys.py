"""`lepton keys rotate` and `lepton forget` against a running ingest: old and new ciphertexts
decrypt after rotation; forgetting shreds only that subject, later events of the subject lose
their PII instead of getting a fresh key, and both acts are recorded as decisions."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import orjson
import pytest
from confluent_kafka import Producer

from services.ingest.config import IngestSettings
from services.ingest.keyring import LocalKms
from services.ingest.keystore import KeyStore
from services.ingest.rewrap import master_key_usage
from services.ingest.worker import IngestWorker
from shared.config import LeptonSettings
from shared.crypto import KeyDestroyed
from shared.events import Decision, Envelope, decode
from shared.topics import Topics
from tests.helpers import lepton, read_topic
from tests.unit.ingest.samples import valid_docs

BATCH = 150


@pytest.fixture
def running_ingest(lepton_env: LeptonSettings, monkeypatch: pytest.MonkeyPatch
                   ) -> Iterator[IngestSettings]:
    monkeypatch.setenv("LEPTON_INGEST_INSTANCE", "keys")
    settings = IngestSettings()
    stop = threading.Event()
    thread = threading.Thread(target=IngestWorker(settings, stop).run)
    thread.start()
    yield settings
    stop.set()
    thread.join(30)


def send(settings: LeptonSettings, docs: list[dict[str, object]], seen: int) -> list[Envelope]:
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers()})
    topic = Topics(settings.topic_prefix)
    for doc in docs:
        producer.produce(topic.raw, value=orjson.dumps(doc))
    assert producer.flush(10) == 0
    records = read_topic(settings, topic.clean, expect=seen + len(docs), timeout=60)
    assert len(records) == seen + len(docs)
    ids = {str(d["event_id"]) for d in docs}
    return [e for e in (decode(Envelope, r.value) for r in records) if e.event_id in ids]


def decrypts(store: KeyStore, envelope: Envelope) -> bool:
    try:
        return store.decrypt_field(envelope.event_id, "email",
                                   str(envelope.payload["email"])).endswith("@example.com")
    except KeyDestroyed:
        return False


def test_rotate_and_forget_while_ingest_runs(running_ingest: IngestSettings) -> None:
    settings = running_ingest
    before = send(settings, valid_docs(BATCH, seed=1), 0)
    first_key = LocalKms.from_settings(settings).active_key_id()

    rotated = lepton("keys", "rotate")
    new_key = LocalKms.from_settings(settings).active_key_id()
    assert new_key != first_key
    assert f"active master key {new_key}" in rotated.stdout
    after = send(settings, valid_docs(BATCH, seed=2), BATCH)

    store = KeyStore(settings)
    assert all(decrypts(store, e) for e in before + after)
    assert set(master_key_usage(store)) <= {first_key, new_key}

    later_docs = valid_docs(BATCH, seed=3)
    raw_of = {store.pseudonyms.of(str(d["subject_id"])): str(d["subject_id"])
              for d in later_docs}
    victim = min(e.subject_id for e in before if e.subject_id in raw_of)
    forgot = lepton("forget", raw_of[victim]).stdout  # the operator names the subject
    assert f"destroyed: data key {store.data_key_id(victim)} destroyed in Redis" in forgot
    assert "not reached: events.raw" in forgot
    later = send(settings, later_docs, 2 * BATCH)

    store = KeyStore(settings)
    for envelope in before + after:
        assert decrypts(store, envelope) is (envelope.subject_id != victim)
    victims_later = [e for e in later if e.subject_id == victim]
    assert victims_later
    for envelope in later:
        if envelope.subject_id == victim:
            assert not {"email", "name", "card_number"} & set(envelope.payload)
            assert {c.field for c in envelope.changes if c.action == "dropped"} == {
                "email", "name", "card_number"}
        else:
            assert decrypts(store, envelope)
    assert store.data_keys([victim], create=False)[0] == {}

    status = lepton("keys", "status").stdout
    assert f"* {new_key}" in status
    assert first_key in status
    decisions = [decode(Decision, r.value) for r in
                 read_topic(settings, Topics(settings.topic_prefix).audit_requests, expect=2)]
    by_kind = {d.kind: d for d in decisions}
    assert by_kind["key_rotated"].detail["master_key_id"] == new_key
    assert by_kind["key_rotated"].detail["previous_master_key_id"] == first_key
    assert by_kind["subject_forgotten"].subject_id == victim
    assert by_kind["subject_forgotten"].detail == {
        "data_key_destroyed": True, "redis_persistence": "none", "models_marked": 0,
        "federated_releases": []}
