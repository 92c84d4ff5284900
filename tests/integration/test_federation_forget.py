"""Forgetting reaches federated models: `lepton forget` at a site names each federation the
site trained the subject's data for (found in its release log, told apart from local releases by
the charge's signed actor) and records them in the `subject_forgotten` decision; `lepton models
mark-forgotten RELEASE` on the coordinator's registry marks every federated version charged
under that site release and every version warm-started from one, and nothing else."""

from __future__ import annotations

import time
from pathlib import Path

import redis

from services.governance.config import GovernanceSettings
from shared.config import LeptonSettings
from shared.decisions import publish_decision
from shared.kafka import make_producer
from shared.models.nets import architecture, build_model
from shared.models.registry import ModelCard, Registry
from shared.principals import Principal
from shared.pseudonym import load_pseudonymizer
from shared.releases import SITE_ACTOR, read_verdict
from tests.helpers import lepton, release_charge
from tests.integration.test_governance_releases import (  # noqa: F401 (fixture)
    CURVE,
    DELTA,
    ONE,
    specs,
)
from tests.integration.test_governance_service import Running, _records


def _charged(client: redis.Redis, settings: LeptonSettings, release: str) -> None:
    deadline = time.monotonic() + 30
    while (verdict := read_verdict(client, settings, "central", release)) is None:
        assert time.monotonic() < deadline, f"no verdict for {release}"
        time.sleep(0.05)
    assert verdict["status"] == "charged", verdict


def test_a_site_names_its_federations_and_the_coordinator_marks_them(
        lepton_env: LeptonSettings, specs: Path, redis_client: redis.Redis,  # noqa: F811
        tmp_path: Path) -> None:
    pseudonym = load_pseudonymizer(lepton_env).of
    trainer = Principal.load(lepton_env, "trainer")
    producer = make_producer(lepton_env)
    running = Running(GovernanceSettings(), None)
    try:
        for release, actor, who in (("fed-share-a", f"{SITE_ACTOR}site-a", ["ann", "bob"]),
                                    ("fed-share-b", f"{SITE_ACTOR}site-a", ["bob"]),
                                    ("local-1", "trainer", ["ann"])):
            decision = release_charge(redis_client, lepton_env, release,
                                      [pseudonym(s) for s in who], epsilon=ONE, delta=DELTA,
                                      curve=CURVE, sample_rate=0.1, steps=100)
            decision = decision.model_copy(update={"actor": actor})
            publish_decision(producer, lepton_env, decision, signer=trainer)
            _charged(redis_client, lepton_env, release)
        out = lepton("forget", "ann").stdout
        deadline = time.monotonic() + 30
        while not (forgotten := [r for r in _records(lepton_env)
                                 if r["kind"] == "subject_forgotten"]):
            assert time.monotonic() < deadline, "no subject_forgotten record"
            time.sleep(0.1)
    finally:
        running.close()
    named = [line for line in out.splitlines() if "federated model" in line]
    assert named == [
        "not reached: federated model central: this site trained the subject's data for a "
        "federation (release fed-share-a); the coordinator's operator marks every version "
        "from it with `lepton models mark-forgotten fed-share-a`"], out
    assert forgotten[0]["detail"]["federated_releases"] == ["fed-share-a"]

    # the coordinator's own registry: another Redis prefix and data directory
    coordinator = {"LEPTON_REDIS_PREFIX": f"{lepton_env.redis_prefix}coordinator:",
                   "LEPTON_DATA_DIR": str(tmp_path / "coordinator")}
    registry = Registry(LeptonSettings(redis_prefix=coordinator["LEPTON_REDIS_PREFIX"],
                                       data_dir=tmp_path / "coordinator"))
    arch = architecture("logistic", 3, [])

    def save(sites: dict[str, str], parent: int | None) -> int:
        privacy = {"mode": "federated", "sites": {s: {"release_id": r, "epsilon": ONE}
                                                  for s, r in sites.items()}}
        return registry.save(ModelCard(
            model="central", dataset="central", spec_hash="x", architecture=arch,
            feature_transform={}, metrics={}, status="promoted", privacy=privacy,
            parent_version=parent), build_model(arch).state_dict()).version

    first = save({"site-a": "fed-share-a", "site-b": "other-site"}, None)
    warm = save({"site-a": "fed-share-c", "site-b": "other-site-2"}, first)
    apart = save({"site-a": "fed-share-b"}, None)
    marked = lepton("models", "mark-forgotten", "fed-share-a", env=coordinator).stdout
    assert [registry.contains_forgotten("central", v) for v in (first, warm, apart)] == \
        [True, True, False]
    assert f"model central v{first}: charged under release fed-share-a" in marked
    assert f"model central v{warm}: warm-started from v{first}" in marked
    unknown = lepton("models", "mark-forgotten", "no-such-release", env=coordinator,
                     check=False)
    assert unknown.returncode == 1
    assert "was charged under no-such-release" in unknown.stderr
