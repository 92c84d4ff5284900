"""Registry: atomic signed saves, verification on load (tamper, bad signature, wrong key),
loading with safetensors alone, live pointer and rollback on real Redis."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from safetensors.torch import load_file

from shared.config import LeptonSettings
from shared.models.nets import architecture, build_model
from shared.models.registry import CARD_FILE, WEIGHTS_FILE, ArtifactError, ModelCard, Registry
from shared.state import rkey


def _card(model: str = "demo") -> ModelCard:
    return ModelCard(model=model, dataset="breast_cancer", spec_hash="ab" * 32,
                     architecture=architecture("logistic", 3), feature_transform={},
                     metrics={"f1": 0.9}, status="promoted")


def _weights() -> dict[str, torch.Tensor]:
    return build_model(architecture("logistic", 3)).state_dict()


def test_save_allocates_versions_and_loads_verified(settings: LeptonSettings) -> None:
    reg = Registry(settings)
    weights = _weights()
    first = reg.save(_card(), weights)
    second = reg.save(_card(), weights)
    assert (first.version, second.version) == (1, 2)
    assert reg.versions("demo") == [1, 2]
    assert reg.models() == ["demo"]
    card, tensors = reg.load("demo", 2)
    assert card == second
    assert card.signature
    assert len(card.sha256) == 64
    assert torch.equal(tensors["layers.0.weight"], weights["layers.0.weight"])
    ann = card.announcement()
    assert ann.version == 2
    assert ann.sha256 == card.sha256
    assert ann.metrics == {"f1": 0.9}


def test_artifact_loads_with_safetensors_alone(settings: LeptonSettings) -> None:
    reg = Registry(settings)
    weights = _weights()
    card = reg.save(_card(), weights)
    folder = reg.version_dir("demo", card.version)
    tensors = load_file(str(folder / WEIGHTS_FILE))
    assert torch.equal(tensors["layers.0.bias"], weights["layers.0.bias"])
    stored = json.loads((folder / CARD_FILE).read_text())
    assert hashlib.sha256((folder / WEIGHTS_FILE).read_bytes()).hexdigest() == stored["sha256"]


def test_changed_weight_byte_is_detected(settings: LeptonSettings) -> None:
    reg = Registry(settings)
    card = reg.save(_card(), _weights())
    path = reg.version_dir("demo", card.version) / WEIGHTS_FILE
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256"):
        reg.load("demo", card.version)


def test_edited_card_or_bad_signature_is_detected(settings: LeptonSettings) -> None:
    reg = Registry(settings)
    card = reg.save(_card(), _weights())
    path = reg.version_dir("demo", card.version) / CARD_FILE
    original = path.read_text()
    edited = json.loads(original)
    edited["metrics"]["f1"] = 0.99
    path.write_text(json.dumps(edited))
    with pytest.raises(ArtifactError, match="signature"):
        reg.load("demo", card.version)
    bad = json.loads(original)
    sig = bytearray(base64.b64decode(bad["signature"]))
    sig[0] ^= 0xFF
    bad["signature"] = base64.b64encode(bytes(sig)).decode()
    path.write_text(json.dumps(bad))
    with pytest.raises(ArtifactError, match="signature"):
        reg.load("demo", card.version)
    bad["signature"] = ""
    path.write_text(json.dumps(bad))
    with pytest.raises(ArtifactError, match="unsigned"):
        reg.load("demo", card.version)


def test_other_key_is_refused(settings: LeptonSettings) -> None:
    reg = Registry(settings)
    card = reg.save(_card(), _weights())
    stranger = Ed25519PrivateKey.generate().public_key()
    with pytest.raises(ArtifactError, match="unknown key"):
        reg.load("demo", card.version, stranger)


def test_missing_version_is_an_artifact_error(settings: LeptonSettings) -> None:
    with pytest.raises(ArtifactError):
        Registry(settings).load("demo", 7)


def test_live_pointer_and_rollback(settings: LeptonSettings) -> None:
    reg = Registry(settings)
    for _ in range(3):
        reg.save(_card(), _weights())
    assert reg.live("demo") is None
    reg.set_live("demo", 1)
    reg.set_live("demo", 3)
    assert reg.live("demo") == 3
    assert reg.rollback("demo") == (3, 1)
    assert reg.live("demo") == 1
    with pytest.raises(ArtifactError):
        reg.rollback("demo")
    with pytest.raises(ArtifactError):
        reg.set_live("demo", 9)


def test_rollback_target_changes_nothing_and_rollback_skips_what_is_gone(
        settings: LeptonSettings) -> None:
    reg = Registry(settings)
    for _ in range(4):
        reg.save(_card(), _weights())
    for version in (1, 2, 3, 4, 3):
        reg.set_live("demo", version)
    shutil.rmtree(reg.version_dir("demo", 2))
    history = reg.redis.lrange(rkey(settings, "models", "demo", "history"), 0, -1)
    assert [int(v) for v in history] == [1, 2, 3, 4]
    assert reg.rollback_target("demo") == 4
    assert reg.live("demo") == 3
    assert reg.redis.lrange(rkey(settings, "models", "demo", "history"), 0, -1) == history
    assert reg.rollback("demo") == (3, 4)
    assert reg.rollback_target("demo") == 3
    assert reg.rollback("demo") == (4, 3)
    assert reg.rollback("demo") == (3, 1)  # 2 is gone from disk
    with pytest.raises(ArtifactError, match="no earlier live version"):
        reg.rollback_target("demo")


def test_versions_reindexes_from_directory(settings: LeptonSettings) -> None:
    reg = Registry(settings)
    reg.save(_card(), _weights())
    reg._redis.delete(reg._key("demo", "versions"), reg._key("demo", "cards"))
    assert reg.versions("demo") == [1]
    assert reg._indexed_versions("demo") == [1]


def test_marks_merge_and_name_a_version_that_contains_forgotten_data(
        settings: LeptonSettings) -> None:
    reg = Registry(settings)
    reg.save(_card(), _weights())
    assert (reg.flags("demo", 1), reg.contains_forgotten("demo", 1)) == ({}, False)
    reg.mark("demo", 1, reviewed=True)
    reg.mark("demo", 1, contains_forgotten=True)
    assert reg.flags("demo", 1) == {"reviewed": True, "contains_forgotten": True}
    assert reg.contains_forgotten("demo", 1)
