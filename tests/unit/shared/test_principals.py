"""shared.principals: per-principal keys on disk (0600 in 0700) and decision signatures over the
canonical encoding, verified on the JSON as received."""

from __future__ import annotations

import multiprocessing
import shutil
import stat
from pathlib import Path

import orjson
import pytest

from shared.config import LeptonSettings
from shared.events import Decision, encode
from shared.principals import Principal, principals_dir, sign_decision, verify_decision
from shared.signing import load_public_key


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LeptonSettings:
    monkeypatch.setenv("LEPTON_DATA_DIR", str(tmp_path / "data"))
    return LeptonSettings()


def test_key_created_once_with_private_modes(settings: LeptonSettings) -> None:
    first = Principal.load(settings, "trainer")
    again = Principal.load(settings, "trainer")
    other = Principal.load(settings, "ingest")
    directory = principals_dir(settings)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / "trainer.key").stat().st_mode) == 0o600
    assert first.key_id == again.key_id != other.key_id
    assert (directory / "trainer.pub").exists()


def test_signature_verifies_on_the_wire_bytes_and_breaks_on_any_change(
        settings: LeptonSettings) -> None:
    trainer = Principal.load(settings, "trainer")
    public = load_public_key(principals_dir(settings) / "trainer.pub")
    signed = sign_decision(trainer, Decision(kind="release_charge", actor="trainer",
                                             dataset="tiny", detail={"epsilon": 0.1}))
    assert signed.key_id == trainer.key_id
    wire = orjson.loads(encode(signed))
    assert verify_decision(public, wire)
    for field, value in (("actor", "root"), ("detail", {"epsilon": 9.0}), ("dataset", "x"),
                         ("key_id", "0" * 16), ("signature", None)):
        assert not verify_decision(public, {**wire, field: value}), field
    Principal.load(settings, "ingest")
    assert not verify_decision(load_public_key(principals_dir(settings) / "ingest.pub"), wire)


def _load_key_id(settings: LeptonSettings, out: multiprocessing.Queue[str]) -> None:
    out.put(Principal.load(settings, "trainer").key_id)


def test_concurrent_first_starts_agree_on_one_key(settings: LeptonSettings) -> None:
    """Two trainer ranks starting together once raced: one died on FileExistsError."""
    context = multiprocessing.get_context("fork")
    for _ in range(5):
        shutil.rmtree(principals_dir(settings), ignore_errors=True)
        out: multiprocessing.Queue[str] = context.Queue()
        procs = [context.Process(target=_load_key_id, args=(settings, out)) for _ in range(4)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(30)
        assert [proc.exitcode for proc in procs] == [0] * 4
        key_ids = {out.get(timeout=5) for _ in procs}
        assert len(key_ids) == 1
        assert key_ids == {Principal.load(settings, "trainer").key_id}
        assert not [p for p in principals_dir(settings).iterdir() if p.name.startswith(".")]
