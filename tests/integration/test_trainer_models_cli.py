"""`lepton models list|show|promote|rollback|canary|shadow` against a registry the trainer
wrote: the live pointer moves, announcements carry the action, decisions reach the audit
topic, and a tampered artifact is refused."""

from __future__ import annotations

import json

import orjson

from services.governance.admission import ALLOWED, Admitted, admit
from shared.allowlist import AllowList
from shared.config import LeptonSettings
from shared.events import ModelAnnouncement, decode
from shared.models.registry import WEIGHTS_FILE, Registry
from shared.principals import Principal, public_keys_dir
from shared.topics import Topics
from tests.helpers import free_port, lepton, read_topic
from tests.unit.trainer.governed import (
    governed_breast_cancer,
    publish_governed,
    run_trainer,
    trainer_settings,
)


def test_models_commands(lepton_env: LeptonSettings) -> None:
    assert lepton("models", "list").stdout.startswith(
        f"no models in the registry at {lepton_env.registry_path()}")
    topics = Topics(lepton_env.topic_prefix)
    publish_governed(lepton_env, governed_breast_cancer())
    assert run_trainer(trainer_settings(trainer_cycle_rows=300)) == [1, 2]
    registry = Registry(lepton_env)
    before = len(read_topic(lepton_env, topics.models, idle=1.0))

    listing = lepton("models", "list").stdout
    assert "breast_cancer (live: " in listing
    assert " v1 " in listing
    assert " v2 " in listing
    typo = lepton("models", "list", "--model", "breast_cancr", check=False)
    assert typo.returncode == 2 and "no model 'breast_cancr'" in typo.stderr
    live_before = registry.live("breast_cancer")  # 2 unless the gate refused v2
    lepton("models", "promote", "1")
    assert registry.live("breast_cancer") == 1
    lepton("models", "promote", "2", "--model", "breast_cancer")
    assert registry.live("breast_cancer") == 2
    assert "rolled back from v2 to v1" in lepton("models", "rollback").stdout
    assert registry.live("breast_cancer") == 1
    lepton("models", "canary", "2", "--share", "0.25")
    lepton("models", "shadow", "2")
    card = json.loads(lepton("models", "show", "2").stdout)
    assert card["version"] == 2
    assert card["signature"]
    # the privacy object names every fact the issue asks for; this spec copy is non-private
    assert {"mode", "epsilon", "delta", "accountant", "sampling", "max_events_per_subject",
            "noise_multiplier", "secure_rng"} <= set(card["privacy"])
    assert (card["privacy"]["mode"], card["privacy"]["epsilon"]) == ("non-private", None)
    assert card["privacy"]["non_private"] is True

    announced = [decode(ModelAnnouncement, r.value)
                 for r in read_topic(lepton_env, topics.models, idle=1.0)][before:]
    assert [(a.version, a.action, a.share) for a in announced] == [
        (1, "rollback" if live_before == 2 else "promote", None), (2, "promote", None),
        (1, "rollback", None),
        (2, "canary", 0.25), (2, "shadow", None)]
    decisions = [orjson.loads(r.value) for r in
                 read_topic(lepton_env, topics.audit_requests, idle=1.0)]
    manual = sorted((d["kind"], d["detail"]["version"]) for d in decisions
                    if d["actor"].startswith("cli:"))  # keyed by kind: partitions differ
    assert manual == [("model_promoted", 1), ("model_promoted", 2), ("model_rolled_back", 1)]
    # the operator signs what the CLI says, the trainer what it decided; governance admits both
    operator, trainer = (Principal.load(lepton_env, "operator"),
                         Principal.load(lepton_env, "trainer"))
    assert {a.signer_key_id for a in announced} == {operator.key_id}
    assert [a.sequence for a in announced] == sorted({a.sequence for a in announced})
    allow = AllowList(public_keys_dir(lepton_env), ALLOWED)
    for record in read_topic(lepton_env, topics.audit_requests, idle=1.0):
        admitted = admit(record.value, lambda _: True, 100.0, allow)
        assert isinstance(admitted, Admitted), admitted
        cli = admitted.decision.actor.startswith("cli:")
        assert admitted.principal.name == ("operator" if cli else "trainer")
        assert admitted.decision.key_id == (operator if cli else trainer).key_id

    # a decision that cannot be sent changes nothing: the pointer stays, nothing is announced
    down = {"LEPTON_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}"}
    for command in (("promote", "2"), ("rollback", "--to", "2")):
        refused = lepton("models", *command, env=down, check=False, timeout=90)
        assert refused.returncode == 69, refused.stderr[-2000:]
        assert refused.stderr.splitlines()[-1].startswith("error: nothing changed: the model_")
        assert "run it again once the broker is reachable" in refused.stderr
        assert registry.live("breast_cancer") == 1
    assert len(read_topic(lepton_env, topics.models, idle=1.0)) == before + len(announced)

    # a version trained on a forgotten subject's data answers only when the operator says so
    registry.mark("breast_cancer", 2, contains_forgotten=True)
    for command in (("promote", "2"), ("rollback", "--to", "2"), ("canary", "2"),
                    ("shadow", "2")):
        refused = lepton("models", *command, check=False)
        assert refused.returncode == 1, refused.stderr[-2000:]
        assert "error: breast_cancer v2 is marked contains_forgotten" in refused.stderr
    assert "contains_forgotten" in lepton("models", "list").stdout
    assert "announced as shadow" in lepton("models", "shadow", "2", "--allow-forgotten").stdout
    assert registry.live("breast_cancer") == 1

    path = registry.version_dir("breast_cancer", 2) / WEIGHTS_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))
    shown = lepton("models", "show", "2", check=False)
    assert shown.returncode == 1
    assert "sha256" in shown.stderr
    refused = lepton("models", "promote", "2", check=False)
    assert refused.returncode == 1
    assert registry.live("breast_cancer") == 1
