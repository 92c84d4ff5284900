"""Ingest's key store and ciphers: AEAD field encryption, tamper and move detection, rotation,
shredding, tokens."""

from __future__ import annotations

import os
import stat

import orjson
import pytest
import redis

from services.ingest.ciphers import DataKey, is_token, parse_ciphertext
from services.ingest.keyring import MASTER_KEYS_ENV, LocalKms
from services.ingest.keystore import KeyStore
from services.ingest.rewrap import master_key_usage, rewrap
from shared.config import LeptonSettings
from shared.crypto import CryptoError, KeyDestroyed, KmsError, b64d, b64e


@pytest.fixture
def settings(redis_prefix: str, tmp_path: os.PathLike[str]) -> LeptonSettings:
    from tests.conftest import REDIS_URL

    return LeptonSettings(redis_url=REDIS_URL, redis_prefix=redis_prefix,
                          data_dir=tmp_path, kafka_bootstrap="unused:1")


@pytest.fixture
def store(settings: LeptonSettings) -> KeyStore:
    return KeyStore(settings)


def test_round_trip_and_the_ciphertext_names_its_keys(
    store: KeyStore, settings: LeptonSettings
) -> None:
    text = store.encrypt_for("alice", "ev-1", "email", "alice@example.com")
    version, master_id, key_id, _ = text.split(":")
    assert (version, master_id) == ("enc1", store.kms.active_key_id())
    assert key_id == store.data_key_id("alice")
    assert "alice" not in text
    assert store.decrypt_field("ev-1", "email", text) == "alice@example.com"
    assert KeyStore(settings).decrypt_field("ev-1", "email", text) == "alice@example.com"


def test_every_flipped_bit_fails(store: KeyStore) -> None:
    text = store.encrypt_for("alice", "ev-1", "email", "alice@example.com")
    header, body = text.rsplit(":", 1)
    blob = b64d(body)
    for index in range(len(blob)):
        for bit in (0, 7):
            spoiled = bytearray(blob)
            spoiled[index] ^= 1 << bit
            with pytest.raises(CryptoError):
                store.decrypt_field("ev-1", "email", f"{header}:{b64e(bytes(spoiled))}")


def test_a_ciphertext_moved_to_another_event_field_or_subject_fails(store: KeyStore) -> None:
    text = store.encrypt_for("alice", "ev-1", "email", "alice@example.com")
    with pytest.raises(CryptoError):
        store.decrypt_field("ev-2", "email", text)
    with pytest.raises(CryptoError):
        store.decrypt_field("ev-1", "name", text)
    other = store.encrypt_for("bob", "ev-1", "email", "bob@example.com")
    bob_key = other.split(":")[2]
    version, master, _, body = text.split(":")
    with pytest.raises(CryptoError):
        store.decrypt_field("ev-1", "email", f"{version}:{master}:{bob_key}:{body}")
    with pytest.raises(CryptoError):
        store.decrypt_field("ev-1", "email", "enc1:garbage")


def test_rotation_keeps_old_ciphertexts_readable_and_rewraps_every_key(
    store: KeyStore, settings: LeptonSettings
) -> None:
    old = store.encrypt_for("alice", "ev-1", "email", "old@example.com")
    store.encrypt_for("bob", "ev-2", "email", "bob@example.com")
    before = store.kms.active_key_id()
    running = KeyStore(settings)  # a process that started before the rotation
    new_id = LocalKms.from_settings(settings).add_key()
    report = rewrap(KeyStore(settings))
    assert (report.active, report.rewrapped, report.failed) == (new_id, 2, 0)
    assert master_key_usage(store) == {new_id: 2}
    fresh = KeyStore(settings)
    new = fresh.encrypt_for("carol", "ev-3", "email", "new@example.com")
    assert new.split(":")[1] == new_id != before
    for reader in (fresh, running):
        assert reader.decrypt_field("ev-1", "email", old) == "old@example.com"
        assert reader.decrypt_field("ev-3", "email", new) == "new@example.com"
    assert rewrap(KeyStore(settings)).rewrapped == 0


def test_forget_shreds_only_that_subject_and_no_key_is_minted_again(
    store: KeyStore, settings: LeptonSettings
) -> None:
    alice = store.encrypt_for("alice", "ev-1", "email", "alice@example.com")
    bob = store.encrypt_for("bob", "ev-2", "email", "bob@example.com")
    assert store.forget("alice") is True
    for reader in (store, KeyStore(settings)):
        with pytest.raises(KeyDestroyed):
            reader.decrypt_field("ev-1", "email", alice)
        assert reader.decrypt_field("ev-2", "email", bob) == "bob@example.com"
    keys, failures = store.data_keys(["alice", "bob"])
    assert set(keys) == {"bob"}
    assert failures == {"alice": "forgotten"}
    assert store.is_forgotten("alice")
    assert store.forget("alice") is False


def test_one_mint_call_keeps_ours_refuses_the_forgotten_and_takes_a_record_minted_first(
    store: KeyStore, settings: LeptonSettings
) -> None:
    """The batch mint: a new subject's key is ours (and opens from Redis for anyone); a subject
    forgotten in Redis only gets none; a key another process minted since our lookup wins."""
    other = KeyStore(settings)
    theirs = other.encrypt_for("dave", "ev-1", "email", "dave@example.com")
    store.redis.sadd(store._forgotten, store.pseudonyms.normal("erin"))
    keys: dict[str, DataKey] = {}
    failures: dict[str, str] = {}
    store._mint_into([(s, store.data_key_id(s)) for s in ("frank", "erin", "dave")], keys,
                     failures)
    assert (set(keys), failures) == ({"frank", "dave"}, {"erin": "forgotten"})
    assert keys["dave"].decrypt(*parse_ciphertext(theirs, "ev-1", "email")[1:]) == \
        b"dave@example.com"
    mine = keys["frank"].encrypt("ev-2", "email", "frank@example.com")
    assert other.decrypt_field("ev-2", "email", mine) == "frank@example.com"
    assert store.files.get(store.data_key_id("frank")) is not None


def test_rewrap_never_resurrects_a_key_forgotten_meanwhile(
    store: KeyStore, settings: LeptonSettings
) -> None:
    store.data_keys(["alice"])
    LocalKms.from_settings(settings).add_key()
    rotating = KeyStore(settings)
    stale = list(rotating.records())  # read before the forget lands
    store.forget("alice")
    swaps = [rotating.swap(keys=[rotating.key_prefix + key_id], args=[record, b"x.y"])
             for key_id, record in stale]
    assert swaps == [0]
    assert store.data_keys(["alice"], create=False)[0] == {}


def test_key_material_is_private_and_never_printed(
    store: KeyStore, settings: LeptonSettings
) -> None:
    keys_dir = settings.keys_path()
    for name in ("master-keys.json", "token.key"):
        assert stat.S_IMODE((keys_dir / name).stat().st_mode) == 0o600
    key = store.data_keys(["alice"])[0]["alice"]
    masters = orjson.loads((keys_dir / "master-keys.json").read_bytes())["keys"].values()
    shown = repr(key) + repr(store.kms) + str(vars(store.kms))
    assert masters
    for material in masters:
        assert material not in shown
        assert b64d(material).hex() not in shown


def test_master_keys_from_the_environment(
    settings: LeptonSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MASTER_KEYS_ENV, f"old1:{b64e(os.urandom(32))},new2:{b64e(os.urandom(32))}")
    store = KeyStore(settings)
    assert store.kms.active_key_id() == "new2"
    assert not (settings.keys_path() / "master-keys.json").exists()
    with pytest.raises(KmsError, match="LEPTON_MASTER_KEYS"):
        LocalKms.from_settings(settings).add_key()
    monkeypatch.setenv(MASTER_KEYS_ENV, "bad:c2hvcnQ")
    with pytest.raises(KmsError) as caught:
        LocalKms.from_settings(settings)
    assert "c2hvcnQ" not in str(caught.value)


def test_a_tampered_wrapped_key_in_redis_is_refused(
    store: KeyStore, settings: LeptonSettings, redis_client: redis.Redis
) -> None:
    text = store.encrypt_for("alice", "ev-1", "email", "alice@example.com")
    store.data_keys(["bob"])
    prefix = f"{settings.redis_prefix}crypto:datakey:"
    bob_record = redis_client.get(prefix + store.data_key_id("bob"))
    assert bob_record is not None
    redis_client.set(prefix + store.data_key_id("alice"), bob_record)  # another subject's key
    with pytest.raises(CryptoError):
        KeyStore(settings).decrypt_field("ev-1", "email", text)
    assert KeyStore(settings).data_keys(["alice"])[1] == {"alice": "key_unavailable"}


def test_tokens_are_per_subject_and_die_with_the_subject(
    store: KeyStore, settings: LeptonSettings
) -> None:
    keys, _ = store.data_keys(["alice", "bob"])
    alice, bob = keys["alice"], keys["bob"]
    pan = "4111111111111111"
    token = alice.tokenize("card_number", pan)
    assert token.startswith("tok2:") and is_token(token) and pan not in token
    assert token == KeyStore(settings).data_keys(["alice"])[0]["alice"].tokenize(
        "card_number", pan)
    assert token != alice.tokenize("card_number", "4111111111111112")
    assert token != alice.tokenize("iban", pan)
    # the same PAN of two subjects: unrelated tokens, no join across subjects
    assert bob.tokenize("card_number", pan) != token
    assert token.split(":")[2] != bob.tokenize("card_number", pan).split(":")[2]
    # forgetting alice destroys the only key that reproduces her token
    store.forget("alice")
    fresh = KeyStore(settings)
    assert fresh.data_keys(["alice"]) == ({}, {"alice": "forgotten"})
    assert fresh.data_keys(["alice"], create=False)[0] == {}
    assert fresh.data_keys(["bob"])[0]["bob"].tokenize("card_number", pan) == \
        bob.tokenize("card_number", pan)
    assert "token_key" not in repr(alice)
    assert "token_hash" not in repr(alice) and "KeyedHash" not in repr(alice) \
        and "HMAC" not in repr(alice)


def test_tokens_and_data_key_ids_are_the_keyed_hashes_they_always_were(
        store: KeyStore) -> None:
    """tok2 tokens and data key ids are HMAC-SHA256 values that later stages and stored keys
    rely on: each call, the first or a repeat, equals the standard library's one-shot HMAC."""
    import hmac

    raw = bytes(range(32))
    key = DataKey.from_raw("dk", "mk", raw)
    token_key = hmac.digest(raw, b"lepton-token-key", "sha256")
    for value in ("4111111111111111", "", "é", "4111111111111111"):
        expected = hmac.digest(token_key, ("card_number\0" + value).encode(), "sha256")
        assert key.tokenize("card_number", value) == "tok2:dk:" + b64e(expected[:18])
    id_key = store.pseudonyms.normal  # ids are keyed by pseudonym: raw and pseudonym agree
    assert store.data_key_id("alice") == store.data_key_id(id_key("alice"))
    assert store.data_key_id("alice") == store.data_key_id("alice") != store.data_key_id("bob")
