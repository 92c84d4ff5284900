"""`lepton trainer --workers 2` (two processes, gloo, rendezvous on a free local port) trains
the same governed stream to the same quality as one in-process worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from services.trainer.split import is_validation
from shared.config import LeptonSettings
from shared.governed_mac import mac_key_path
from shared.lifecycle import parent_death
from shared.models.features import FeatureTransform
from shared.models.nets import build_model, predict_proba
from shared.models.registry import ModelCard, Registry
from shared.state import make_redis, policy_ready_key
from tests.unit.trainer.governed import (
    governed_breast_cancer,
    non_private_env,
    publish_governed,
    run_trainer,
    trainer_settings,
)


def _probs(card: ModelCard, weights: dict[str, torch.Tensor], rows: list[dict]) -> np.ndarray:
    net = build_model(card.architecture)
    net.load_state_dict(weights)
    ft = FeatureTransform.from_dict(card.feature_transform)
    return predict_proba(net, torch.from_numpy(ft.transform(rows))).numpy()


def test_two_gloo_workers_match_one_worker(lepton_env: LeptonSettings, tmp_path: Path,
                                           redis_prefix: str) -> None:
    events = governed_breast_cancer()
    publish_governed(lepton_env, events)
    env = {**os.environ, **non_private_env(), "LEPTON_TRAINER_MAX_WAIT_S": "0.5",
           "LEPTON_TRAINER_BATCH_SIZE": "128"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lepton", "trainer", "--workers", "2", "--dataset",
         "breast_cancer", "--exit-when-idle", "2"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True, preexec_fn=parent_death())
    try:
        # its own data dir and state, but the deployment's governed-event MAC key
        one = trainer_settings(trainer_group="single", data_dir=tmp_path / "single",
                               redis_prefix=f"{redis_prefix}single:",
                               governed_mac_key_file=mac_key_path(lepton_env))
        make_redis(one).set(policy_ready_key(one), b"1")  # governance's, in its own state
        assert run_trainer(one) == [1]
        output, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, output[-3000:]
    assert "rank 1 of 2 joined the gloo process group" in output

    two_card, two_weights = Registry(lepton_env).load("breast_cancer", 1)
    one_card, one_weights = Registry(one).load("breast_cancer", 1)
    assert two_card.training["workers"] == 2
    assert two_card.training["backend"] == "gloo"
    assert one_card.training["workers"] == 1
    assert two_card.status == one_card.status == "promoted"
    assert sorted(two_card.lineage["partitions"]) == ["0", "1", "2", "3"]
    assert two_card.lineage["rows"] == one_card.lineage["rows"]
    assert two_card.metrics["validation_rows"] == one_card.metrics["validation_rows"]
    assert two_card.metrics["f1"] == pytest.approx(one_card.metrics["f1"], abs=0.03)
    assert two_card.metrics["roc_auc"] == pytest.approx(one_card.metrics["roc_auc"], abs=0.02)
    held = [e.payload for e in events if is_validation(e.event_id, 20)]
    gap = np.abs(_probs(two_card, two_weights, held) - _probs(one_card, one_weights, held))
    assert float(gap.mean()) < 0.05
