"""Federated training with secure aggregation on (LEPTON_FEDERATION_SECURE_AGGREGATION) across
the three data owners of tests/integration/federation_world.py.

- 10 rounds (the default, as the plain federation test: with 4 the DP-trained model sometimes
  missed the gate's fairness bound): the model is released through the same gate; every fit
  answer the coordinator received is masked uint64 words, and no site's plain clipped update
  (as float32 bytes, nor as its fixed-point words) is anywhere in the bytes of
  `federation.updates`; each round's change of the global model (the weights of the next fit
  task) equals plain FedAvg over the sites' unmasked clipped updates (recorded at the sites)
  within quantization error.
- A site frozen after round 1 and killed while round 2 runs: rounds 2 and 3 complete with the
  other two, the dead site's pairwise masks removed from the survivors' revealed seeds and the
  survivors' self masks from their own; every round has its unmask step.
- The same site frozen after its round-1 masked update, before the unmask: round 1 completes
  with all three updates, the lost site's self seed rebuilt from the shares it sealed to the
  other two.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from services.federation.aggregate import fedavg
from services.trainer.site_rounds import Federation, SiteRounds
from shared.allowlist import AllowList
from shared.federation import TASK_KINDS, UPDATE_KINDS, Arrays, RoundTask, SiteUpdate, decode
from shared.principals import principals_dir
from shared.secagg import quantize
from shared.topics import Topics
from tests.helpers import read_topic
from tests.integration.federation_world import (
    SITES,
    World,
    federate,
    federate_killing_site_c,
)

pytestmark = pytest.mark.slow
ROUNDS = 10
SEEN: dict[tuple[str, int], tuple[int, Arrays]] = {}


class RecordingRounds(SiteRounds):
    """The site's real rounds; each plain clipped update is also kept for the test."""

    def fit(self, task: RoundTask, state: Federation, tensors: Arrays
            ) -> tuple[SiteUpdate, Arrays]:
        update, plain = super().fit(task, state, tensors)
        SEEN[(self.site, task.round)] = (update.num_examples,
                                         {k: np.array(v) for k, v in plain.items()})
        return update, plain


def _records(world: World, topic: str, allow: AllowList, cls: Any) -> list[Any]:
    out = []
    # idle 3 s: the test counts what it reads, and a first fetch can take over a second
    for record in read_topic(world.coordinator, topic, idle=3.0, committed_only=False):
        out.append((record.value, *decode(record.value, list(record.headers.items()), allow,
                                          cls)))
    return out


def test_secure_rounds_release_and_hide_each_sites_update(world: World) -> None:
    settings = world.coordinator.model_copy(update={"federation_rounds": ROUNDS,
                                                    "federation_secure_aggregation": True})
    outcome = federate(world, settings, "fed-secure", RecordingRounds)
    assert outcome.status == "promoted", outcome.reason
    card = outcome.card
    assert card is not None and outcome.rounds == ROUNDS
    assert card.privacy["secure_aggregation"].startswith("double masking")
    federation = card.lineage["federation"]
    assert [r["sites"] for r in federation["rounds"]] == [list(SITES)] * ROUNDS
    assert all(r["secure_aggregation"] and r["unmasked"] == [] for r in federation["rounds"])
    assert federation["dropped"] == []
    # what the coordinator received: masked words only, no site's plain update
    topics = Topics(settings.topic_prefix)
    allow = AllowList(settings.sites_path(), dict.fromkeys(SITES, UPDATE_KINDS))
    updates = _records(world, topics.federation_updates, allow, SiteUpdate)
    fits = [(u, t) for _, u, t, _ in updates if u.kind == "fit"]
    assert len(fits) == len(SITES) * ROUNDS
    assert sorted(SEEN) == sorted((u.site, u.round) for u, _ in fits)
    assert all(v.dtype == np.uint64 for _, t in fits for v in t.values())
    assert all(u.update_norm is None for u, _ in fits)
    blob = b"\n".join(value for value, *_ in updates)
    for (site, _), (count, plain) in SEEN.items():
        words = quantize(plain, count, len(SITES))
        for name, value in plain.items():
            assert np.any(value != 0), (site, name)
            assert value.astype(np.float32).tobytes() not in blob, (site, name)
            assert words[name].tobytes() not in blob, (site, name)
    # each round's aggregate is FedAvg of the unmasked clipped updates
    allow_tasks = AllowList(principals_dir(settings), {"federation": TASK_KINDS})
    tasks = _records(world, topics.federation_rounds, allow_tasks, RoundTask)
    weights = {t.round: w for _, t, w, _ in tasks if t.kind == "fit"}
    # control: the same scan finds plain float tensors where they are sent (the global model)
    sent = b"\n".join(value for value, *_ in tasks)
    assert all(v.astype(np.float32).tobytes() in sent for v in weights[2].values())
    # the bytes the card reports are the messages' bytes, the key exchange counted apart
    def moved(kind: str, number: int) -> int:
        return sum(len(v) for v, t, *_ in tasks + updates if t.kind == kind and t.round == number)

    assert card.training["key_exchange_bytes"] == moved("keys", 0) > 0
    # every secure round has an unmask step: the survivors' self seeds leave only then
    assert card.training["bytes_per_round"] == [moved("fit", n) + moved("unmask", n)
                                                for n in range(1, ROUNDS + 1)]
    assert all(moved("unmask", n) > 0 for n in range(1, ROUNDS + 1))
    final = {k[len("candidate."):]: v for _, t, w, _ in tasks if t.kind == "evaluate"
             for k, v in w.items() if k.startswith("candidate.")}
    for number in range(1, ROUNDS + 1):
        after = weights.get(number + 1, final)
        expected, _ = fedavg([(SEEN[(s, number)][1], SEEN[(s, number)][0]) for s in SITES],
                             settings.federation_clip_norm, 0.0)
        for name, value in expected.items():
            step = after[name].astype(np.float64) - weights[number][name]
            assert np.max(np.abs(step - value)) < 1e-5, (number, name)


@pytest.mark.parametrize("last_answer", ["unmask", "fit"])
def test_a_site_killed_mid_round_is_unmasked_by_the_survivors(world: World, tmp_path: Path,
                                                              last_answer: str) -> None:
    settings = world.coordinator.model_copy(update={
        "federation_rounds": 3, "federation_round_timeout_s": 8.0,
        "federation_first_round_timeout_s": 90.0, "federation_secure_aggregation": True})
    # frozen after its round-1 unmask answer, or after its round-1 masked update (then round
    # 1 sums all three, and site-c's self seed is rebuilt from the shares it sealed to the
    # others: a wrong one would leave the sum masked, far beyond the clip bound, and refused)
    frozen = threading.Event()

    class AfterSiteCFreezes(SiteRounds):
        """Round 1's fit answered only once site-c is frozen: the unmask task (sent when all
        three fits are in) cannot reach site-c before it stops."""

        def fit(self, task: RoundTask, state: Federation, tensors: Arrays
                ) -> tuple[SiteUpdate, Arrays]:
            if task.round == 1 and last_answer == "fit" and not frozen.wait(120):
                raise RuntimeError("site-c was not frozen in time")
            return super().fit(task, state, tensors)

    outcome = federate_killing_site_c(world, settings, f"fed-secure-lost-{last_answer}",
                                      tmp_path / "site-c.log", rounds=AfterSiteCFreezes,
                                      last_answer=last_answer, frozen=frozen)
    assert outcome.status in ("promoted", "refused"), outcome.reason
    assert outcome.rounds == 3
    federation = outcome.card.lineage["federation"]
    assert federation["sites"]["site-c"]["rounds"] == [1]
    assert federation["sites"]["site-a"]["rounds"] == [1, 2, 3]
    rounds = federation["rounds"]
    assert [r["missing"] for r in rounds] == [[], ["site-c"], ["site-c"]]
    assert [r["unmasked"] for r in rounds] == [[], ["site-c"], ["site-c"]]
    assert [r["sites"] for r in rounds] == [list(SITES)] + [["site-a", "site-b"]] * 2
    assert [r.get("rebuilt", []) for r in rounds] == [
        ["site-c"] if last_answer == "fit" else [], [], []]
    assert not any("refused" in r for r in rounds)
    # the unmask step (a task and the survivors' seeds) is in every round's bytes
    assert all(r["bytes_unmask"] > 0 for r in rounds)
    assert outcome.card.training["bytes_per_round"] == [
        r["bytes_out"] + r["bytes_in"] + r["bytes_unmask"] for r in rounds]
