"""The durable copies of wrapped data keys (a real SQLite file, real Redis): a destroyed key's
record is left in none of the store's files, a write never lands beside a tombstone (a destroy
paused inside its transaction while a put starts, and the reverse; and another process
destroying keys while one mints), a forget racing with a restore never leaves the key readable
(each race forced at exactly that point), the files are private, and a directory of the earlier
per-key files is imported."""

from __future__ import annotations

import errno
import multiprocessing
import sqlite3
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis

from services.ingest.keystore import KeyStore
from services.ingest.wrapped_keys import DB_NAME, WrappedKeys, _read_only
from shared.config import LeptonSettings
from shared.crypto import KeyDestroyed
from tests.conftest import REDIS_URL

KEY_ID = "ab12cd34ef56ab12cd34ef56"
SECRET = b"mk1.wrapped-record-that-must-vanish-0123456789"


def _store_bytes(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file())


def test_a_destroyed_record_is_left_in_none_of_the_store_files(tmp_path: Path) -> None:
    keys = WrappedKeys(tmp_path)
    keys.put_many([(KEY_ID, SECRET), *((f"k{i:023d}", b"mk1.other" * 8) for i in range(300))])
    reader = WrappedKeys(tmp_path)  # another process's connection, reading while we destroy
    assert reader.get(KEY_ID) == SECRET
    assert SECRET in _store_bytes(tmp_path)
    assert keys.destroy(KEY_ID) is True
    assert SECRET not in _store_bytes(tmp_path)
    assert keys.destroy(KEY_ID) is False
    assert reader.get(KEY_ID) is None and reader.forgotten(KEY_ID)
    assert keys.get("k" + "0" * 23) == b"mk1.other" * 8


def test_a_record_beside_a_tombstone_is_never_returned(tmp_path: Path) -> None:
    keys = WrappedKeys(tmp_path)
    keys.put(KEY_ID, b"mk1.wrapped")
    assert keys.get(KEY_ID) == b"mk1.wrapped"
    keys.destroy(KEY_ID)
    with sqlite3.connect(tmp_path / DB_NAME) as db:  # e.g. a restored backup of the table
        db.execute("INSERT INTO datakeys VALUES (?, ?)", (KEY_ID, b"mk1.wrapped"))
    assert keys.get(KEY_ID) is None
    assert keys.lookup([KEY_ID]) == ({}, {KEY_ID})
    assert list(keys.scan()) == []
    assert keys.put(KEY_ID, b"mk1.other") is True
    assert keys.get(KEY_ID) is None


def _paused_at(keys: WrappedKeys, statement: str) -> tuple[threading.Event, threading.Event]:
    """(paused, release): `keys`' connection stops before running `statement`, inside its
    transaction (holding SQLite's write lock), until `release` is set."""
    paused, release = threading.Event(), threading.Event()

    def trace(sql: str) -> None:
        if sql.startswith(statement):
            paused.set()
            assert release.wait(30)

    keys.lookup([])  # open the connection
    assert keys._db is not None
    keys._db.set_trace_callback(trace)
    return paused, release


def _in_thread(call: Callable[[], bool]) -> tuple[threading.Thread, list[bool]]:
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(call()), daemon=True)
    thread.start()
    return thread, result


@pytest.mark.parametrize("first", ["destroy", "put"])
def test_a_put_racing_with_destroy_leaves_no_record(first: str, tmp_path: Path) -> None:
    """The first party stops inside its transaction (destroy: after its tombstone, before its
    delete; put: after its insert, before its commit) while the other starts; the other must
    wait for it, and no record is left either way."""
    putter, destroyer = WrappedKeys(tmp_path), WrappedKeys(tmp_path)  # two processes' stores
    holder = destroyer if first == "destroy" else putter
    paused, release = _paused_at(holder, "DELETE FROM datakeys" if first == "destroy"
                                 else "COMMIT")
    calls: dict[str, Callable[[], bool]] = {
        "put": lambda: putter.put(KEY_ID, SECRET), "destroy": lambda: destroyer.destroy(KEY_ID)}
    second = "put" if first == "destroy" else "destroy"
    results: dict[str, list[bool]] = {}
    first_thread, results[first] = _in_thread(calls[first])
    assert paused.wait(30)
    second_thread, results[second] = _in_thread(calls[second])
    second_thread.join(0.5)
    raced = second_thread.is_alive()  # it is waiting for the first one's write lock
    release.set()
    first_thread.join(30)
    second_thread.join(30)
    assert raced
    assert not first_thread.is_alive() and not second_thread.is_alive()
    assert results["put"] == [True]
    assert results["destroy"] == [first == "put"]  # a record existed only when put came first
    files = WrappedKeys(tmp_path)
    assert files.forgotten(KEY_ID)
    assert files.get(KEY_ID) is None
    assert list(files.scan()) == []
    with sqlite3.connect(tmp_path / DB_NAME) as db:  # no row at all, not merely hidden
        assert db.execute("SELECT count(*) FROM datakeys").fetchone() == (0,)
    assert SECRET not in _store_bytes(tmp_path)


def _destroy_all(directory: Path, key_ids: list[str], started: Any) -> None:
    keys = WrappedKeys(directory)
    for key_id in key_ids:
        keys.destroy(key_id)
        started.set()


def test_minting_while_another_process_destroys_never_leaves_a_destroyed_record(
        tmp_path: Path) -> None:
    ids = [f"{i:024x}" for i in range(2000)]
    doomed = ids[::7]
    keys = WrappedKeys(tmp_path)
    keys.put_many([])  # create the database before the race
    context = multiprocessing.get_context("spawn")
    started = context.Event()
    killer = context.Process(target=_destroy_all, args=(tmp_path, doomed, started))
    killer.start()
    assert started.wait(60)
    rounds = 0
    while killer.is_alive() or rounds < 2:  # keep writing every key while they are destroyed
        for start in range(0, len(ids), 50):
            keys.put_many((k, b"mk1.r" + k.encode()) for k in ids[start:start + 50])
        rounds += 1
    killer.join(60)
    assert killer.exitcode == 0
    records, forgotten = keys.lookup(ids)
    assert forgotten == set(doomed)
    assert set(records) == set(ids) - set(doomed)
    with sqlite3.connect(tmp_path / DB_NAME) as db:  # no row at all, not merely hidden
        assert db.execute("SELECT count(*) FROM datakeys").fetchone() == (len(records),)


def test_the_store_is_private(tmp_path: Path) -> None:
    keys = WrappedKeys(tmp_path / "datakeys")
    keys.put(KEY_ID, b"mk1.wrapped")
    assert stat.S_IMODE((tmp_path / "datakeys").stat().st_mode) == 0o700
    for path in (tmp_path / "datakeys").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name


def test_the_earlier_per_key_files_are_imported_and_removed(tmp_path: Path) -> None:
    kept, gone = "aa" + "1" * 22, "bb" + "2" * 22
    for key_id, record in ((kept, b"mk1.kept"), (gone, b"mk1.gone")):
        (tmp_path / key_id[:2]).mkdir(mode=0o700)
        (tmp_path / key_id[:2] / key_id).write_bytes(record)
    (tmp_path / "bb" / (gone + ".forgotten")).touch()  # destroyed, its file left by a crash
    (tmp_path / "aa" / f".{kept}.123.abcd").write_bytes(b"mk1.half")  # an unfinished write
    keys = WrappedKeys(tmp_path)
    assert keys.lookup([kept, gone]) == ({kept: b"mk1.kept"}, {gone})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in tmp_path.iterdir() if p.name.startswith(DB_NAME))
    assert b"mk1.gone" not in _store_bytes(tmp_path)


def test_what_a_store_that_cannot_be_written_raises_counts_as_read_only(tmp_path: Path) -> None:
    """`put_many` answers False (and warns) on exactly these errors, and raises the rest."""
    WrappedKeys(tmp_path).put(KEY_ID, b"mk1.wrapped")
    with sqlite3.connect(f"file:{tmp_path / DB_NAME}?mode=ro", uri=True) as db, \
            pytest.raises(sqlite3.OperationalError) as written:
        db.execute("INSERT INTO tombstones VALUES ('x')")
    assert _read_only(written.value)
    assert _read_only(PermissionError(errno.EACCES, "denied"))
    assert _read_only(OSError(errno.EROFS, "read-only file system"))
    assert not _read_only(sqlite3.OperationalError("database is locked"))
    assert not _read_only(OSError(errno.ENOSPC, "no space left on device"))


class ForgetAfterRead(WrappedKeys):
    """`lepton forget` of `subject` runs right after a disk copy was read for restoring."""

    def __init__(self, directory: Path, settings: LeptonSettings, subject: str) -> None:
        super().__init__(directory)
        self.settings, self.subject, self.raced = settings, subject, False

    def _race(self, read: Iterator[str]) -> None:
        mine = KeyStore(self.settings).data_key_id(self.subject)
        if mine in read and not self.raced:
            self.raced = True
            KeyStore(self.settings).forget(self.subject)

    def lookup(self, key_ids: Sequence[str]) -> tuple[dict[str, bytes], set[str]]:
        records, forgotten = super().lookup(key_ids)
        self._race(iter(records))
        return records, forgotten

    def scan(self) -> Iterator[tuple[str, bytes]]:
        rows = list(super().scan())
        self._race(iter(key_id for key_id, _ in rows))
        yield from rows


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
