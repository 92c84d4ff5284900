"""`lepton tune`: a 10-trial private search on governed breast_cancer events with a real
governance service. The best trial is at least as good as the defaults (the study's first
trial, run with exactly the trainer's settings) on the study's held-out rows; its model is
released through the trainer's gate, charge, registry and announcement with the best parameters
in the card; the ledger charges every patient the study's total ε (Opacus's RDP accountant over
every trial's run: per-trial composition) before the announcement; replaying the study id runs
no trial and charges nothing again; the command prints its summary and rejects a bad dataset."""

from __future__ import annotations

import orjson
import pytest
from opacus.accountants import RDPAccountant

from services.governance.config import GovernanceSettings
from services.governance.releases import ReleaseLedger
from services.trainer.split import is_validation
from services.trainer.study import defaults, open_study
from services.trainer.tune import run_tune
from shared.accounting import ORDERS
from shared.config import LeptonSettings
from shared.datasets import load_spec
from shared.events import ModelAnnouncement, decode
from shared.models.registry import Registry
from shared.releases import verdicts_key
from shared.state import forgotten_key
from shared.topics import Topics
from tests.helpers import lepton, read_topic
from tests.integration.test_governance_service import Running
from tests.unit.trainer.governed import governed_breast_cancer, publish_governed, trainer_settings

STUDY = "bc-study-1"


@pytest.mark.slow
def test_ten_trial_study_is_charged_once_and_releases_the_best(
        lepton_env: LeptonSettings, monkeypatch: pytest.MonkeyPatch,
        record_property: pytest.RecordProperty) -> None:
    monkeypatch.setenv("LEPTON_GOVERNANCE_FSYNC", "false")
    publish_governed(lepton_env, governed_breast_cancer())
    settings = trainer_settings(trainer_dp_enabled=True)
    spec = load_spec("breast_cancer")
    governance = Running(GovernanceSettings(), None)
    try:
        result = run_tune(settings, 10, STUDY)
        registry = Registry(settings)
        ledger = ReleaseLedger(registry.redis, lepton_env)
        spent = ledger.subject_epsilons("breast_cancer", spec.privacy.delta)
        verdicts = registry.redis.hgetall(verdicts_key(lepton_env, "breast_cancer"))
        again = run_tune(settings, 10, STUDY)
        # the command, replaying the same study: its JSON summary, nothing run or charged
        command = lepton("tune", "--dataset", "breast_cancer", "--trials", "10", "--study",
                         STUDY, timeout=180)
        summary = orjson.loads(command.stdout)
        assert summary["replayed"] and summary["version"] == result.version
        more = lepton("tune", "--dataset", "breast_cancer", "--trials", "12", "--study", STUDY,
                      "-q", check=False, timeout=180)
    finally:
        governance.close()

    study = open_study(settings, "breast_cancer", STUDY)
    trials = sorted(study.get_trials(), key=lambda t: t.number)
    record_property("best_f1", result.best_value)
    record_property("default_f1", result.default_value)
    record_property("study_epsilon", result.epsilon)
    print(f"\ntune breast_cancer: best F1 {result.best_value:.4f} (defaults "
          f"{result.default_value:.4f}), {result.trials} trials charged, {result.pruned} "
          f"pruned, study ε {result.epsilon:.3f}, best {result.best_params}")
    # the defaults are the first trial, exactly the trainer's settings; the best beats them
    assert trials[0].params == defaults(settings, spec)
    assert result.default_value == trials[0].value
    assert result.best_value >= result.default_value
    assert result.best_value == max(t.value for t in trials if t.value is not None)
    # released through the trainer's path, best parameters in the card
    card = registry.card("breast_cancer", result.version)
    tuning = card.training["tuning"]
    assert card.status == "promoted" and registry.live("breast_cancer") == result.version
    assert tuning["study"] == STUDY and tuning["best_params"] == result.best_params
    assert card.training["learning_rate"] == result.best_params["learning_rate"]
    assert card.variants["int8"]["status"] in ("accepted", "refused")
    announced = [decode(ModelAnnouncement, r.value) for r in read_topic(
        lepton_env, Topics(lepton_env.topic_prefix).models, expect=1)]
    assert [(a.version, a.action) for a in announced] == [(result.version, "promote")]
    # the study's ε: Opacus's RDP accountant over every trial that ran, within the budget
    charged = [t for t in trials if "rdp" in t.user_attrs]
    assert len(charged) == result.trials and result.trials + result.pruned == 10
    accountant = RDPAccountant()
    accountant.history = [(t.user_attrs["noise_multiplier"], t.user_attrs["sample_rate"],
                           t.user_attrs["steps"]) for t in charged]
    total = accountant.get_epsilon(delta=spec.privacy.delta, alphas=list(ORDERS))
    assert result.epsilon == pytest.approx(total, rel=1e-9)
    assert card.epsilon == pytest.approx(total, rel=1e-9) and total <= spec.tuning.epsilon
    assert card.privacy["trials_charged"] == len(charged)
    # the ledger: every training patient charged the study's total once, before announcing
    assert len(spent) == card.lineage["rows"]["train"]
    assert min(spent.values()) == pytest.approx(total, rel=1e-9)
    assert max(spent.values()) == pytest.approx(total, rel=1e-9)
    assert list(verdicts) == [card.privacy["release_id"].encode()]
    assert orjson.loads(verdicts[card.privacy["release_id"].encode()])["status"] == "charged"
    # the replay: same study, no new trial, no new charge, no new version
    assert again.replayed and (again.version, again.trials) == (result.version, result.trials)
    assert len(open_study(settings, "breast_cancer", STUDY).get_trials()) == len(trials)
    assert ledger.subject_epsilons("breast_cancer", spec.privacy.delta) == spent
    assert registry.redis.hgetall(verdicts_key(lepton_env, "breast_cancer")) == verdicts
    assert registry.versions("breast_cancer") == [result.version]
    # more trials on a released study would spend budget nothing charges: refused
    assert more.returncode == 1 and "already released its winner" in more.stderr


def test_a_study_leaves_out_subjects_forgotten_before_it(lepton_env: LeptonSettings,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    """Their events governed before the forget are still on events.governed: the study trains
    and evaluates without them, does not charge them, and its winner is not refused as carrying
    them."""
    monkeypatch.setenv("LEPTON_GOVERNANCE_FSYNC", "false")
    events = governed_breast_cancer()
    publish_governed(lepton_env, events)
    settings = trainer_settings(trainer_dp_enabled=True)
    victim = next(e.subject_id for e in events
                  if not is_validation(e.event_id, settings.trainer_val_percent))
    held_out = [e for e in events if is_validation(e.event_id, settings.trainer_val_percent)]
    registry = Registry(settings)
    registry.redis.sadd(forgotten_key(lepton_env), victim, held_out[0].subject_id)
    governance = Running(GovernanceSettings(), None)
    try:
        result = run_tune(settings, 1, "bc-forgotten")
    finally:
        governance.close()
    card = registry.card("breast_cancer", result.version)
    assert not [r for r in card.gate["reasons"] if r.startswith("contains_forgotten")]
    assert not registry.contains_forgotten("breast_cancer", result.version)
    assert card.training["rows_forgotten"] == 1
    assert card.metrics["validation_rows"] == len(held_out) - 1  # nor evaluates on them
    spent = ReleaseLedger(registry.redis, lepton_env).subject_epsilons(
        "breast_cancer", load_spec("breast_cancer").privacy.delta)
    assert spent and victim not in spent


def test_tune_command_rejects_an_unknown_dataset(lepton_env: LeptonSettings) -> None:
    result = lepton("tune", "--dataset", "nope", "--trials", "1", "-q", check=False)
    assert result.returncode == 2  # bad input, as `lepton produce` and `lepton consent` say
    assert "unknown dataset 'nope'" in result.stderr
