"""Governance against hostile `audit.requests` records on the embedded broker and real Redis:
the poison decision and 1,000 fuzzed ones are refused to the DLQ and committed past, events keep
flowing, the ledgers are untouched and the audit log verifies; forged release charges
(unsigned, wrong key, kind not allowed, ε = 1e300, tampered) and the removed `dp_sgd_charge`
kind are never sealed nor charged (service run in a thread)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import orjson
import pytest
import redis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lepton.generators import transactions
from services.governance.admission import CODES, EPSILON_OVER_MAX, INVALID, UNSIGNED
from services.governance.config import GovernanceSettings
from services.governance.ledger import Ledger
from services.governance.releases import ReleaseLedger
from services.governance.verify import verify_store
from shared.config import LeptonSettings
from shared.events import Decision, Header, encode
from shared.kafka import make_producer
from shared.principals import Principal, sign_decision
from shared.pseudonym import load_pseudonymizer
from shared.releases import RELEASE_CHARGE, verdicts_key
from shared.signing import key_id, load_public_key, public_path
from shared.topics import Topics
from tests.helpers import local_mode_specs, open_dead_letter, read_topic
from tests.hostile import POISON, hostile_decisions
from tests.integration.test_governance_service import (  # noqa: F401 (fixture)
    RELEASE_DELTA,
    RELEASE_EPSILON,
    Running,
    _records,
    feed,
    ingest_like,
    release_charge,
    specs,
)


def test_poison_and_fuzzed_decisions_are_refused_and_committed_past(
        lepton_env: LeptonSettings, specs: Path, redis_client: redis.Redis) -> None:  # noqa: F811
    topics = Topics(lepton_env.topic_prefix)
    hostile = hostile_decisions(1000, signer=Principal.load(lepton_env, "trainer"))
    assert hostile[0] == POISON
    # per-event ledger charges for every event: transactions in local mode
    (specs / "transactions.yaml").write_text(
        (local_mode_specs() / "transactions.yaml").read_text())
    events = [ingest_like(e) for e in transactions(200, seed=9, customers=200)]
    producer = make_producer(lepton_env)
    for i, value in enumerate(hostile):
        producer.produce(topics.audit_requests, key=f"h{i % 7}".encode(), value=value)
        if i == 500:
            feed(lepton_env, events[:100])
    assert producer.flush(30) == 0
    feed(lepton_env, events[100:])

    settings = GovernanceSettings()
    running = Running(settings, None)
    try:
        governed = read_topic(lepton_env, topics.governed, expect=200, timeout=90)
        rejected = read_topic(lepton_env, topics.rejected, expect=1000, timeout=60)
    finally:
        running.close()
    assert len(governed) == 200
    assert len(rejected) == 1000
    assert {r.headers[Header.DLQ_REASON] for r in rejected} == {b"decision_rejected"}
    codes = Counter(r.headers[Header.DLQ_DETAIL].split(b":")[0].decode() for r in rejected)
    assert set(codes) <= CODES, codes
    assert min(codes[EPSILON_OVER_MAX], codes[INVALID], codes[UNSIGNED]) > 0, codes
    assert sorted(open_dead_letter(settings, r.value) for r in rejected) == sorted(hostile)

    records = _records(lepton_env)
    kinds = Counter(r["kind"] for r in records)
    assert kinds["decision_rejected"] == 1000
    assert kinds["event_released"] == 200
    assert RELEASE_CHARGE not in kinds
    ledger = Ledger(redis_client, settings, None)
    assert ledger.spend("tiny").charges == 0
    assert ledger.spend("transactions").charges == 200
    assert not redis_client.exists(verdicts_key(lepton_env, "tiny"))
    public = load_public_key(public_path(settings.audit_key_path()))
    assert all(r.ok for r in verify_store(settings.audit_dir(), public, topics.audit_log))

    # committed past: a restart governs new events and refuses nothing again
    more = [ingest_like(e) for e in transactions(5, seed=10, customers=5)]
    feed(lepton_env, [e.model_copy(update={"event_id": f"more-{i}"})
                      for i, e in enumerate(more)])
    running = Running(settings, None)
    try:
        assert len(read_topic(lepton_env, topics.governed, expect=205, timeout=60)) == 205
    finally:
        running.close()
    assert len(read_topic(lepton_env, topics.rejected, idle=1.5)) == 1000


def _forged(settings: LeptonSettings, client: redis.Redis, subjects: list[str]
            ) -> tuple[list[tuple[bytes, str]], bytes]:
    """Forged decisions with the code each must be refused with, and one genuine release
    charge (each charge's subjects stored, so that only the refusal keeps it off the ledger)."""
    trainer = Principal.load(settings, "trainer")
    ingest = Principal.load(settings, "ingest")
    key = Ed25519PrivateKey.generate()
    stranger = Principal("trainer", key, key_id(key.public_key()))

    def charge(eps: float, ident: str) -> Decision:
        return release_charge(client, settings, ident, subjects, epsilon=eps)

    impostor = sign_decision(stranger, charge(5.0, "wrong-key")).model_copy(
        update={"key_id": trainer.key_id})
    tampered = orjson.loads(encode(sign_decision(trainer, charge(0.5, "tampered"))))
    tampered["detail"]["epsilon"] = 50.0
    forged = [
        (encode(charge(5.0, "unsigned")), "unsigned"),
        (encode(impostor), "bad_signature"),
        (encode(sign_decision(stranger, charge(5.0, "stranger"))), "unknown_key"),
        (orjson.dumps(tampered), "bad_signature"),
        (encode(sign_decision(ingest, charge(5.0, "ingest-charges"))), "kind_not_allowed"),
        (encode(sign_decision(trainer, charge(1e300, "huge"))), "epsilon_over_max"),
        # the removed legacy charge kind, validly signed by the trainer
        (encode(sign_decision(trainer, Decision(
            decision_id="legacy", kind="dp_sgd_charge", actor="trainer", dataset="tiny",
            detail={"epsilon": 2.0, "delta": 1e-5}))), "unknown_kind"),
        (encode(Decision(kind="subject_forgotten", actor="cli:root", subject_id="ann")),
         "unsigned"),
        (encode(sign_decision(ingest, Decision(kind="model_promoted", actor="trainer",
                                               dataset="tiny", detail={"version": 9}))),
         "kind_not_allowed"),
        (encode(sign_decision(trainer, Decision(
            kind="consent_changed", actor="cli:x", subject_id="ann", dataset="tiny",
            detail={"consent": "withdrawn", "purpose": "p"}))), "kind_not_allowed"),
    ]
    return forged, encode(sign_decision(trainer, charge(RELEASE_EPSILON, "genuine")))


def test_forged_decisions_are_not_sealed_and_leave_the_ledger_unchanged(
        lepton_env: LeptonSettings, specs: Path, redis_client: redis.Redis) -> None:  # noqa: F811
    topics = Topics(lepton_env.topic_prefix)
    subjects = [load_pseudonymizer(lepton_env).of(who) for who in ("ann", "bob")]
    forged, genuine = _forged(lepton_env, redis_client, subjects)
    producer = make_producer(lepton_env)
    for value, _ in forged:
        producer.produce(topics.audit_requests, key=b"forged", value=value)
    producer.produce(topics.audit_requests, key=b"forged", value=genuine)
    assert producer.flush(30) == 0

    settings = GovernanceSettings()
    running = Running(settings, None)
    try:
        rejected = read_topic(lepton_env, topics.rejected, expect=len(forged), timeout=60)
        records = read_topic(lepton_env, topics.audit_log, expect=len(forged) + 1, timeout=30)
    finally:
        running.close()
    codes = [r.headers[Header.DLQ_DETAIL].split(b":")[0].decode() for r in rejected]
    assert sorted(codes) == sorted(code for _, code in forged)
    assert {r.headers[Header.DLQ_REASON] for r in rejected} == {b"decision_rejected"}
    sealed = [r for r in _records(lepton_env) if r["kind"] != "decision_rejected"]
    assert [(r["kind"], r["decision_id"], r["reason"], r["principal"]) for r in sealed] == [
        (RELEASE_CHARGE, "genuine", None, "trainer")]
    assert sealed[0]["epsilon"] == pytest.approx(RELEASE_EPSILON, rel=1e-9)
    assert len([r for r in records if r.headers["lepton.audit.type"] == b"record"]) == len(
        forged) + 1
    # the genuine release alone was charged, once, to each subject; no forged one got a verdict
    releases = ReleaseLedger(redis_client, lepton_env)
    assert list(releases.verdicts("central")) == ["genuine"]
    assert releases.epoch("central") == 1
    assert releases.subject_epsilons("central", RELEASE_DELTA) == pytest.approx(
        dict.fromkeys(subjects, RELEASE_EPSILON), rel=1e-9)
    ledger = Ledger(redis_client, settings, None)
    assert ledger.spend("central").charges == ledger.spend("tiny").charges == 0
