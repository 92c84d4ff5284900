"""The durable copy of wrapped data keys: one SQLite database, `<keys_path>/datakeys/keys.sqlite3`
(0600 in a 0700 directory), holding per data key id exactly the record Redis holds (the key
wrapped by a master key, never a clear copy), and a tombstone per destroyed key. A key missing
from Redis (wipe, restart without persistence) is restored from here, a tombstone marks its
subject forgotten again, and a record beside a tombstone (a restored backup) is never returned.

A batch's new keys are written in one transaction (`put_many`), and a write never lands beside
a tombstone: the check and the insert are one statement under SQLite's write lock, so a
`destroy` racing with it is either before (nothing written) or after (the record deleted).
Deletion is real: `secure_delete` overwrites a destroyed record with zeros, and `destroy` then
checkpoints the write-ahead log into the database and truncates it, so the wrapped key is left
in none of the store's files. Commits are not synced (minting is on ingest's hot path; the
write-ahead log keeps the database consistent through a crash), so a power loss may lose the
disk copy of a key minted just before it (Redis still has it); `destroy` is synced before it
returns.

A directory from before this store (`<2 hex>/<key id>` files, `<key id>.forgotten` tombstones)
is imported on first use and its files removed.

Consumes/produces: the directory above.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

DB_NAME = "keys.sqlite3"
LEGACY_TOMBSTONE = ".forgotten"
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS datakeys (key_id TEXT PRIMARY KEY, record BLOB NOT NULL) "
    "WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS tombstones (key_id TEXT PRIMARY KEY) WITHOUT ROWID",
)
_PUT = ("INSERT OR REPLACE INTO datakeys SELECT ?1, ?2 "
        "WHERE NOT EXISTS (SELECT 1 FROM tombstones WHERE key_id = ?1)")
# key ids arrive as one JSON array parameter (any number, no SQL built from strings)
_FORGOTTEN = "SELECT key_id FROM tombstones WHERE key_id IN (SELECT value FROM json_each(?))"
_RECORDS = ("SELECT key_id, record FROM datakeys "
            "WHERE key_id IN (SELECT value FROM json_each(?))")
log = logging.getLogger(__name__)


class WrappedKeys:
    """Wrapped data-key records on disk, with real deletion and tombstones."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / DB_NAME
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        """The connection, opened (and the legacy files imported) on first use; hold the lock."""
        if self._db is not None:
            return self._db
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self.path.exists():  # its WAL and shared-memory files take the same mode
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                             timeout=30.0)
        db.execute("PRAGMA secure_delete = ON")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        for statement in _SCHEMA:
            db.execute(statement)
        self._import_legacy(db)
        self._db = db
        return db

    def lookup(self, key_ids: Sequence[str]) -> tuple[dict[str, bytes], set[str]]:
        """(records of the ids that have no tombstone, ids that have one), in one snapshot."""
        records: dict[str, bytes] = {}
        forgotten: set[str] = set()
        for key_id in key_ids:
            _check(key_id)
        wanted = (json.dumps(list(key_ids)),)
        with self._lock:
            db = self._connect()
            with _transaction(db, "BEGIN"):
                forgotten.update(row[0] for row in db.execute(_FORGOTTEN, wanted))
                records.update(db.execute(_RECORDS, wanted).fetchall())
        for key_id in forgotten:
            records.pop(key_id, None)
        return records, forgotten

    def get(self, key_id: str) -> bytes | None:
        """The stored record, or None (also when a tombstone says the key was destroyed)."""
        return self.lookup([key_id])[0].get(key_id)

    def forgotten(self, key_id: str) -> bool:
        """True when the key was destroyed by `forget`."""
        return key_id in self.lookup([key_id])[1]

    def put(self, key_id: str, record: bytes) -> bool:
        """Store (or replace) one record unless its key has a tombstone; see `put_many`."""
        return self.put_many([(key_id, record)])

    def put_many(self, items: Iterable[tuple[str, bytes]]) -> bool:
        """Store (or replace) records in one transaction, skipping keys that have a tombstone;
        False when the store is read-only here (`lepton state rebuild` writes the missing
        copies from Redis)."""
        rows = [(_check(key_id), record) for key_id, record in items]
        if not rows:
            return True
        with self._lock:
            try:
                db = self._connect()
                with _transaction(db, "BEGIN IMMEDIATE"):
                    db.executemany(_PUT, rows)
            except (sqlite3.OperationalError, OSError) as error:
                if not _read_only(error):
                    raise
                log.warning("%d data keys have no disk copy: %s is not writable here (%s)",
                            len(rows), self.directory, error)
                return False
        return True

    def destroy(self, key_id: str) -> bool:
        """Leave a tombstone and erase the record (synced, out of the write-ahead log too);
        True if a record existed."""
        _check(key_id)
        with self._lock:
            db = self._connect()
            db.execute("PRAGMA synchronous = FULL")
            try:
                with _transaction(db, "BEGIN IMMEDIATE"):
                    db.execute("INSERT OR IGNORE INTO tombstones VALUES (?)", (key_id,))
                    existed = db.execute("DELETE FROM datakeys WHERE key_id = ?",
                                         (key_id,)).rowcount > 0
            finally:
                db.execute("PRAGMA synchronous = NORMAL")
            busy, _, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            log.warning("data key %s: erased, but a reader kept its old page in %s-wal until "
                        "the next checkpoint", key_id, self.path.name)
        return bool(existed)

    def scan(self) -> Iterator[tuple[str, bytes]]:
        """(key id, record) of every stored key that has no tombstone, by key id."""
        with self._lock:
            rows = self._connect().execute(
                "SELECT key_id, record FROM datakeys WHERE key_id NOT IN "
                "(SELECT key_id FROM tombstones) ORDER BY key_id").fetchall()
        yield from rows

    def _import_legacy(self, db: sqlite3.Connection) -> None:
        """Move the per-key files of the earlier layout into the database, tombstones first."""
        folders = [p for p in self.directory.iterdir()
                   if p.is_dir() and len(p.name) == 2 and p.name.isalnum()]
        if not folders:
            return
        files = [path for folder in folders for path in folder.iterdir()]
        tombstones = [(p.name[:-len(LEGACY_TOMBSTONE)],) for p in files
                      if p.name.endswith(LEGACY_TOMBSTONE)]
        records = [(p.name, p.read_bytes()) for p in files if p.name.isalnum()]
        with _transaction(db, "BEGIN IMMEDIATE"):
            db.executemany("INSERT OR IGNORE INTO tombstones VALUES (?)", tombstones)
            db.executemany(_PUT, records)
        for path in files:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        for folder in folders:
            with contextlib.suppress(OSError):
                folder.rmdir()
        log.info("imported %d data keys and %d tombstones from key files into %s",
                 len(records), len(tombstones), self.path)


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection, begin: str) -> Iterator[None]:
    db.execute(begin)
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _check(key_id: str) -> str:
    if not key_id.isalnum():
        raise ValueError("data key ids are alphanumeric")
    return key_id


def _read_only(error: Exception) -> bool:
    if isinstance(error, OSError):
        return error.errno in (errno.EROFS, errno.EACCES, errno.EPERM)
    message = str(error).lower()
    return "readonly" in message or "read-only" in message or "unable to open" in message
