"""Federated training across three data owners (tests/integration/federation_world.py: each
site its own topics, Redis prefix, keys, ingest and governance over its own non-IID share of
18,000 `transactions`; the coordinator on its own broker).

- 10 FedAvg rounds: the released model's ROC-AUC on 30,000 fresh transactions is within 0.02
  of the same DP-SGD recipe trained centrally on the union of the sites' training rows; no
  event id, transaction id, customer id, e-mail or card number of one site is anywhere in
  another site's topics or the coordinator's (byte scan); each site's own ledger charged every
  one of its training customers exactly the ε its card entry states; the card lists each
  site's rounds, samples and ε.
- A site frozen after round 1 and killed while round 2 runs: rounds 2 and 3 complete with the
  other two (quorum), the dead site's absence is recorded, the model is released.
- Subjects forgotten mid-federation (between fit rounds at one site, after the last fit round at
  another): the release is refused and marked `contains_forgotten`, naming both sites.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from lepton.generators import transactions
from services.federation.aggregate import site_level_epsilon
from services.governance.releases import ReleaseLedger
from services.trainer.decode import SUBJECT_KEY
from services.trainer.dp import Plan, fit_private
from services.trainer.site_rounds import Federation, SiteRounds
from services.trainer.split import is_validation
from shared.datasets import load_spec
from shared.federation import Arrays, RoundTask, SiteUpdate
from shared.models.features import FeatureTransform
from shared.models.nets import build_model, predict_proba
from shared.models.registry import Registry
from shared.releases import verdicts_key
from shared.state import forgotten_key, make_redis
from tests.integration.federation_world import (
    SITES,
    World,
    federate,
    federate_killing_site_c,
)

pytestmark = pytest.mark.slow


def _auc(net: torch.nn.Module, transform: FeatureTransform, rows: list[dict[str, Any]]) -> float:
    scores = predict_proba(net.eval(), torch.from_numpy(transform.transform(rows))).numpy()
    return float(roc_auc_score(transform.labels(rows), scores))


def _centralised(world: World, transform: FeatureTransform, runs: int = 2) -> list[Any]:
    """The sites' DP-SGD recipe (same ε, minibatch, total epochs, local SGD) on the union."""
    settings = world.coordinator
    spec = load_spec("transactions")
    rows = [dict(e.payload) for site in world.sites.values() for e in site.events
            if not is_validation(e.event_id, 20)]
    x, y = torch.from_numpy(transform.transform(rows)), torch.from_numpy(transform.labels(rows))
    nets = []
    for _ in range(runs):
        net = build_model({"kind": "mlp", "input_dim": transform.dim,
                           "hidden": list(spec.model.hidden)})
        plan = Plan.make(len(x), settings.federation_minibatch,
                         round(settings.federation_rounds * settings.federation_local_epochs),
                         spec.privacy.epsilon_per_release, spec.privacy.delta, 1.0, 1)
        fit_private(net, torch.optim.SGD(net.parameters(), lr=settings.federation_learning_rate),
                    x, y, plan, world=1)
        nets.append(net)
    return nets


# A card number stands alone: a fraction's digits ("0.4698766765283207", a metric in the promoted
# card) and a run inside a hex or base64 string are not one.
TOKENS = (rb"transactions-11-\d{8}", rb"tx-11-\d{8}", rb"cust-\d{6}",
          rb"[a-z]+\.[a-z]+\d+@example\.com", rb"(?<![0-9A-Za-z.+/])4\d{15}(?![0-9A-Za-z])")


def _tokens(blob: bytes) -> set[bytes]:
    return {m for pattern in TOKENS for m in re.findall(pattern, blob)}


def _site_tokens(world: World, name: str) -> set[bytes]:
    out: set[bytes] = set()
    for env in world.sites[name].events:
        p = env.payload
        out |= {env.event_id.encode(), str(p["transaction_id"]).encode(),
                str(p["customer_id"]).encode(), str(p["email"]).encode(),
                str(p["card_number"]).encode()}
    return out


def test_ten_rounds_match_centralised_and_nothing_crosses(world: World) -> None:
    outcome = federate(world, world.coordinator, "fed-main")
    assert outcome.status == "promoted", outcome.reason
    card = outcome.card
    assert card is not None and outcome.rounds == 10
    registry = Registry(world.coordinator)
    _, state = registry.load(card.model, card.version)
    assert registry.live(card.model) == card.version
    # utility: fresh transactions none of the sites had
    transform = FeatureTransform.from_dict(card.feature_transform)
    fresh = [dict(e.payload) for e in transactions(30_000, seed=99, customers=120_000)]
    net = build_model(card.architecture)
    net.load_state_dict(state)
    federated = _auc(net, transform, fresh)
    central = [_auc(n, transform, fresh) for n in _centralised(world, transform)]
    print(f"\nfederated ROC-AUC {federated:.4f} (pooled held-out {card.metrics['roc_auc']:.4f})"
          f", centralised {np.round(central, 4).tolist()}; bytes per round "
          f"{card.training['bytes_per_round'][:2]}…")
    assert abs(federated - float(np.mean(central))) <= 0.02
    # lineage: each site's rounds, samples and ε; never a row
    spec = load_spec("transactions")
    sites = card.lineage["federation"]["sites"]
    for name in SITES:
        train = [e for e in world.sites[name].events if not is_validation(e.event_id, 20)]
        assert sites[name]["rounds"] == list(range(1, 11))
        assert sites[name]["samples"] == len(train)
        assert 0 < card.privacy["sites"][name]["epsilon"] <= spec.privacy.epsilon_per_release
    assert card.epsilon == max(p["epsilon"] for p in card.privacy["sites"].values())
    assert card.lineage["federation"]["dropped"] == []
    # each site's own ledger: every training customer charged the site's ε, once
    for name in SITES:
        site = world.sites[name]
        stated = card.privacy["sites"][name]
        spent = ReleaseLedger(make_redis(site.settings), site.settings).subject_epsilons(
            "transactions", spec.privacy.delta)
        assert len(spent) == sites[name]["samples"]
        assert min(spent.values()) == pytest.approx(stated["epsilon"], rel=1e-9)
        assert max(spent.values()) == pytest.approx(stated["epsilon"], rel=1e-9)
        verdicts = make_redis(site.settings).hkeys(verdicts_key(site.settings, "transactions"))
        assert verdicts == [stated["release_id"].encode()]
    # the byte scan: no site's identifiers outside its own topics
    tokens = {name: _site_tokens(world, name) for name in SITES}
    found = {name: _tokens(world.topics_bytes(site.settings))
             for name, site in world.sites.items()}
    for name in SITES:
        assert found[name] & tokens[name], f"the scan finds nothing on {name}'s own topics"
        for other in SITES:
            if other != name:
                assert not found[name] & tokens[other], f"{other}'s data on {name}'s topics"
    coordinator = world.topics_bytes(world.coordinator)
    assert len(coordinator) > 100_000
    assert not _tokens(coordinator), "site data on the coordinator's topics"


def test_a_site_killed_mid_round_leaves_the_round_to_the_quorum(world: World,
                                                                tmp_path: Path) -> None:
    settings = world.coordinator.model_copy(update={
        "federation_rounds": 3, "federation_round_timeout_s": 8.0,
        "federation_first_round_timeout_s": 90.0,
        "federation_noise_multiplier": 0.01})
    outcome = federate_killing_site_c(world, settings, "fed-quorum", tmp_path / "site-c.log")
    assert outcome.status in ("promoted", "refused"), outcome.reason
    assert outcome.rounds == 3
    federation = outcome.card.lineage["federation"]
    assert federation["sites"]["site-c"]["rounds"] == [1]
    assert federation["sites"]["site-a"]["rounds"] == [1, 2, 3]
    assert [r["missing"] for r in federation["rounds"]] == [[], ["site-c"], ["site-c"]]
    assert [r["sites"] for r in federation["rounds"]][1:] == [["site-a", "site-b"]] * 2
    # the server's noise: Flower's calibration over the last round's weights, and its site-level
    # ε from the RDP accountant
    client = outcome.card.privacy["client_level"]
    counts = [federation["sites"][s]["samples"] for s in ("site-a", "site-b")]
    assert client["noise_std"] == pytest.approx(0.01 * settings.federation_clip_norm
                                                * max(counts) / sum(counts))
    assert client["site_epsilon"] == pytest.approx(site_level_epsilon(0.01, 3, 1e-5))


class _Forgetting(SiteRounds):
    """A site whose owner runs `lepton forget` mid-federation: site-a for a subject round 1
    trained on, before round 2's fit; site-b for one of its training subjects after its last fit
    round, before it evaluates, and for one of its held-out subjects."""

    forgotten: ClassVar[dict[str, list[str]]] = {}

    def _forget(self, subject: str) -> None:
        self.redis.sadd(forgotten_key(self.settings), subject)
        self.forgotten.setdefault(self.site, []).append(subject)

    def fit(self, task: RoundTask, state: Federation, tensors: Arrays
            ) -> tuple[SiteUpdate, Arrays]:
        if self.site == "site-a" and task.round == 2 and self.site not in self.forgotten:
            self._forget(state.snapshot.subjects[0])
        return super().fit(task, state, tensors)

    def evaluate(self, task: RoundTask, state: Federation, tensors: Arrays) -> SiteUpdate:
        if self.site == "site-b" and self.site not in self.forgotten:
            self._forget(state.snapshot.subjects[0])
            self._forget(str(state.snapshot.validation[0][SUBJECT_KEY]))
        return super().evaluate(task, state, tensors)


def test_subjects_forgotten_mid_federation_refuse_and_mark_its_release(world: World) -> None:
    """The whole federation, end to end: a forget between two fit rounds and one after the
    last fit round both reach the coordinator through the sites' privacy facts."""
    settings = world.coordinator.model_copy(update={
        "federation_rounds": 3, "federation_noise_multiplier": 0.01})
    _Forgetting.forgotten.clear()
    outcome = federate(world, settings, "fed-forget-mid", _Forgetting)
    assert outcome.status == "refused" and outcome.card is not None, outcome.reason
    assert outcome.rounds == 3
    assert len(_Forgetting.forgotten["site-a"]) == 1 and len(_Forgetting.forgotten["site-b"]) == 2
    assert ("contains_forgotten: subjects forgotten during the federation, after earlier rounds "
            "trained on them (site-a: 1, site-b: 1)") in outcome.card.gate["reasons"]
    sites = outcome.card.privacy["sites"]
    assert (sites["site-a"]["forgotten_during"], sites["site-b"]["forgotten_during"]) == (1, 1)
    assert "forgotten_during" not in sites["site-c"]
    registry = Registry(settings)
    assert registry.flags(outcome.card.model, outcome.card.version) == {
        "contains_forgotten": True}
    assert registry.live(outcome.card.model) != outcome.card.version
