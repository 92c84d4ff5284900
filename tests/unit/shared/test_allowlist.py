"""shared.allowlist: a principal whose key appears while the receiver runs is recognised at once
(not after a reload interval), a key of a principal outside the table never is, and a replaced
key replaces the old one."""

from __future__ import annotations

from pathlib import Path

from shared.allowlist import AllowList
from shared.signing import key_id, load_or_create_private_key


def _kid(directory: Path, name: str) -> str:
    return key_id(load_or_create_private_key(directory / f"{name}.key").public_key())


def test_a_key_created_after_start_is_known_at_once(tmp_path: Path) -> None:
    allow = AllowList(tmp_path, {"trainer": frozenset({"a"}), "operator": frozenset({"b"})})
    trainer = _kid(tmp_path, "trainer")
    assert allow.lookup(trainer) is not None
    operator = _kid(tmp_path, "operator")  # moments later: the first `lepton forget`
    found = allow.lookup(operator)
    assert found is not None and (found.name, found.kinds) == ("operator", frozenset({"b"}))
    assert allow.lookup(_kid(tmp_path, "ingest")) is None  # not in the table
    assert allow.lookup("0" * 16) is None


def test_a_replaced_key_replaces_the_old_one(tmp_path: Path) -> None:
    allow = AllowList(tmp_path, {"operator": frozenset({"b"})})
    old = _kid(tmp_path, "operator")
    assert allow.lookup(old) is not None
    (tmp_path / "operator.key").unlink()
    (tmp_path / "operator.pub").unlink()
    new = _kid(tmp_path, "operator")
    assert allow.lookup(new) is not None
    assert allow.lookup(old) is None
