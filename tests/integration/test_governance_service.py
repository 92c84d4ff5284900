"""The governance service against the embedded broker and real Redis: policy, local-mode DP
and per-event budget ledger, model-mode release un-noised with the per-release contribution
bound, a trainer's release charge, audit log, lineage and traces end to end (service run in a
thread); a checkpoint signed before a stop is sent by the next process."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from lepton.generators import transactions
from services.governance.charge_log import ChargeLog
from services.governance.config import GovernanceSettings
from services.governance.ledger import Ledger
from services.governance.releases import ReleaseLedger
from services.governance.service import GovernanceService
from services.governance.store import AuditStore
from services.governance.verify import verify_store
from shared.accounting import ORDERS, epsilon_from_rdp
from shared.config import LeptonSettings
from shared.decisions import publish_decision
from shared.dlq import SEALED_HEADER
from shared.events import CONTENT_TYPE_JSON, Change, Decision, Envelope, Header, encode
from shared.kafka import make_producer
from shared.principals import Principal
from shared.pseudonym import is_pseudonym, load_pseudonymizer
from shared.releases import RELEASE_CHARGE, read_verdict
from shared.signing import load_or_create_private_key, load_public_key, public_path
from shared.state import forgotten_key, rkey
from shared.topics import Topics
from shared.tracing import publish_span
from tests.helpers import open_dead_letter, read_topic
from tests.helpers import release_charge as charge_for

TINY_SPEC = """
name: tiny
fields:
  - {name: id, type: string, role: id}
  - {name: who, type: string, role: subject}
  - {name: amount, type: float, role: feature, clip_min: 0, clip_max: 10}
  - {name: label, type: bool, role: label}
privacy: {mode: local, mechanism: laplace, epsilon_per_event: 1.0, subject_budget: 2.5,
          dataset_budget: 1000.0}
"""
# a model-mode dataset with no events, for release charges (charging a release of
# `transactions` would reset its contribution bound in the middle of a test's events)
CENTRAL_SPEC = """
name: central
fields:
  - {name: id, type: string, role: id}
  - {name: who, type: string, role: subject}
  - {name: amount, type: float, role: feature, clip_min: 0, clip_max: 10}
  - {name: label, type: bool, role: label}
privacy: {mode: model, max_events_per_subject: 1, epsilon_per_release: 1.0, delta: 1e-5,
          subject_budget: 10.0, dataset_budget: 1000.0}
"""
RELEASE_DELTA = 1e-5
# the RDP curve of one Gaussian mechanism with σ = 1.2 (α / 2σ²): a valid release's curve
RELEASE_CURVE = [a / (2 * 1.2**2) for a in ORDERS]
RELEASE_EPSILON = epsilon_from_rdp(RELEASE_CURVE, RELEASE_DELTA)


def release_charge(client: redis.Redis, settings: LeptonSettings, release: str,
                   subjects: list[str], epsilon: float = RELEASE_EPSILON) -> Decision:
    """A release charge on `central` with this module's curve (σ = 1.2, one step)."""
    return charge_for(client, settings, release, subjects, epsilon=epsilon,
                      delta=RELEASE_DELTA, curve=RELEASE_CURVE)


def ingest_like(event: Envelope) -> Envelope:
    """An envelope shaped like ingest's output: PII tokenized/encrypted, changes listed."""
    payload = dict(event.payload)
    changes = []
    for name, action in (("card_number", "tokenized"), ("email", "encrypted"),
                         ("name", "encrypted")):
        if name in payload:
            payload[name] = f"v1:{action}:{abs(hash(payload[name])) % 10**12}"
            changes.append(Change(field=name, action=action))  # type: ignore[arg-type]
    return event.model_copy(update={"payload": payload, "changes": tuple(changes)})


def feed(settings: LeptonSettings, events: list[Envelope], tracer: Any = None,
         raw: list[bytes] = ()) -> None:  # type: ignore[assignment]
    """Produce envelopes (and raw junk) to events.clean as ingest would."""
    topic = Topics(settings.topic_prefix).clean
    producer = make_producer(settings)
    for event in events:
        headers = [(Header.CONTENT_TYPE, CONTENT_TYPE_JSON)]
        if tracer is not None:
            with publish_span(tracer, topic, headers, key=event.subject_id):
                producer.produce(topic, key=event.subject_id.encode(), value=encode(event),
                                 headers=headers)
        else:
            producer.produce(topic, key=event.subject_id.encode(), value=encode(event),
                             headers=headers)
        producer.poll(0)
    for value in raw:
        producer.produce(topic, key=b"junk", value=value)
    assert producer.flush(30) == 0


@pytest.fixture
def specs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "specs"
    path.mkdir()
    (path / "tiny.yaml").write_text(TINY_SPEC)
    (path / "central.yaml").write_text(CENTRAL_SPEC)
    monkeypatch.setenv("LEPTON_GOVERNANCE_SPECS_DIR", str(path))
    monkeypatch.setenv("LEPTON_GOVERNANCE_CHECKPOINT_EVERY", "50")
    monkeypatch.setenv("LEPTON_GOVERNANCE_FSYNC", "false")
    return path


class Running:
    """The service in a background thread."""

    def __init__(self, settings: GovernanceSettings, tracer: Any) -> None:
        self.stop = threading.Event()
        self.service = GovernanceService(settings, self.stop, tracer)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.service.run()
        except BaseException as error:
            self.error = error

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error


@pytest.fixture
def traced() -> Iterator[tuple[Any, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider.get_tracer("test"), exporter
    provider.shutdown()


def _tiny(i: int, who: str) -> Envelope:
    return Envelope.model_validate({
        "event_id": f"tiny-{i}", "dataset": "tiny", "subject_id": who,
        "occurred_at": "2026-01-01T00:00:00Z", "payload": {
            "id": f"tiny-{i}", "who": who, "amount": 50.0 if i == 0 else 5.0, "label": True}})


def _records(settings: LeptonSettings) -> list[dict[str, Any]]:
    out = []
    for part in sorted((settings.data_dir / "governance" / "audit").glob("p*")):
        for seg in sorted((part / "segments").glob("*.seg")):
            out += [orjson.loads(line) for line in seg.read_bytes().splitlines()]
    return out


def test_policy_budget_dp_audit_lineage_and_traces(
        lepton_env: LeptonSettings, specs: Path, redis_client: redis.Redis,
        traced: tuple[Any, InMemorySpanExporter]) -> None:
    tracer, exporter = traced
    topics = Topics(lepton_env.topic_prefix)
    pseudonyms = load_pseudonymizer(lepton_env)
    redis_client.sadd(forgotten_key(lepton_env), pseudonyms.of("gone"))
    redis_client.sadd(rkey(lepton_env, "policy", "consent", "tiny"), pseudonyms.of("optout"))
    # "ann" has budget for two events (2.5 / 1.0), "gone" is forgotten, "optout" withdrew
    tiny = [_tiny(i, who) for i, who in enumerate(["ann"] * 4 + ["gone", "optout", "bob"])]
    tx = [ingest_like(e) for e in transactions(40, seed=3, customers=40)]
    # transactions is in model mode, one event per customer and release: later ones withheld
    first: dict[str, str] = {}
    for event in tx:
        first.setdefault(event.subject_id, event.event_id)
    over_bound = {e.event_id for e in tx} - set(first.values())
    assert over_bound  # the seed gives some customers several transactions
    unknown = _tiny(99, "ann").model_copy(update={"dataset": "nosuch", "event_id": "nosuch-1"})
    feed(lepton_env, [*tiny, *tx, unknown, tiny[1]], tracer, raw=[b"{not json"])
    producer = make_producer(lepton_env)
    contributors = [pseudonyms.of("ann"), pseudonyms.of("bob")]
    charge = release_charge(redis_client, lepton_env, "rel-1", contributors)
    trainer, operator = (Principal.load(lepton_env, "trainer"),
                         Principal.load(lepton_env, "operator"))
    for decision, signer in ((charge, trainer), (charge, trainer), (Decision(
            kind="subject_forgotten", actor="cli:test", subject_id="gone"), operator)):
        publish_decision(producer, lepton_env, decision, signer=signer)
    producer.produce(topics.audit_requests, value=b'{"kind": 7}')
    producer.flush(10)

    settings = GovernanceSettings()
    running = Running(settings, tracer)
    try:
        governed = read_topic(lepton_env, topics.governed, expect=3 + len(first), timeout=60)
        rejected = read_topic(lepton_env, topics.rejected, expect=3, timeout=30)
    finally:
        running.close()

    envelopes = [Envelope.model_validate_json(r.value) for r in governed]
    ids = Counter(e.event_id for e in envelopes)
    assert set(ids) == {"tiny-0", "tiny-1", "tiny-6"} | set(first.values())
    assert max(ids.values()) == 1
    records = _records(lepton_env)
    by_identity = {r["identity"]: r for r in records}
    assert len(by_identity) == len(records)
    withheld = {r["event_id"]: r["reason"] for r in records if r["kind"] == "event_withheld"}
    assert withheld == {"tiny-2": "subject_budget_exhausted",
                        "tiny-3": "subject_budget_exhausted", "tiny-4": "subject_forgotten",
                        "tiny-5": "consent_withdrawn", "tiny-1": "duplicate_event",
                        **{e: "contribution_bound_reached" for e in over_bound}}
    assert sorted(r["reason"] for r in records if r["kind"] in (
        "event_rejected", "decision_rejected")) == ["bad_envelope", "invalid_decision",
                                                    "unknown_dataset"]
    assert sorted(r.headers[Header.DLQ_REASON] for r in rejected) == [
        b"bad_envelope", b"decision_rejected", b"unknown_dataset"]
    [bad_decision] = [r for r in rejected if r.headers[Header.DLQ_REASON] == b"decision_rejected"]
    assert bad_decision.headers[Header.DLQ_DETAIL].startswith(b"invalid_decision: kind")
    # subjects are named by pseudonym only (the raw ids came on events.clean and audit.requests)
    assert {r["subject_id"] for r in records} - {None} == {
        pseudonyms.of(who) for who in ("ann", "gone", "optout", "bob")} | {
        pseudonyms.of(e.subject_id) for e in tx}
    assert all(is_pseudonym(e.subject_id) for e in envelopes)
    assert all(is_pseudonym(r.key.decode()) for r in governed if r.key)
    for record in rejected:  # sealed under the DLQ key, readable again by the operator only
        assert record.headers[SEALED_HEADER] == b"dlq"
        assert b"{not json" not in record.value and b'"kind": 7' not in record.value
        opened = open_dead_letter(lepton_env, record.value)
        assert opened in (b"{not json", b'{"kind": 7}') or b"nosuch-1" in opened

    # lineage: each governed event names the leaf that records its release
    by_leaf = {(r["partition"], r["leaf_index"]): r for r in records}
    sent = {e.event_id: e for e in tx}
    for env in envelopes:
        assert env.audit is not None and env.privacy is not None
        leaf = by_leaf[(env.audit.partition, env.audit.leaf_index)]
        assert (leaf["event_id"], leaf["kind"]) == (env.event_id, "event_released")
        if env.dataset == "tiny":
            assert env.privacy.mode == "local" and env.privacy.epsilon is not None
            assert leaf["epsilon"] == pytest.approx(env.privacy.epsilon)
            assert env.privacy.mechanism == "laplace" and 0.99 < env.privacy.epsilon <= 1.0
            assert any(c.action == "noised" for c in env.changes)
            assert any(c.field == "label" and c.action == "randomized" for c in env.changes)
            assert "who" not in env.payload  # not protectable: not released in local mode
        else:
            # model mode: the record is not noised and carries no per-event ε
            assert (env.privacy.mode, env.privacy.epsilon) == ("model", None)
            assert env.payload == sent[env.event_id].payload
            assert not any(c.action in ("noised", "randomized") for c in env.changes)
            assert leaf["epsilon"] is None and leaf["detail"]["privacy_mode"] == "model"
    tiny0 = next(e for e in envelopes if e.event_id == "tiny-0")
    assert tiny0.payload["amount"] != 50.0
    assert any(c.field == "amount" and c.action == "clipped" for c in tiny0.changes)

    # per-event ledger: the released events' charges only, equal to the audited ε
    ledger = Ledger(redis_client, settings, None)
    released = [r for r in records if r["kind"] == "event_released" and r["dataset"] == "tiny"]
    expected = sum(r["epsilon"] for r in released)
    assert ledger.spend("tiny").epsilon == pytest.approx(expected)
    assert ledger.spend("tiny").charges == 3
    on_disk = ChargeLog(settings.ledger_dir()).read()
    assert sum(c["eps"] for c in on_disk if c["dataset"] == "tiny") == pytest.approx(expected)
    assert ledger.spend("central").charges == 0
    # release ledger: the trainer's release charge (published twice) charged once to each
    # contributor, equal to the audited ε
    rc = [r for r in records if r["kind"] == RELEASE_CHARGE]
    assert len(rc) == 1 and rc[0]["decision_id"] == "rel-1" and rc[0]["reason"] is None
    assert rc[0]["epsilon"] == pytest.approx(RELEASE_EPSILON, rel=1e-9)
    verdict = read_verdict(redis_client, lepton_env, "central", "rel-1")
    assert verdict is not None and verdict["status"] == "charged"
    releases = ReleaseLedger(redis_client, lepton_env)
    assert releases.epoch("central") == 1
    assert releases.subject_epsilons("central", RELEASE_DELTA) == pytest.approx(
        dict.fromkeys(contributors, rc[0]["epsilon"]), rel=1e-9)
    release_log = [orjson.loads(line) for seg in sorted(
        (settings.ledger_dir() / "releases" / "segments").glob("*.seg"))
        for line in seg.read_bytes().splitlines()]
    assert [line["id"] for line in release_log] == ["rel-1"]
    assert {r["kind"] for r in records} >= {"subject_forgotten", RELEASE_CHARGE}
    assert (rc[0]["principal"], rc[0]["key_id"]) == ("trainer", trainer.key_id)
    [forgot] = [r for r in records if r["kind"] == "subject_forgotten"]
    assert (forgot["principal"], forgot["key_id"]) == ("operator", operator.key_id)

    # the store verifies against its signed checkpoints
    public = load_public_key(public_path(settings.audit_key_path()))
    assert all(r.ok for r in verify_store(settings.audit_dir(), public, topics.audit_log))
    audit_topic = read_topic(lepton_env, topics.audit_log, idle=1.5)
    kinds = Counter(r.headers["lepton.audit.type"] for r in audit_topic)
    assert kinds[b"record"] == len(records)
    assert kinds[b"checkpoint"] >= 1

    # traces: each governed record continues its producer's trace via a process span
    spans = exporter.get_finished_spans()
    published = {s.context.trace_id: s for s in spans if s.name == f"send {topics.clean}"}
    processed = [s for s in spans if s.name == f"process {topics.clean}"]
    assert len(processed) >= len(tiny) + len(tx)
    for span in processed:
        if span.context.trace_id in published:
            assert span.parent is not None
            assert span.parent.span_id == published[span.context.trace_id].context.span_id
    for record in governed:
        trace_id = int(record.headers["traceparent"].split(b"-")[1], 16)
        assert trace_id in published


def test_dp_disabled_releases_features_unchanged_and_charges_nothing(
        lepton_env: LeptonSettings, specs: Path, redis_client: redis.Redis,
        monkeypatch: pytest.MonkeyPatch, traced: tuple[Any, InMemorySpanExporter]) -> None:
    monkeypatch.setenv("LEPTON_GOVERNANCE_DP_ENABLED", "false")
    tx = [_tiny(i, f"s{i % 3}") for i in range(30)]  # a local-mode dataset
    feed(lepton_env, tx)
    settings = GovernanceSettings()
    running = Running(settings, traced[0])
    try:
        governed = read_topic(lepton_env, Topics(lepton_env.topic_prefix).governed, expect=30,
                              timeout=60)
    finally:
        running.close()
    sent = {e.event_id: e for e in tx}
    assert len(governed) == 30
    for record in governed:
        env = Envelope.model_validate_json(record.value)
        assert env.payload == sent[env.event_id].payload
        assert env.privacy is not None
        assert (env.privacy.mechanism, env.privacy.epsilon) == ("none", None)
    released = [r for r in _records(lepton_env) if r["kind"] == "event_released"]
    assert len(released) == 30
    assert all(r["dp_enabled"] is False and r["epsilon"] == 0.0 for r in released)
    assert all("disabled" in r["detail"]["note"] for r in released)
    assert Ledger(redis_client, settings, None).spend("tiny").charges == 0


def test_a_checkpoint_signed_before_a_stop_reaches_audit_log_after_a_restart(
        lepton_env: LeptonSettings, specs: Path, traced: tuple[Any, InMemorySpanExporter]
) -> None:
    """A predecessor signed a checkpoint into the store and stopped before the transaction
    carrying it committed (made here with the store alone): the next process sends it."""
    settings = GovernanceSettings()
    topics = Topics(settings.topic_prefix)
    store = AuditStore(settings.audit_dir(), topics.audit_log, fsync=False)
    store.open(4)
    store.append(1, {"identity": "event:e1", "kind": "event_released", "actor": "governance",
                     "event_id": "e1", "source": f"{topics.clean}/1/0"})
    signed = store.checkpoint(1, load_or_create_private_key(settings.audit_key_path()))
    store.close()
    running = Running(settings, traced[0])
    try:
        sent = read_topic(lepton_env, topics.audit_log, expect=1, timeout=30)
    finally:
        running.close()
    assert [(r.partition, r.headers["lepton.audit.type"], orjson.loads(r.value)) for r in sent] \
        == [(1, b"checkpoint", signed.model_dump())]
