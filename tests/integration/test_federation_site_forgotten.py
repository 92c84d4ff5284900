"""A federated site and forgotten subjects (real broker, Redis and governance): their events
governed before the forget are still on `events.governed`, so the site's snapshot leaves their
rows out and its charge leaves them uncharged; a subject forgotten between rounds is left out
of the later rounds and counted in the site's privacy facts (`forgotten_during`), from which
the coordinator refuses and marks the release, and so is one forgotten after the last fit round
(at the evaluate round, which also leaves forgotten subjects' held-out rows out); without the
forgotten set the site declines."""

from __future__ import annotations

import threading
import time
from collections import Counter

import numpy as np
import redis

from lepton.generators import transactions
from services.federation.release import refuse_forgotten
from services.governance.config import GovernanceSettings
from services.trainer.config import TrainerSettings
from services.trainer.decode import SUBJECT_KEY
from services.trainer.site_rounds import SiteRounds
from services.trainer.split import is_validation
from shared.config import LeptonSettings
from shared.datasets import load_spec
from shared.federation import RoundTask
from shared.kafka import make_producer
from shared.models.features import FeatureTransform
from shared.models.gate import GateResult
from shared.models.nets import architecture, build_model
from shared.principals import Principal
from shared.releases import load_subjects, release_id
from shared.state import forgotten_key, policy_ready_key
from tests.integration.test_governance_service import Running
from tests.unit.trainer.governed import publish_governed

EVENTS = 300


def test_a_site_leaves_forgotten_subjects_out_and_counts_those_forgotten_mid_federation(
        lepton_env: LeptonSettings, redis_client: redis.Redis) -> None:
    spec = load_spec("transactions")
    events = list(transactions(EVENTS, seed=41, customers=10 * EVENTS))
    publish_governed(lepton_env, events)
    settings = TrainerSettings(trainer_dataset="transactions", trainer_federation_site="site-a",
                               trainer_charge_timeout_s=60.0)
    # a subject with one event, a training one: forgotten before the federation
    per_subject = Counter(e.subject_id for e in events)
    before = next(e.subject_id for e in events if per_subject[e.subject_id] == 1
                  and not is_validation(e.event_id, settings.trainer_val_percent))
    transform = FeatureTransform.from_spec(spec)
    arch = architecture(spec.model.kind, transform.dim, spec.model.hidden)
    weights = {k: v.numpy() for k, v in build_model(arch).state_dict().items()}

    def task(number: int) -> RoundTask:
        return RoundTask(federation="fed-forgotten", model="fed-model", dataset=spec.name,
                         spec_hash=spec.spec_hash(), round=number, rounds=3, kind="fit",
                         sites=("site-a",), deadline=time.time() + 300, architecture=arch,
                         feature_transform=transform.to_dict(), local_epochs=1, minibatch=64,
                         learning_rate=0.1, clip_norm=1.0, epsilon=1.0)

    forgotten = forgotten_key(lepton_env)
    redis_client.sadd(forgotten, before)
    stop = threading.Event()
    rounds = SiteRounds(settings, spec, Principal.load(settings, "trainer"),
                        make_producer(settings), stop)
    running = Running(GovernanceSettings(), None)
    try:
        state = rounds.prepare(task(1))
    finally:
        running.close()
    assert state.declined == "", state.declined
    subjects = state.snapshot.subjects
    assert before not in subjects
    assert (state.snapshot.forgotten, state.snapshot.forgotten_subjects) == (1, 1)
    charged = load_subjects(redis_client, lepton_env, spec.name,
                            release_id("fed-model", "federation", "fed-forgotten", "site-a"))
    assert charged is not None and before not in charged and len(charged) == len(subjects)

    first, _ = rounds.fit(task(1), state, weights)
    assert first.kind == "fit" and "forgotten_during" not in first.privacy
    during = subjects[0]  # forgotten after round 1 trained on it
    redis_client.sadd(forgotten, during)
    second, update = rounds.fit(task(2), state, weights)
    assert second.kind == "fit" and second.num_examples == first.num_examples - 1
    assert during not in state.snapshot.subjects
    assert second.privacy["forgotten_during"] == 1
    assert all(np.isfinite(v).all() for v in update.values())
    assert refuse_forgotten(GateResult(True), {"site-a": second.privacy, "site-b": {}}) == \
        GateResult(False, ["contains_forgotten: subjects forgotten during the federation, "
                           "after earlier rounds trained on them (site-a: 1)"])
    assert refuse_forgotten(GateResult(True), {"site-a": first.privacy}).promoted

    # forgotten after the last fit round: the evaluate round counts it and leaves out the
    # held-out rows of forgotten subjects
    held_out = [str(row[SUBJECT_KEY]) for row in state.snapshot.validation]
    trained = next(s for s in state.snapshot.subjects if s not in held_out)
    only_held_out = next(s for s in held_out
                         if held_out.count(s) == 1 and s not in state.snapshot.subjects)
    redis_client.sadd(forgotten, trained, only_held_out)
    evaluated = rounds.evaluate(
        task(4).model_copy(update={"kind": "evaluate"}), state,
        {f"candidate.{k}": v for k, v in weights.items()})
    assert evaluated.kind == "evaluate" and evaluated.num_examples == len(held_out) - 1
    assert evaluated.privacy["forgotten_during"] == 2

    redis_client.delete(policy_ready_key(lepton_env))  # Redis lost the set: nobody can tell
    third, _ = rounds.fit(task(3), state, weights)
    assert third.kind == "declined" and third.reason.startswith("forgotten_unknown")
    unknown = rounds.evaluate(task(4).model_copy(update={"kind": "evaluate"}), state, {})
    assert unknown.kind == "declined" and unknown.reason.startswith("forgotten_unknown")
    later = rounds.prepare(task(1).model_copy(update={"federation": "fed-later"}))
    assert later.declined.startswith("forgotten_unknown") and later.snapshot.train == []
