"""Forget races with the durable key copies (real files, real Redis): a `destroy` landing between
`put`'s tombstone check and its rename, or between a restore's disk read and its write to
Redis, never leaves a forgotten subject's wrapped key readable anywhere. Each race is forced
deterministically by running the other party at exactly that point."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from services.ingest.keyfiles import WrappedKeyFiles
from services.ingest.keystore import KeyStore
from shared.config import LeptonSettings
from shared.crypto import KeyDestroyed
from tests.conftest import REDIS_URL

KEY_ID = "ab12cd34ef56ab12cd34ef56"


class DestroyAfterFirstCheck(WrappedKeyFiles):
    """`destroy` (another process's forget) runs right after `put` checked for a tombstone."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.raced = False

    def forgotten(self, key_id: str) -> bool:
        found = super().forgotten(key_id)
        if not self.raced:
            self.raced = True
            WrappedKeyFiles(self.directory).destroy(key_id)
        return found


def test_a_put_racing_with_destroy_leaves_no_record(tmp_path: Path) -> None:
    racing = DestroyAfterFirstCheck(tmp_path)
    racing.put(KEY_ID, b"mk1.wrapped")
    assert racing.raced
    files = WrappedKeyFiles(tmp_path)
    assert files.forgotten(KEY_ID)
    assert files.get(KEY_ID) is None
    assert list(files.scan()) == []
    assert not (tmp_path / KEY_ID[:2] / KEY_ID).exists()


def test_a_record_beside_a_tombstone_is_never_returned(tmp_path: Path) -> None:
    files = WrappedKeyFiles(tmp_path)
    files.put(KEY_ID, b"mk1.wrapped")
    assert files.get(KEY_ID) == b"mk1.wrapped"
    files.destroy(KEY_ID)
    (tmp_path / KEY_ID[:2] / KEY_ID).write_bytes(b"mk1.wrapped")  # e.g. a restored backup
    assert files.get(KEY_ID) is None
    assert list(files.scan()) == []
    assert files.put(KEY_ID, b"mk1.other") is True
    assert files.get(KEY_ID) is None


class ForgetAfterRead(WrappedKeyFiles):
    """`lepton forget` of `subject` runs right after a disk copy was read for restoring."""

    def __init__(self, directory: Path, settings: LeptonSettings, subject: str) -> None:
        super().__init__(directory)
        self.settings, self.subject, self.raced = settings, subject, False

    def get(self, key_id: str) -> bytes | None:
        record = super().get(key_id)
        mine = KeyStore(self.settings).data_key_id(self.subject) == key_id
        if record is not None and mine and not self.raced:
            self.raced = True
            KeyStore(self.settings).forget(self.subject)
        return record


@pytest.mark.parametrize("path", ["data_keys", "decrypt", "restore"])
def test_a_restore_racing_with_forget_puts_nothing_back_into_redis(
        path: str, redis_prefix: str, tmp_path: Path, redis_client: redis.Redis) -> None:
    settings = LeptonSettings(redis_url=REDIS_URL, redis_prefix=redis_prefix,
                              data_dir=tmp_path, kafka_bootstrap="unused:1")
    store = KeyStore(settings)
    alice = store.encrypt_for("alice", "ev-a", "email", "a@example.com")
    bob = store.encrypt_for("bob", "ev-b", "email", "b@example.com")
    alice_key = store.key_prefix + store.data_key_id("alice")
    redis_client.delete(alice_key, store.key_prefix + store.data_key_id("bob"))  # Redis lost them
    reader = KeyStore(settings)
    reader.files = ForgetAfterRead(reader.files.directory, settings, "alice")
    if path == "data_keys":
        keys, failures = reader.data_keys(["alice", "bob"], create=False)
        assert set(keys) == {"bob"} and failures == {"alice": "forgotten"}
    elif path == "decrypt":
        with pytest.raises(KeyDestroyed):
            reader.decrypt_field("ev-a", "email", alice)
    else:
        assert reader.restore() == (1, 0)
    assert reader.files.raced
    assert redis_client.get(alice_key) is None
    assert reader.files.get(store.data_key_id("alice")) is None
    assert KeyStore(settings).decrypt_field("ev-b", "email", bob) == "b@example.com"
