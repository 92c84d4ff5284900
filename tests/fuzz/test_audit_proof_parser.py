"""Fuzz the audit-proof parsers behind `lepton audit check-proof` / `check-consistency`
(services.governance.verify.check_inclusion / check_consistency): any JSON object gives a
summary or a ProofError, never another exception. Checkpoints are re-signed with a test key
after mutation so that fuzzed indices, sizes and paths reach the Merkle verification."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from services.governance.checkpoints import signed_text
from services.governance.merkle import ProofError
from services.governance.verify import check_consistency, check_inclusion
from shared.signing import key_id, sign
from tests.fuzz.conftest import corpus

KEY = Ed25519PrivateKey.generate()
PUBLIC = KEY.public_key()


def _resign(checkpoint: Any) -> None:
    if not isinstance(checkpoint, dict):
        return
    try:
        text = signed_text(str(checkpoint["log"]), int(checkpoint["partition"]),
                           int(checkpoint["tree_size"]), str(checkpoint["root"]),
                           str(checkpoint["timestamp"]))
    except (KeyError, TypeError, ValueError):
        return
    checkpoint["key_id"] = key_id(PUBLIC)
    checkpoint["signature"] = sign(KEY, text)


def _check(proof: Any, *, resign: bool = True) -> None:
    if not isinstance(proof, dict):
        return  # the CLI refuses non-objects before parsing (exit 2)
    if resign:
        for name in ("checkpoint", "old", "new"):
            _resign(proof.get(name))
    for check in (check_inclusion, check_consistency):
        try:
            summary = check(proof, PUBLIC)
        except ProofError:
            continue
        assert isinstance(summary, str)


@pytest.mark.parametrize("path", corpus("proof"), ids=lambda p: p.name)
def test_corpus_replays(path: Path) -> None:
    proof = json.loads(path.read_text())
    _check(json.loads(path.read_text()), resign=False)
    _check(proof)


scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats()
           | st.text(max_size=70) | st.sampled_from(["00" * 32, "ff" * 32, "zz", ""]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5)
                      | st.dictionaries(st.text(max_size=12), inner, max_size=5), max_leaves=25)


@settings(settings.get_profile("fuzz"))
@given(st.sampled_from(corpus("proof")), st.data())
def test_mutated_proofs(path: Path, data: st.DataObject) -> None:
    proof = json.loads(path.read_text())
    for _ in range(data.draw(st.integers(1, 4))):
        target = proof
        nested = [k for k in ("checkpoint", "old", "new") if isinstance(proof.get(k), dict)]
        if nested and data.draw(st.booleans()):
            target = proof[data.draw(st.sampled_from(nested))]
        keys = sorted(target) or ["x"]
        key = data.draw(st.sampled_from(keys) | st.text(max_size=8))
        if data.draw(st.booleans()) and key in target:
            del target[key]
        else:
            target[key] = data.draw(values)
    _check(proof)


@settings(settings.get_profile("fuzz"))
@given(st.integers(-3, 40), st.integers(-3, 40), st.lists(st.sampled_from(["00" * 32, "ab" * 32,
                                                                            "0", ""]),
                                                           max_size=8))
def test_inclusion_indices_and_paths(index: int, size: int, path: list[str]) -> None:
    cp = {"log": "l", "partition": 0, "tree_size": size, "root": "00" * 32,
          "timestamp": "t", "key_id": "", "signature": ""}
    record = json.dumps({"leaf_index": index, "partition": 0, "log": "l"})
    _check({"format": "lepton-audit-inclusion/v1", "partition": 0, "leaf_index": index,
            "tree_size": size, "record": record, "inclusion_path": path, "checkpoint": cp})
    _check({"format": "lepton-audit-consistency/v1", "old": {**cp, "tree_size": index},
            "new": cp, "consistency_path": path})


@settings(settings.get_profile("fuzz"))
@given(st.dictionaries(st.text(max_size=12), values, max_size=8))
def test_arbitrary_objects(proof: dict[str, Any]) -> None:
    _check(proof)
