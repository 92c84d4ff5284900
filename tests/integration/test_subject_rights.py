"""Data subjects' rights end to end, on the real broker, real files and a PRIVATE redis-server
with AOF on (the shared Redis is never flushed): ingest and governance run while a subject is
forgotten and another withdraws consent; Redis is wiped (FLUSHALL) mid-stream and the services
restart, and a serving instance started after the wipe answers with the live version; then
every byte of events.clean/governed/rejected, the Redis AOF/RDB, the data and registry
directories and the services' logs is scanned for the forgotten subject's PII and raw id (0
hits), and none of its ciphertexts opens with any key the platform still holds. Tokens: the
same PAN of two subjects never matches, and the forgotten one's cannot be reproduced. The same
scan with a real trainer and serving: test_forget_trained_and_served."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import torch

from services.governance.config import GovernanceSettings
from services.governance.service import GovernanceService
from services.governance.verify import find_subject
from services.ingest.ciphers import is_ciphertext
from services.ingest.config import IngestSettings
from services.ingest.keystore import KeyStore
from services.ingest.worker import IngestWorker
from shared.config import LeptonSettings
from shared.crypto import CryptoError
from shared.datasets import load_spec
from shared.dlq import DeadLetterOpener
from shared.events import Envelope
from shared.kafka import make_producer
from shared.models.nets import architecture, build_model
from shared.models.registry import ModelCard, Registry
from shared.state import rkey
from shared.topics import Topics
from tests.helpers import PrivateRedisServer, TopicCollector, lepton, local_mode_specs
from tests.unit.ingest.samples import valid_docs
from tests.unit.serving.support import (
    NON_PRIVATE,
    call_predict,
    fitted_transform,
    running,
    serving_settings,
    stub,
)

PAN = "4111111111111111"


class Services:
    """Ingest and governance on threads (restartable)."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        ingest = IngestWorker(IngestSettings(), self.stop)
        self.governance = GovernanceService(GovernanceSettings(), self.stop)
        self.threads = [threading.Thread(target=ingest.run, daemon=True),
                        threading.Thread(target=self.governance.run, daemon=True)]
        for thread in self.threads:
            thread.start()

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)
            assert not thread.is_alive()


@pytest.fixture
def aof_redis(tmp_path: Path, lepton_env: LeptonSettings, monkeypatch: pytest.MonkeyPatch
              ) -> Iterator[PrivateRedisServer]:
    (tmp_path / "redis").mkdir()
    server = PrivateRedisServer(str(tmp_path / "redis")).start()
    monkeypatch.setenv("LEPTON_REDIS_URL", server.url)
    monkeypatch.setenv("LEPTON_REGISTRY_DIR", str(tmp_path / "registry"))
    monkeypatch.setenv("LEPTON_INGEST_INSTANCE", "rights")
    monkeypatch.setenv("LEPTON_GOVERNANCE_CHECKPOINT_SECONDS", "1")
    monkeypatch.setenv("LEPTON_GOVERNANCE_FSYNC", "false")
    yield server
    server.stop()


def _produce(settings: LeptonSettings, docs: list[dict[str, Any]]) -> None:
    producer = make_producer(settings)
    for doc in docs:
        producer.produce(Topics(settings.topic_prefix).raw, value=orjson.dumps(doc))
    assert producer.flush(30) == 0


def _wait(what: str, check: Any, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _model(settings: LeptonSettings, name: str, lineage: dict[str, Any],
           parent: int | None = None) -> ModelCard:
    transform = fitted_transform()
    arch = architecture("logistic", transform.dim)
    torch.manual_seed(1)
    card = ModelCard(model=name, dataset="transactions",
                     spec_hash=load_spec("transactions").spec_hash(), architecture=arch,
                     feature_transform=transform.to_dict(), lineage=lineage,
                     parent_version=parent, status="promoted", privacy=NON_PRIVATE)
    return Registry(settings).save(card, build_model(arch).state_dict())


def test_forget_consent_and_a_redis_wipe_leave_no_readable_copy(
        aof_redis: PrivateRedisServer, lepton_env: LeptonSettings, tmp_path: Path,
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.DEBUG)
    # several events per subject all governed: transactions in local mode (no per-release bound)
    monkeypatch.setenv("LEPTON_GOVERNANCE_SPECS_DIR", str(local_mode_specs()))
    settings = GovernanceSettings()
    topics = Topics(settings.topic_prefix)
    store = KeyStore(settings)
    docs = valid_docs(400, seed=5)
    by_subject: dict[str, list[dict[str, Any]]] = {}
    for doc in docs:
        by_subject.setdefault(str(doc["subject_id"]), []).append(doc)
    victim, other, withdrawer = sorted(by_subject, key=lambda s: -len(by_subject[s]))[:3]
    for doc in by_subject[victim] + by_subject[other]:
        doc["payload"]["card_number"] = PAN  # one PAN, two subjects
    bad = json.loads(json.dumps(by_subject[victim][0]))
    bad["event_id"], bad["payload"]["hour"] = "victim-bad-1", 24
    secrets = {str(v).encode() for d in by_subject[victim]
               for k, v in d["payload"].items() if k in ("email", "name")}
    secrets |= {PAN.encode(), victim.encode()}
    pv, po, pw = (store.pseudonyms.of(s) for s in (victim, other, withdrawer))

    collector = TopicCollector(lepton_env, [topics.clean, topics.governed, topics.rejected])
    services = Services()
    try:
        _produce(settings, [*docs, bad])
        _wait("first batch governed", lambda: collector.count(topics.governed) >= len(docs))
        clean = [Envelope.model_validate_json(r.value)
                 for r in collector.wait_for(topics.clean, len(docs), 5)]
        # tokens: the same PAN of two subjects never matches
        tokens = {e.subject_id: e.payload["card_number"] for e in clean if e.subject_id in (pv, po)}
        assert tokens[pv] != tokens[po]
        assert all(PAN not in str(t) for t in tokens.values())
        # a model trained on the first batch (lineage covers the victim's released leaves)
        leaves = [(p, i) for p, i, r in find_subject(settings.audit_dir(), pv)
                  if r["kind"] == "event_released"]
        assert leaves
        part = leaves[0][0]
        trained = _model(settings, "fraud", {"audit_leaves": {str(part): [0, 10_000]}})
        child = _model(settings, "fraud", {"audit_leaves": {}}, parent=trained.version)
        Registry(settings).set_live("fraud", child.version)
        unrelated = _model(settings, "other", {"audit_leaves": {str(part + 100): [0, 1]}})

        lepton("consent", withdrawer, "--dataset", "transactions", "--withdraw")
        out = lepton("forget", victim).stdout
        assert f"model fraud v{trained.version}: trained on" in out
        assert f"model fraud v{child.version}: warm-started from v{trained.version}" in out
        assert "model other" not in out
        assert "destroyed: Redis AOF rewritten (BGREWRITEAOF)" in out
        _wait("forget and consent sealed", lambda: {"subject_forgotten", "consent_changed"} <= {
            r["kind"] for _, _, r in find_subject(settings.audit_dir(), pv)
            + find_subject(settings.audit_dir(), pw)})

        # the wipe, mid-stream: new events are in flight while Redis loses everything
        later = valid_docs(400, seed=6)
        for i, doc in enumerate(later[:30]):
            who = (victim, withdrawer, other)[i % 3]
            doc["subject_id"] = doc["payload"]["customer_id"] = who
        _produce(settings, later[:200])
        redis.Redis.from_url(aof_redis.url).flushall()
        _produce(settings, later[200:300])
    finally:
        services.close()
    services = Services()  # restart after the wipe
    try:
        # a serving instance started after the wipe (nothing has read the live pointer back into
        # Redis yet) answers with the live version; that a replayed announcement is refused
        # after a wipe is test_serving_announcements' test_a_replay_is_refused_after_redis_...
        assert not redis.Redis.from_url(aof_redis.url).exists(
            rkey(settings, "models", "fraud", "live"))
        with running(serving_settings(serving_models="fraud")) as server:
            channel, service = stub(server.addr)
            reply = call_predict(service, _request(later[-1]), token=None)
            assert reply.version == child.version
            channel.close()
        _produce(settings, later[300:])
        _wait("second batch decided", lambda: collector.count(topics.clean) >= len(docs) + 400)
        _wait("all governed", lambda: len(_decided(settings, later)) == 400, 120)
    finally:
        services.close()
        collector.stop()

    decided = _decided(settings, later)
    for doc in later[:30]:
        who, outcome = doc["subject_id"], decided[str(doc["event_id"])]
        expected = {victim: ("event_withheld", "subject_forgotten"),
                    withdrawer: ("event_withheld", "consent_withdrawn"),
                    other: ("event_released", None)}[who]
        assert outcome == expected, (who, outcome)
    assert Registry(LeptonSettings()).live("fraud") == child.version  # pointer restored
    registry = Registry(LeptonSettings())
    assert registry.flags("fraud", trained.version)["contains_forgotten"] is True
    assert registry.flags("fraud", child.version)["contains_forgotten"] is True
    assert registry.flags("other", unrelated.version) == {}

    # earlier ciphertexts still decrypt for the others (their keys came back from disk)
    fresh = KeyStore(LeptonSettings())
    others = [e for e in clean if e.subject_id not in (pv,)]
    assert all(fresh.decrypt_field(e.event_id, "email", str(e.payload["email"]))
               for e in others[:50])
    keys, failures = fresh.data_keys([victim, other], create=False)
    assert failures == {victim: "forgotten"} and other in keys
    assert keys[other].tokenize("card_number", PAN) == tokens[po]

    # the scan: no clear copy, no decryptable copy
    records = [r for t in (topics.clean, topics.governed, topics.rejected)
               for r in collector.records[t]]
    blob = b"\n".join(r.value + (r.key or b"") + b"".join(r.headers.values()) for r in records)
    files = [p for root in (settings.data_dir, tmp_path / "registry", Path(aof_redis.directory))
             for p in root.rglob("*") if p.is_file()]
    blob += b"".join(p.read_bytes() for p in files)
    blob += "\n".join(r.getMessage() for r in caplog.records).encode()
    assert [s for s in secrets if s in blob] == []
    opener = DeadLetterOpener.load(settings, fresh.open_bytes)  # every key the operator holds
    victim_records = [r for r in records if r.key == pv.encode()]
    assert any(r.topic == topics.rejected for r in victim_records)
    for record in victim_records:
        if record.topic == topics.rejected:
            with pytest.raises(CryptoError):
                opener.open(record.value)
            continue
        env = Envelope.model_validate_json(record.value)
        for name, value in env.payload.items():
            if is_ciphertext(value):
                with pytest.raises(CryptoError):
                    fresh.decrypt_field(env.event_id, name, str(value))


def _request(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc["payload"].items() if k != "is_fraud"}


def _decided(settings: GovernanceSettings, docs: list[dict[str, Any]]
             ) -> dict[str, tuple[str, str | None]]:
    wanted = {str(d["event_id"]) for d in docs}
    out: dict[str, tuple[str, str | None]] = {}
    for part in sorted(settings.audit_dir().glob("p*")):
        for seg in sorted((part / "segments").glob("*.seg")):
            for line in seg.read_bytes().splitlines():
                record = orjson.loads(line)
                if record.get("event_id") in wanted and record["identity"].startswith("event:"):
                    out[record["event_id"]] = (record["kind"], record["reason"])
    return out
