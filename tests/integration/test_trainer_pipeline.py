"""Trainer integration: governed breast_cancer envelopes on the embedded broker → a promoted,
signed model whose F1 on the held-out split is reported beside scikit-learn's
LogisticRegression; lineage, trace links, decisions, announcement, DLQ; a DP-SGD release is
charged by a real governance service before it is announced (ε as Opacus's accountant gives
it, every patient charged once), and a refused charge means no announcement."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest
import torch
import yaml
from opacus.accountants import RDPAccountant
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Tracer
from safetensors.torch import load_file
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score

from services.governance.config import GovernanceSettings
from services.governance.releases import ReleaseLedger
from services.trainer.config import TrainerSettings
from services.trainer.evaluate import tune_threshold
from services.trainer.split import is_validation
from shared.config import LeptonSettings
from shared.datasets import load_spec
from shared.events import AuditRef, ModelAnnouncement, decode, encode
from shared.models.features import FeatureTransform
from shared.models.nets import build_model, predict_proba
from shared.models.registry import WEIGHTS_FILE, Registry
from shared.releases import subjects_digest
from shared.topics import Topics
from tests.helpers import lepton, open_dead_letter, read_topic
from tests.integration.test_governance_service import Running
from tests.unit.trainer.governed import (
    governed_breast_cancer,
    publish_governed,
    run_trainer,
    trainer_settings,
)


def _sklearn_f1(val_percent: int = 20) -> tuple[float, int]:
    """F1 of scikit-learn's LogisticRegression on the trainer's split of breast_cancer."""
    events = governed_breast_cancer()
    train = [e.payload for e in events if not is_validation(e.event_id, val_percent)]
    held = [e.payload for e in events if is_validation(e.event_id, val_percent)]
    ft = FeatureTransform.fit(load_spec("breast_cancer"), train)
    clf = LogisticRegression(max_iter=2000).fit(ft.transform(train), ft.labels(train))
    # the same threshold rule as the trainer (the spec's: `tune` on the held-out rows)
    labels = ft.labels(held).astype(np.float64)
    probs = clf.predict_proba(ft.transform(held))[:, 1]
    threshold = tune_threshold(probs, labels)
    return float(f1_score(labels, probs >= threshold)), len(held)


def release_beside_governance(settings: TrainerSettings, tracer: Tracer | None = None,
                              version: int = 1) -> None:
    """Run the trainer beside a real governance service (which answers its release charge)
    until it has released `version`."""
    governance = Running(GovernanceSettings(), None)
    try:
        assert run_trainer(settings, tracer) == [version]
    finally:
        governance.close()


def _decisions(settings: LeptonSettings) -> list[dict]:
    records = read_topic(settings, Topics(settings.topic_prefix).audit_requests, idle=1.0)
    return [orjson.loads(r.value) for r in records]


def test_trains_promotes_and_matches_sklearn(
        lepton_env: LeptonSettings, record_property: pytest.RecordProperty) -> None:
    topics = Topics(lepton_env.topic_prefix)
    events = governed_breast_cancer()
    # a well-formed event with a far-off audit leaf, but no governance MAC: never trained on
    forged = events[0].model_copy(update={"event_id": "forged-1", "audit": AuditRef(
        partition=0, leaf_index=99_999)})
    publish_governed(lepton_env, events, raw=[b"{not json", b'{"event_id": "x"}'],
                     unauthenticated=[encode(forged)])
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = trainer_settings()

    released = run_trainer(settings, provider.get_tracer("test"))

    registry = Registry(settings)
    assert released == [1]
    assert registry.live("breast_cancer") == 1
    card, weights = registry.load("breast_cancer", 1)  # verifies signature and sha256
    assert card.status == "promoted"
    assert card.gate["reasons"] == []
    # F1 on the held-out split, beside scikit-learn's LogisticRegression on the same split
    sk_f1, held = _sklearn_f1()
    record_property("f1_lepton", card.metrics["f1"])
    record_property("f1_sklearn", sk_f1)
    print(f"\nbreast_cancer held-out F1 ({held} rows): lepton {card.metrics['f1']:.4f}, "
          f"scikit-learn LogisticRegression {sk_f1:.4f}")
    assert card.metrics["validation_rows"] == held
    assert abs(card.metrics["f1"] - sk_f1) <= 0.03
    for key in ("accuracy", "precision", "recall", "roc_auc", "ece", "brier"):
        assert 0.0 <= card.metrics[key] <= 1.0
    # the weights load with safetensors alone and reproduce the card's F1
    path = registry.version_dir("breast_cancer", 1) / WEIGHTS_FILE
    net = build_model(card.architecture)
    net.load_state_dict(load_file(str(path)), strict=True)
    ft = FeatureTransform.from_dict(card.feature_transform)
    held_rows = [e.payload for e in events if is_validation(e.event_id, 20)]
    scores = predict_proba(net, torch.from_numpy(ft.transform(held_rows))).numpy()
    predicted = scores >= card.metrics["threshold"]
    assert f1_score(ft.labels(held_rows), predicted) == pytest.approx(card.metrics["f1"])
    assert torch.equal(weights["layers.0.weight"], net.state_dict()["layers.0.weight"])
    # lineage: every offset of every partition, the audit leaves, the row counts
    high = {r.partition: r.offset for r in read_topic(lepton_env, topics.governed,
                                                         expect=len(events) + 3)}
    assert {int(p): r for p, r in card.lineage["partitions"].items()} == {
        p: [0, o] for p, o in high.items()}
    assert card.lineage["resume_offsets"] == {str(p): o + 1 for p, o in sorted(high.items())}
    assert card.lineage["audit_leaves"] == {"0": [0, 568], "1": [1, 567]}
    assert card.lineage["rows"]["consumed"] == len(events) + 3
    assert card.lineage["rows"]["rejected"] == 3
    assert card.lineage["rows"]["train"] + held == len(events)
    assert card.energy_j > 0
    assert card.energy_method.startswith(("estimate", "rapl", "nvml"))
    assert card.co2e_g > 0
    assert card.device == "cpu"
    assert card.code_version
    assert card.epsilon is None
    # the unusable records went to the DLQ with a reason
    rejected = read_topic(lepton_env, topics.rejected, expect=3)
    assert {r.headers["lepton.dlq.stage"] for r in rejected} == {b"trainer"}
    assert sorted(r.headers["lepton.dlq.reason"] for r in rejected) == [
        b"invalid_envelope", b"invalid_envelope", b"unauthenticated"]
    # sealed to the DLQ public key: the trainer holds nothing that reads them back
    assert {r.headers["lepton.dlq.sealed"] for r in rejected} == {b"dlq"}
    assert sorted(open_dead_letter(lepton_env, r.value) for r in rejected) == sorted(
        [b"{not json", b'{"event_id": "x"}', encode(forged)])
    # decision for the audit log, announcement on models.updates with trace context
    promoted = [d for d in _decisions(lepton_env) if d["kind"] == "model_promoted"]
    assert [d["detail"]["version"] for d in promoted] == [1]
    records = read_topic(lepton_env, topics.models, expect=1)
    assert [r.key for r in records] == [b"breast_cancer"]
    announcement = decode(ModelAnnouncement, records[0].value)
    assert (announcement.version, announcement.sha256, announcement.action) == (
        1, card.sha256, "promote")
    spans = exporter.get_finished_spans()
    by_name = {s.name: s for s in spans}
    publish = by_name[f"send {topics.models}"]
    host, port = lepton_env.bootstrap_servers().split(",")[0].rsplit(":", 1)
    assert {k: publish.attributes[k] for k in (
        "messaging.operation.type", "messaging.destination.name", "server.address",
        "server.port")} == {"messaging.operation.type": "send",
                            "messaging.destination.name": topics.models,
                            "server.address": host, "server.port": int(port)}
    traceparent = records[0].headers["traceparent"].decode()
    assert traceparent.split("-")[2] == f"{publish.context.span_id:016x}"
    assert publish.parent is not None
    assert publish.parent.span_id == by_name["trainer release"].context.span_id
    batches = [s for s in spans if s.name == f"process {topics.governed}"]
    assert batches and all(s.attributes["messaging.operation.type"] == "process"
                           and s.attributes["server.address"] == host for s in batches)
    assert sum(s.attributes["messaging.batch.message_count"] for s in batches) == len(events) + 3
    # links are capped at 128 a span; the count attribute says how many events were consumed
    assert sum(s.attributes["lepton.links.total"] for s in batches) == len(events)
    for span in batches:
        assert len(span.links) == min(128, span.attributes["lepton.links.total"])
        assert span.attributes["lepton.links.recorded"] == len(span.links)
    assert any(s.attributes["lepton.links.total"] > 128 for s in batches)
    assert "trainer train" in by_name
    assert "trainer evaluate" in by_name


def test_dp_sgd_release_is_charged_by_governance_before_it_is_announced(
        lepton_env: LeptonSettings, monkeypatch: pytest.MonkeyPatch,
        record_property: pytest.RecordProperty) -> None:
    monkeypatch.setenv("LEPTON_GOVERNANCE_FSYNC", "false")
    events = governed_breast_cancer()
    publish_governed(lepton_env, events)
    settings = trainer_settings(trainer_dp_enabled=True)
    release_beside_governance(settings)

    card = Registry(settings).card("breast_cancer", 1)
    spec = load_spec("breast_cancer").privacy
    privacy = card.privacy
    sk_f1, _ = _sklearn_f1()
    record_property("f1_lepton_dp", card.metrics["f1"])
    record_property("epsilon", card.epsilon)
    print(f"\nDP-SGD breast_cancer: F1 {card.metrics['f1']:.4f} (scikit-learn {sk_f1:.4f}), "
          f"ε={card.epsilon:.3f} at δ={card.delta}, σ={privacy['noise_multiplier']:.3f}")
    assert card.status == "promoted" and card.metrics["f1"] >= 0.85
    assert card.epsilon is not None and 0.98 * spec.epsilon_per_release <= card.epsilon
    assert card.epsilon <= spec.epsilon_per_release
    assert card.delta == spec.delta == privacy["delta"]
    assert (privacy["mode"], privacy["sampling"], privacy["max_events_per_subject"]) == (
        "model", "poisson", 1)
    assert privacy["accountant"].startswith("rdp") and isinstance(privacy["secure_rng"], bool)
    accountant = RDPAccountant()
    accountant.history = [(privacy["noise_multiplier"], privacy["sample_rate"],
                           privacy["steps"])]
    # DP-SGD's own ε is Opacus's; the release's ε also composes the card's DP reference
    # histograms (RDP, order by order), and that composed ε is what the ledger charged
    assert privacy["dp_sgd_epsilon"] == pytest.approx(accountant.get_epsilon(
        delta=card.delta, alphas=privacy["orders"]), rel=1e-9)
    assert privacy["reference_epsilon"] > 0
    assert card.reference["privacy"]["epsilon"] == pytest.approx(privacy["reference_epsilon"])
    assert privacy["dp_sgd_epsilon"] < card.epsilon
    assert card.joules_per_sample > 0 and card.carbon["g_per_kwh"] > 0
    train_rows = card.lineage["rows"]["train"]
    assert privacy["rows"] == train_rows
    assert privacy["ledger"]["status"] == "charged"
    assert "held-out window" in privacy["outside_epsilon"]  # what ε does not cover, said
    assert privacy["max_subject_epsilon"] == pytest.approx(card.epsilon, rel=1e-9)
    assert privacy["releases"] == [{"release_id": privacy["release_id"],
                                    "epsilon": card.epsilon}]
    # the ledger charged every contributing patient exactly this release's ε
    spent = ReleaseLedger(Registry(settings).redis, lepton_env).subject_epsilons(
        "breast_cancer", spec.delta)
    assert len(spent) == train_rows
    assert max(spent.values()) == pytest.approx(card.epsilon, rel=1e-9)
    assert min(spent.values()) == pytest.approx(card.epsilon, rel=1e-9)
    charges = [d for d in _decisions(lepton_env) if d["kind"] == "release_charge"]
    assert len(charges) == 1
    assert charges[0]["decision_id"] == privacy["release_id"]
    assert charges[0]["detail"]["subjects_count"] == train_rows
    assert charges[0]["detail"]["subjects_sha256"] == subjects_digest(list(spent))
    assert not [d for d in _decisions(lepton_env) if d["kind"] == "dp_sgd_charge"]
    promoted = [d for d in _decisions(lepton_env) if d["kind"] == "model_promoted"]
    assert promoted[0]["detail"]["privacy"]["epsilon"] == card.epsilon


def test_a_refused_release_charge_is_not_announced(
        lepton_env: LeptonSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    specs = tmp_path / "specs"
    specs.mkdir()
    data = load_spec("breast_cancer").model_dump(mode="json")
    data["privacy"]["subject_budget"] = 0.01  # below one release
    (specs / "breast_cancer.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.setenv("LEPTON_GOVERNANCE_SPECS_DIR", str(specs))
    monkeypatch.setenv("LEPTON_GOVERNANCE_FSYNC", "false")
    publish_governed(lepton_env, governed_breast_cancer())
    settings = trainer_settings(trainer_dp_enabled=True, trainer_specs_dir=specs)
    release_beside_governance(settings)
    registry = Registry(settings)
    card = registry.card("breast_cancer", 1)
    assert card.status == "refused" and registry.live("breast_cancer") is None
    assert card.gate["reasons"] == ["privacy_charge_refused: subject_budget_exhausted"]
    assert card.privacy["ledger"]["status"] == "refused"
    assert read_topic(lepton_env, Topics(lepton_env.topic_prefix).models, idle=1.0) == []
    refused = [d for d in _decisions(lepton_env) if d["kind"] == "model_refused"]
    assert len(refused) == 1
    assert ReleaseLedger(registry.redis, lepton_env).subject_epsilons(
        "breast_cancer", 1e-5) == {}


def test_rows_over_the_contribution_bound_are_neither_trained_on_nor_charged(
        lepton_env: LeptonSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The trainer's own bound (one event per patient and release): a patient's second
    training row in one cycle is counted, never trained on, and the patient is charged once;
    `lepton models list` shows the rows trained on."""
    monkeypatch.setenv("LEPTON_GOVERNANCE_FSYNC", "false")
    events = governed_breast_cancer()
    originals = [e for e in events if not is_validation(e.event_id, 20)][:25]
    repeats = []
    for index, original in enumerate(originals):  # same patient, new event in the train split
        attempt = 0
        while is_validation(event_id := f"repeat-{index}-{attempt}", 20):
            attempt += 1
        repeats.append(original.model_copy(update={"event_id": event_id}))
    publish_governed(lepton_env, events)
    publish_governed(lepton_env, repeats)
    settings = trainer_settings(trainer_dp_enabled=True)
    release_beside_governance(settings)

    registry = Registry(settings)
    card = registry.card("breast_cancer", 1)
    train_rows = card.lineage["rows"]["train"]
    assert train_rows == sum(not is_validation(e.event_id, 20) for e in events) + len(repeats)
    assert card.training["rows_over_contribution_bound"] == len(repeats)
    assert card.training["rows"] == card.privacy["rows"] == train_rows - len(repeats)
    spent = ReleaseLedger(registry.redis, lepton_env).subject_epsilons(
        "breast_cancer", card.delta or 0.0)
    assert len(spent) == train_rows - len(repeats)
    assert {r.subject_id for r in repeats} <= set(spent)
    listing = lepton("models", "list").stdout
    assert f" rows={train_rows - len(repeats)} " in listing
