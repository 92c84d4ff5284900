"""The promotion gate refuses a deliberately worse model: after a good v1, a stream with
flipped labels (all in the training split) trains a candidate that is worse on the held-out
rows; it is saved as refused, never announced, the live model stays v1, and the refusal with
its reasons goes to the audit log. With no live model at all, a candidate trained on shuffled
labels is refused `below_baseline` by the gate's floors and nothing becomes live."""

from __future__ import annotations

import random
import threading
import time

import orjson

from services.trainer.split import is_validation
from shared.config import LeptonSettings
from shared.events import ModelAnnouncement, decode
from shared.models.attribution import BASELINE
from shared.models.registry import Registry
from shared.topics import Topics
from tests.helpers import read_topic
from tests.unit.trainer.governed import (
    governed_breast_cancer,
    publish_governed,
    run_trainer,
    trainer_settings,
)


def test_gate_refuses_a_worse_model(lepton_env: LeptonSettings) -> None:
    topics = Topics(lepton_env.topic_prefix)
    settings = trainer_settings(trainer_exit_when_idle_s=4.0)
    registry = Registry(settings)
    publish_governed(lepton_env, governed_breast_cancer())
    released: list[int] = []
    worker = threading.Thread(target=lambda: released.extend(run_trainer(settings)))
    worker.start()
    try:
        deadline = time.monotonic() + 60
        while registry.live("breast_cancer") != 1:
            assert worker.is_alive()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        poisoned = [e for e in governed_breast_cancer(seed=1, flip_labels=True)
                    if not is_validation(e.event_id, settings.trainer_val_percent)]
        publish_governed(lepton_env, poisoned)
    finally:
        worker.join(90)
    assert not worker.is_alive()

    assert released == [1, 2]
    assert registry.live("breast_cancer") == 1
    good, _ = registry.load("breast_cancer", 1)
    bad, _ = registry.load("breast_cancer", 2)
    assert bad.status == "refused"
    importance = good.training["feature_importance"]
    assert importance["method"] in ("exact-linear", "integrated-gradients")
    assert importance["baseline"] == BASELINE and importance["rows"] > 0
    fields = {c["name"] for c in good.feature_transform["columns"]}
    assert set(importance["mean_abs_attribution"]) == fields
    assert max(importance["mean_abs_attribution"].values()) > 0
    assert bad.parent_version == 1
    assert bad.gate["compared_to"] == 1
    assert bad.metrics["f1"] < good.metrics["f1"] - settings.trainer_gate_tolerance
    assert any(reason.startswith("f1 ") for reason in bad.gate["reasons"])
    assert bad.lineage["rows"]["train"] == len(poisoned)
    decisions = [orjson.loads(r.value) for r in
                 read_topic(lepton_env, topics.audit_requests, idle=1.0)]
    refused = [d for d in decisions if d["kind"] == "model_refused"]
    assert len(refused) == 1
    assert refused[0]["detail"]["version"] == 2
    assert refused[0]["detail"]["reasons"] == bad.gate["reasons"]
    announced = [decode(ModelAnnouncement, r.value)
                 for r in read_topic(lepton_env, topics.models, idle=1.0)]
    assert [(a.version, a.action) for a in announced] == [(1, "promote")]


def test_shuffled_labels_are_refused_below_baseline_with_no_live_model(
        lepton_env: LeptonSettings) -> None:
    """Labels shuffled across every row, so no model can carry information about the held-out
    labels: its held-out ROC-AUC follows the null law (sd ≈ 0.025 over these ~570 held-out
    rows, so ≥ 0.6 has probability ≈ 3e-5). Shuffling only the training labels would not do:
    breast_cancer's features are so collinear with its label that a model fitted to noise
    often still ranks the true held-out labels well."""
    topics = Topics(lepton_env.topic_prefix)
    settings = trainer_settings()
    events = []
    for i, event in enumerate(governed_breast_cancer(5 * 569)):  # replays, distinct patients
        subject = f"patient-{i:05d}"
        events.append(event.model_copy(update={
            "subject_id": subject, "payload": {**event.payload, "patient_id": subject}}))
    labels = [e.payload["malignant"] for e in events]
    random.Random(5).shuffle(labels)
    events = [e.model_copy(update={"payload": {**e.payload, "malignant": label}})
              for e, label in zip(events, labels, strict=True)]
    publish_governed(lepton_env, events)

    assert run_trainer(settings) == [1]

    registry = Registry(settings)
    card = registry.card("breast_cancer", 1)
    assert card.status == "refused" and card.parent_version is None
    assert card.gate["reasons"] and all(r.startswith("below_baseline: ")
                                        for r in card.gate["reasons"])
    assert registry.live("breast_cancer") is None
    assert read_topic(lepton_env, topics.models, idle=1.0) == []
    decisions = [orjson.loads(r.value) for r in
                 read_topic(lepton_env, topics.audit_requests, idle=1.0)]
    refused = [d for d in decisions if d["kind"] == "model_refused"]
    assert len(refused) == 1 and refused[0]["detail"]["reasons"] == card.gate["reasons"]
    assert not [d for d in decisions if d["kind"] == "model_promoted"]
