"""The trainer and `lepton forget`: a live version marked `contains_forgotten` is never
continued from (the next cycle trains from scratch); rows of subjects forgotten after
governance released them are left out right before they would be trained on (each round, or a
DP-SGD cycle's one step at its end); a cycle that trained on the rows of a subject forgotten
after that is refused and marked, so the mark names every version that carries the subject."""

from __future__ import annotations

import pytest
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider

from services.governance.releases import ReleaseLedger
from services.trainer.split import is_validation
from shared.config import LeptonSettings
from shared.models.registry import Registry
from shared.state import forgotten_key, make_redis, policy_ready_key
from tests.integration.test_trainer_pipeline import release_beside_governance
from tests.unit.trainer.governed import (
    governed_breast_cancer,
    publish_governed,
    run_trainer,
    trainer_settings,
)

MODEL = "breast_cancer"


class _MarkAtFirstRound(SpanProcessor):
    """`lepton forget` marks `version` once the cycle's first round is buffered (the cycle
    has warm-started from it by then)."""

    def __init__(self, registry: Registry, version: int) -> None:
        self.registry, self.version = registry, version

    def on_end(self, span: ReadableSpan) -> None:
        if span.name.startswith("process ") and not self.registry.flags(MODEL, self.version):
            self.registry.mark(MODEL, self.version, contains_forgotten=True)


class _ForgetAtRelease(SpanProcessor):
    """`lepton forget` for `subject` when the cycle's release begins: after every round
    trained, before the release's forgotten check."""

    def __init__(self, settings: LeptonSettings, subject: str) -> None:
        self.settings, self.subject = settings, subject

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        if span.name == "trainer cycle":
            make_redis(self.settings).sadd(forgotten_key(self.settings), self.subject)


def test_a_forgotten_subject_is_not_carried_on_unmarked(lepton_env: LeptonSettings) -> None:
    settings = trainer_settings()
    registry = Registry(settings)
    publish_governed(lepton_env, governed_breast_cancer())
    assert run_trainer(settings) == [1]
    assert registry.live(MODEL) == 1

    # `lepton forget` marked v1 and added a subject to the forgotten set while the subject's
    # next rows waited on events.governed: the rounds leave them out
    registry.mark(MODEL, 1, contains_forgotten=True)
    second = governed_breast_cancer(seed=1)
    trained = [e.subject_id for e in second
               if not is_validation(e.event_id, settings.trainer_val_percent)]
    before, during = trained[0], trained[1]
    make_redis(settings).sadd(forgotten_key(settings), before)
    publish_governed(lepton_env, second)
    # and another one after the rounds trained on their rows, before the release
    provider = TracerProvider()
    provider.add_span_processor(_ForgetAtRelease(settings, during))
    assert run_trainer(settings, provider.get_tracer("test")) == [2]
    tainted = registry.card(MODEL, 2)
    assert (tainted.parent_version, tainted.training["warm_start_version"]) == (None, None)
    assert tainted.training["rows_forgotten"] == 1
    assert tainted.status == "refused"
    assert tainted.gate["reasons"][-1] == ("contains_forgotten: trained on rows of 1 "
                                           "subject(s) forgotten meanwhile")
    assert registry.flags(MODEL, 2) == {"contains_forgotten": True}
    assert registry.live(MODEL) == 1

    # governance withholds the subjects' later events: the next cycle is clean, from scratch
    publish_governed(lepton_env, [e for e in governed_breast_cancer(seed=2)
                                  if e.subject_id not in (before, during)])
    assert run_trainer(settings) == [3]
    clean = registry.card(MODEL, 3)
    assert (clean.parent_version, clean.status) == (None, "promoted")
    assert registry.flags(MODEL, 3) == {}
    assert registry.live(MODEL) == 3


def test_a_release_is_refused_while_redis_has_lost_the_forgotten_set(
        lepton_env: LeptonSettings) -> None:
    settings = trainer_settings()
    registry = Registry(settings)
    client = make_redis(settings)
    publish_governed(lepton_env, governed_breast_cancer())
    assert run_trainer(settings) == [1]

    # Redis restarted empty after governance released the next rows: the forgotten set and
    # governance's marker are gone, so a subject forgotten meanwhile cannot be seen
    publish_governed(lepton_env, governed_breast_cancer(seed=1))
    client.delete(policy_ready_key(settings), forgotten_key(settings))
    assert run_trainer(settings) == [2]
    unknown = registry.card(MODEL, 2)
    assert unknown.status == "refused"
    assert unknown.gate["reasons"][-1].startswith("forgotten_unknown: Redis lost the forgotten")
    assert registry.flags(MODEL, 2) == {}
    assert registry.live(MODEL) == 1

    # governance restored the set (its next decision, or `lepton state rebuild`)
    publish_governed(lepton_env, governed_breast_cancer(seed=2))
    assert run_trainer(settings) == [3]
    assert registry.card(MODEL, 3).status == "promoted"
    assert registry.live(MODEL) == 3


def test_a_private_cycle_leaves_out_the_rows_of_a_subject_forgotten_before_it_trains(
        lepton_env: LeptonSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    """DP-SGD trains once, at the cycle's end, on rows buffered meanwhile: rows of subjects
    forgotten by then are neither trained on, counted in the reference, nor charged, and the
    release is promoted instead of refused (the non-private cycle above trains as rows come);
    held-out rows of forgotten subjects leave the evaluation window."""
    monkeypatch.setenv("LEPTON_GOVERNANCE_FSYNC", "false")
    settings = trainer_settings(trainer_dp_enabled=True)
    events = governed_breast_cancer()
    train = [e for e in events if not is_validation(e.event_id, settings.trainer_val_percent)]
    held_out = [e for e in events if is_validation(e.event_id, settings.trainer_val_percent)]
    victims = {e.subject_id for e in train[:3]}
    publish_governed(lepton_env, events)
    make_redis(settings).sadd(forgotten_key(settings), *victims, held_out[0].subject_id)
    release_beside_governance(settings)

    registry = Registry(settings)
    card = registry.card(MODEL, 1)
    assert card.status == "promoted" and registry.flags(MODEL, 1) == {}
    assert card.lineage["rows"]["train"] == len(train)
    assert card.training["rows_forgotten"] == len(victims)
    assert card.training["rows"] == card.privacy["rows"] == len(train) - len(victims)
    assert card.metrics["validation_rows"] == len(held_out) - 1  # nor evaluated on
    spent = ReleaseLedger(registry.redis, lepton_env).subject_epsilons(MODEL, card.delta or 0.0)
    assert len(spent) == len(train) - len(victims) and not victims & set(spent)


def test_a_private_cycle_whose_warm_start_is_marked_meanwhile_trains_afresh(
        lepton_env: LeptonSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    """DP-SGD has not run when the mark comes: the cycle's one step starts from fresh weights
    instead of the cycle being refused as warm-started from a marked version."""
    monkeypatch.setenv("LEPTON_GOVERNANCE_FSYNC", "false")
    settings = trainer_settings(trainer_dp_enabled=True)
    registry = Registry(settings)
    publish_governed(lepton_env, governed_breast_cancer())
    release_beside_governance(settings)
    assert registry.live(MODEL) == 1

    publish_governed(lepton_env, governed_breast_cancer(seed=1))
    provider = TracerProvider()
    provider.add_span_processor(_MarkAtFirstRound(registry, 1))
    release_beside_governance(settings, provider.get_tracer("test"), version=2)

    assert registry.flags(MODEL, 1) == {"contains_forgotten": True}
    card = registry.card(MODEL, 2)
    assert (card.status, card.parent_version, card.training["warm_start_version"]) == (
        "promoted", None, None)
    assert [r["release_id"] for r in card.privacy["releases"]] == [card.privacy["release_id"]]
    assert registry.flags(MODEL, 2) == {} and registry.live(MODEL) == 2
