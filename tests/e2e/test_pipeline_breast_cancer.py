"""breast_cancer replayed through the real services as processes: `lepton produce` path →
ingest → governance → trainer. With default settings (privacy mode `model`: governance
releases records un-noised, the trainer's DP-SGD release is charged to every patient by
governance before it is announced) the promoted model has held-out F1 ≥ 0.90 and ε within the
spec's release budget in the card and in the ledger. Non-private (on a spec copy that allows
it) it is within 0.03 F1 of scikit-learn's LogisticRegression on the same split."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score

from lepton.generators import breast_cancer
from lepton.produce import publish
from services.governance.releases import ReleaseLedger
from services.trainer.evaluate import tune_threshold
from services.trainer.split import is_validation
from shared.config import LeptonSettings
from shared.datasets import load_spec
from shared.events import Envelope, decode
from shared.lifecycle import parent_death
from shared.models.features import FeatureTransform
from shared.models.registry import Registry
from shared.topics import Topics
from tests.helpers import read_topic
from tests.unit.trainer.governed import non_private_env

ROWS = 569


@pytest.fixture
def services(lepton_env: LeptonSettings, request: pytest.FixtureRequest,
             tmp_path: Path) -> Iterator[dict[str, str]]:
    """Ingest and governance as subprocesses; the trainer private or not per the parameter."""
    env = {**os.environ, **({} if request.param else non_private_env())}
    procs = []
    for name in ("ingest", "governance"):
        log = (tmp_path / f"{name}.log").open("w")
        procs.append(subprocess.Popen([sys.executable, "-m", f"services.{name}"], env=env,
                                      stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True,
                                      preexec_fn=parent_death()))
        log.close()
    try:
        yield env
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _sklearn_f1(governed: list[Envelope], percent: int) -> float:
    train = [e.payload for e in governed if not is_validation(e.event_id, percent)]
    held = [e.payload for e in governed if is_validation(e.event_id, percent)]
    ft = FeatureTransform.fit(load_spec("breast_cancer"), train)
    clf = LogisticRegression(max_iter=2000).fit(ft.transform(train), ft.labels(train))
    # the same threshold rule as the trainer (the spec's: `tune` on the held-out rows)
    labels = ft.labels(held).astype(np.float64)
    probs = clf.predict_proba(ft.transform(held))[:, 1]
    threshold = tune_threshold(probs, labels)
    return float(f1_score(labels, probs >= threshold))


@pytest.mark.parametrize("services", [True, False], ids=["default", "non_private"],
                         indirect=True)
def test_breast_cancer_through_every_service(
        lepton_env: LeptonSettings, services: dict[str, str], tmp_path: Path,
        record_property: pytest.RecordProperty) -> None:
    dp_on = "LEPTON_TRAINER_DP_ENABLED" not in services
    report = publish(lepton_env, breast_cancer(ROWS), total=ROWS, show_progress=False)
    assert report.delivered == ROWS
    topics = Topics(lepton_env.topic_prefix)
    governed = [decode(Envelope, r.value) for r in
                read_topic(lepton_env, topics.governed, expect=ROWS, timeout=90)]
    assert len(governed) == ROWS
    assert all(e.audit is not None for e in governed)
    # model mode: records are not noised and carry no per-event ε
    assert all(e.privacy is not None and (e.privacy.mode, e.privacy.epsilon) == ("model", None)
               for e in governed)

    env = {**services, "LEPTON_TRAINER_DATASET": "breast_cancer",
           "LEPTON_TRAINER_EXIT_WHEN_IDLE_S": "2", "LEPTON_TRAINER_MAX_WAIT_S": "0.5"}
    trainer = subprocess.run([sys.executable, "-m", "services.trainer"], env=env,
                             capture_output=True, text=True, timeout=90, preexec_fn=parent_death())
    assert trainer.returncode == 0, trainer.stderr[-3000:]

    card, _ = Registry(lepton_env).load("breast_cancer", 1)
    percent = 20
    sk_f1 = _sklearn_f1(governed, percent)
    record_property("f1_lepton", card.metrics["f1"])
    record_property("f1_sklearn", sk_f1)
    record_property("epsilon", card.epsilon)
    print(f"\npipeline breast_cancer ({'DP on' if dp_on else 'DP off'}): held-out F1 "
          f"lepton {card.metrics['f1']:.4f}, scikit-learn {sk_f1:.4f}"
          + (f", DP-SGD ε={card.epsilon:.3f}" if card.epsilon is not None else ""))
    assert card.lineage["rows"]["consumed"] == ROWS
    leaves = card.lineage["audit_leaves"]
    assert leaves
    assert sum(hi - lo + 1 for lo, hi in leaves.values()) >= ROWS
    assert card.status == "promoted"
    if dp_on:
        budget = load_spec("breast_cancer").privacy
        assert card.metrics["f1"] >= 0.90
        assert card.epsilon is not None and 0 < card.epsilon <= budget.epsilon_per_release
        assert card.privacy["mode"] == "model" and card.privacy["sampling"] == "poisson"
        spent = ReleaseLedger(Registry(lepton_env).redis, lepton_env).subject_epsilons(
            "breast_cancer", budget.delta)
        assert len(spent) == card.lineage["rows"]["train"]
        assert max(spent.values()) == pytest.approx(card.epsilon, rel=1e-9)
        assert max(spent.values()) <= budget.epsilon_per_release
    else:
        assert card.epsilon is None and card.privacy["mode"] == "non-private"
        assert abs(card.metrics["f1"] - sk_f1) <= 0.03
