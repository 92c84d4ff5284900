"""shared.dlq: dead letters sealed to the DLQ public key open with its private key only; a
sealer given only the public key (compose) creates and reads no key material."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from shared.config import LeptonSettings
from shared.crypto import CryptoError, KmsError
from shared.dlq import DeadLetterOpener, DeadLetterSealer, Sealing, make_dlq_key

SECRET = b'{"email": "ada@example.com", "card_number": "4111111111111111"}'


def _settings(tmp_path: Path, **values: object) -> LeptonSettings:
    return LeptonSettings(data_dir=tmp_path / "data", kafka_bootstrap="unused:1",
                          **values)  # type: ignore[arg-type]


def _no_keyring(label: str, value: bytes) -> bytes:
    raise AssertionError("needs no keyring")


def test_sealed_letters_name_their_key_and_open_with_the_private_key_only(
        tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    sealer = DeadLetterSealer.load(settings)  # one keys directory: the pair is made here
    private = settings.keys_path() / "principals" / "dlq.key"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(private.parent.stat().st_mode) == 0o700
    value, how = sealer.seal(SECRET)
    assert how is Sealing.DLQ and value.startswith(f"dlq1:{sealer.key_id}:".encode())
    assert b"ada@example.com" not in value and value != sealer.seal(SECRET)[0]
    opener = DeadLetterOpener.load(settings, _no_keyring)
    assert opener.open(value) == SECRET
    assert sealer.seal(SECRET, forgotten=True) == (b"", Sealing.DISCARDED)
    for index in (len(f"dlq1:{sealer.key_id}:"), len(value) // 2, len(value) - 1):
        spoiled = bytearray(value)
        spoiled[index] ^= 1
        with pytest.raises(CryptoError):
            opener.open(bytes(spoiled))
    with pytest.raises(CryptoError, match="not a sealed"):
        opener.open(b"dlq1:nothing")
    # a subject-sealed (enc1) letter goes to the key store
    assert DeadLetterOpener.load(settings, lambda label, v: v[::-1]).open(b"enc1:x") == b"x:1cne"


def test_another_key_or_no_private_key_opens_nothing(tmp_path: Path) -> None:
    value, _ = DeadLetterSealer.load(_settings(tmp_path)).seal(SECRET)
    other = tmp_path / "other"
    make_dlq_key(other / "dlq.key", other / "dlq.pub")
    with pytest.raises(CryptoError, match="not to this key"):
        DeadLetterOpener.load(_settings(tmp_path, dlq_key_file=other / "dlq.key"),
                              _no_keyring).open(value)
    with pytest.raises(CryptoError, match="no DLQ private key"):
        DeadLetterOpener.load(_settings(tmp_path, dlq_key_file=tmp_path / "absent.key"),
                              _no_keyring).open(value)


def test_a_public_key_alone_seals_and_nothing_is_created(tmp_path: Path) -> None:
    keyset = tmp_path / "keyset"
    make_dlq_key(keyset / "dlq.key", keyset / "public" / "dlq.pub")
    settings = _settings(tmp_path, principals_public_dir=keyset / "public")
    value, _ = DeadLetterSealer.load(settings).seal(SECRET)
    assert not settings.keys_path().exists()  # no keyring, no platform key, no DLQ private key
    operator = _settings(tmp_path, dlq_key_file=keyset / "dlq.key")
    assert DeadLetterOpener.load(operator, _no_keyring).open(value) == SECRET
    with pytest.raises(KmsError, match=r"dlq\.pub"):  # deployed without the public key: say so
        DeadLetterSealer.load(_settings(tmp_path, principals_public_dir=tmp_path / "empty"))
