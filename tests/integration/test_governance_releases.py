"""Model-mode release charges through the governance service (embedded broker, real Redis,
service in a thread): the contribution bound per release, a release charged once to every
contributing subject even when its decision is replayed, budget exhaustion excluding the
subject from the next release (withheld `subject_budget_exhausted`), a refused release audited
with its verdict, and the on-disk release log matching Redis."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from opacus.accountants.analysis.rdp import compute_rdp

from services.governance.config import GovernanceSettings
from services.governance.releases import ReleaseLedger
from services.governance.report import report
from shared.accounting import ORDERS, compose, epsilon_from_rdp
from shared.config import LeptonSettings
from shared.decisions import publish_decision
from shared.events import Decision, Envelope
from shared.kafka import make_producer
from shared.principals import Principal
from shared.pseudonym import load_pseudonymizer
from shared.releases import RELEASE_CHARGE, read_verdict, store_subjects
from shared.topics import Topics
from tests.helpers import read_topic, release_charge
from tests.integration.test_governance_service import Running, _records, feed

DELTA = 1e-5
CURVE = [float(v) for v in compute_rdp(q=0.1, noise_multiplier=1.2, steps=100,
                                       orders=list(ORDERS))]
ONE = epsilon_from_rdp(CURVE, DELTA)
TWO = epsilon_from_rdp(compose(CURVE, CURVE), DELTA)
# room for two releases per subject, not three
BUDGET = (TWO + epsilon_from_rdp(compose(CURVE, CURVE, CURVE), DELTA)) / 2

SPEC = f"""
name: central
fields:
  - {{name: id, type: string, role: id}}
  - {{name: who, type: string, role: subject}}
  - {{name: amount, type: float, role: feature, clip_min: 0, clip_max: 10}}
  - {{name: label, type: bool, role: label}}
privacy: {{mode: model, max_events_per_subject: 1, epsilon_per_release: 1.0, delta: {DELTA},
          subject_budget: {BUDGET}, dataset_budget: 1000.0}}
"""


@pytest.fixture
def specs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "specs"
    path.mkdir()
    (path / "central.yaml").write_text(SPEC)
    monkeypatch.setenv("LEPTON_GOVERNANCE_SPECS_DIR", str(path))
    monkeypatch.setenv("LEPTON_GOVERNANCE_FSYNC", "false")
    return path


def _event(i: int, who: str) -> Envelope:
    return Envelope.model_validate({
        "event_id": f"c-{i}", "dataset": "central", "subject_id": who,
        "occurred_at": "2026-01-01T00:00:00Z",
        "payload": {"id": f"c-{i}", "who": who, "amount": 5.0, "label": i % 2 == 0}})


def _charge(client: redis.Redis, settings: LeptonSettings, release: str,
            subjects: list[str]) -> Decision:
    """A release charge of ε = ONE (q = 0.1, 100 steps) as the trainer sends it."""
    return release_charge(client, settings, release, subjects, epsilon=ONE, delta=DELTA,
                          curve=CURVE, sample_rate=0.1, steps=100)


def _wait(client: redis.Redis, settings: LeptonSettings, release: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while (verdict := read_verdict(client, settings, "central", release)) is None:
        assert time.monotonic() < deadline, f"no verdict for {release}"
        time.sleep(0.05)
    return verdict


def test_release_charges_bound_replay_exhaustion_and_refusal(
        lepton_env: LeptonSettings, specs: Path, redis_client: redis.Redis) -> None:
    topics = Topics(lepton_env.topic_prefix)
    producer = make_producer(lepton_env)
    trainer = Principal.load(lepton_env, "trainer")
    settings = GovernanceSettings()

    pseudonym = load_pseudonymizer(lepton_env).of  # governance keys subjects by pseudonym

    def publish(release: str, subjects: list[str]) -> None:
        decision = _charge(redis_client, lepton_env, release, [pseudonym(s) for s in subjects])
        publish_decision(producer, lepton_env, decision, signer=trainer)

    running = Running(settings, None)
    try:
        # epoch 0: one event per subject per release; the second of ann's is withheld
        feed(lepton_env, [_event(0, "ann"), _event(1, "ann"), _event(2, "bob")])
        assert len(read_topic(lepton_env, topics.governed, expect=2, timeout=60)) == 2
        for _ in range(2):  # the same release published twice is charged once
            publish("rel-1", ["ann", "bob"])
        first = _wait(redis_client, lepton_env, "rel-1")
        # epoch 1: ann may contribute again
        feed(lepton_env, [_event(3, "ann"), _event(4, "bob")])
        assert len(read_topic(lepton_env, topics.governed, expect=4, timeout=60)) == 4
        publish("rel-2", ["ann"])
        second = _wait(redis_client, lepton_env, "rel-2")
        # ann's budget fits no third release: her events are withheld, bob's are not
        feed(lepton_env, [_event(5, "ann"), _event(6, "bob")])
        assert len(read_topic(lepton_env, topics.governed, expect=5, timeout=60)) == 5
        # a release that would overspend ann is refused whole (bob is not charged either)
        publish("rel-3", ["ann", "bob"])
        # a charge whose stored subjects do not match its signed digest is refused, audited
        decision = _charge(redis_client, lepton_env, "rel-4", [pseudonym("bob")])
        store_subjects(redis_client, lepton_env, "central", "rel-4", [pseudonym("carol")])
        publish_decision(producer, lepton_env, decision, signer=trainer)
        fourth = _wait(redis_client, lepton_env, "rel-4")
        third = _wait(redis_client, lepton_env, "rel-3")
        deadline = time.monotonic() + 30
        while not any(r.get("decision_id") == "rel-4" for r in _records(lepton_env)):
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        running.close()

    assert first["status"] == "charged" and first["epsilon"] == pytest.approx(ONE, rel=1e-9)
    assert second["status"] == "charged"
    assert second["max_subject_epsilon"] == pytest.approx(TWO, rel=1e-9)
    assert third["status"] == "refused" and third["reason"] == "subject_budget_exhausted"
    assert fourth["status"] == "refused" and fourth["reason"] == "invalid_charge"
    records = _records(lepton_env)
    withheld = {r["event_id"]: r["reason"] for r in records if r["kind"] == "event_withheld"}
    assert withheld == {"c-1": "contribution_bound_reached", "c-5": "subject_budget_exhausted"}
    charges = [r for r in records if r["kind"] == RELEASE_CHARGE]
    assert sorted(r["decision_id"] for r in charges) == ["rel-1", "rel-2", "rel-3", "rel-4"]
    by_id = {r["decision_id"]: r for r in charges}
    assert by_id["rel-3"]["reason"] == "subject_budget_exhausted"
    assert by_id["rel-1"]["reason"] is None
    assert by_id["rel-4"]["reason"] == "invalid_charge"
    assert "digest" in by_id["rel-4"]["detail"]["error"]
    assert by_id["rel-1"]["detail"]["subjects_count"] == 2
    assert by_id["rel-1"]["principal"] == "trainer"
    assert "subjects" not in by_id["rel-1"]["detail"]  # ids stay out of the audit leaf
    ledger = ReleaseLedger(redis_client, lepton_env)
    spent = ledger.subject_epsilons("central", DELTA)
    assert spent == pytest.approx({pseudonym("ann"): TWO, pseudonym("bob"): ONE}, rel=1e-9)
    assert max(spent.values()) < 2 * ONE  # composed with RDP, not summed
    # the report counts as exhausted exactly the subjects the next release withholds (ann)
    entry = report(redis_client, settings, "central")["datasets"][0]
    assert (entry["exhausted"], entry["subjects"]) == (1, 2)
    # what the dashboard plots per dataset (lepton.governance.subject_epsilon_max): the largest
    # subject's ε, from the charged verdicts (the refused rel-3 charged nobody)
    assert ledger.max_subject_epsilon("central") == pytest.approx(max(spent.values()), rel=1e-9)
    assert ledger.max_subject_epsilon("absent") is None
    assert ledger.epoch("central") == 2
    lines = [orjson.loads(line) for seg in sorted(
        (settings.ledger_dir() / "releases" / "segments").glob("*.seg"))
        for line in seg.read_bytes().splitlines()]
    assert [line["id"] for line in lines] == ["rel-1", "rel-2"]
