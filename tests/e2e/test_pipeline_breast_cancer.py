"""breast_cancer replayed through the real services as processes: `lepton produce` path →
ingest → governance → trainer. With DP off (governance passes features un-noised, trainer
without DP-SGD) the promoted model's held-out F1 is within 0.03 of scikit-learn's
LogisticRegression on the same split; with DP on (governance noise + DP-SGD) it is reported
together with ε."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score

from lepton.produce import publish
from services.trainer.split import is_validation
from shared.config import LeptonSettings
from shared.datasets import load_spec
from shared.datasets.generators import breast_cancer
from shared.events import Envelope, decode
from shared.features import FeatureTransform
from shared.lifecycle import parent_death
from shared.registry import Registry
from shared.topics import Topics
from tests.helpers import read_topic

ROWS = 569


@pytest.fixture
def services(lepton_env: LeptonSettings, request: pytest.FixtureRequest,
             tmp_path: Path) -> Iterator[dict[str, str]]:
    """Ingest and governance as subprocesses (governance DP per the test's parameter)."""
    env = {**os.environ, "LEPTON_GOVERNANCE_DP_ENABLED": str(request.param).lower()}
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
    return float(f1_score(ft.labels(held), clf.predict(ft.transform(held))))


@pytest.mark.parametrize("services", [False, True], ids=["dp_off", "dp_on"], indirect=True)
def test_breast_cancer_through_every_service(
        lepton_env: LeptonSettings, services: dict[str, str], tmp_path: Path,
        record_property: pytest.RecordProperty) -> None:
    dp_on = services["LEPTON_GOVERNANCE_DP_ENABLED"] == "true"
    report = publish(lepton_env, breast_cancer(ROWS), total=ROWS, show_progress=False)
    assert report.delivered == ROWS
    topics = Topics(lepton_env.topic_prefix)
    governed = [decode(Envelope, r.value) for r in
                read_topic(lepton_env, topics.governed, expect=ROWS, timeout=90)]
    assert len(governed) == ROWS
    assert all(e.audit is not None for e in governed)
    assert all((e.privacy is not None and e.privacy.epsilon > 0) == dp_on for e in governed)

    env = {**services, "LEPTON_TRAINER_DATASET": "breast_cancer",
           "LEPTON_TRAINER_DP_ENABLED": str(dp_on).lower(),
           "LEPTON_TRAINER_EXIT_WHEN_IDLE_S": "2", "LEPTON_TRAINER_MAX_WAIT_S": "0.5"}
    trainer = subprocess.run([sys.executable, "-m", "services.trainer"], env=env,
                             capture_output=True, text=True, timeout=90)
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
    if dp_on:
        assert card.epsilon is not None
        assert card.epsilon > 0
    else:
        assert card.status == "promoted"
        assert card.epsilon is None
        assert abs(card.metrics["f1"] - sk_f1) <= 0.03
