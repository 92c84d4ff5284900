"""The durable copy of wrapped data keys: one file per data key id under
`<keys_path>/datakeys/<2 hex>/<key id>` (0600 in 0700 directories), holding exactly the record
Redis holds (the key wrapped by a master key, never a clear copy). Forgetting unlinks the file
and leaves a tombstone `<key id>.forgotten`, so a Redis that lost its data (wipe, restart
without persistence) neither re-mints a forgotten subject's key nor loses anyone else's: a key
missing from Redis is restored from here, a tombstone marks its subject forgotten again. A
record beside a tombstone (a `put` that raced with `destroy`, a restored backup) is never
returned, and `put` removes its own file when a tombstone appeared while it wrote.

Files are written atomically (temp file, rename) before the key is first used; there is no
fsync per key (minting is on ingest's hot path), so a power loss within the OS write-back delay
may lose the disk copy of a key minted just then (Redis still has it).

Consumes/produces: the directory above.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from shared.durable import fsync_dir

TOMBSTONE = ".forgotten"
log = logging.getLogger(__name__)


class WrappedKeyFiles:
    """Wrapped data-key records on disk, with real deletion and tombstones."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._root = os.fspath(directory)

    def _path(self, key_id: str) -> str:
        # plain strings and os calls: minting a key is on ingest's hot path, pathlib is slower
        if not key_id.isalnum():
            raise ValueError("data key ids are alphanumeric")
        return f"{self._root}/{key_id[:2]}/{key_id}"

    def get(self, key_id: str) -> bytes | None:
        """The stored record, or None (also when a tombstone says the key was destroyed)."""
        try:
            with open(self._path(key_id), "rb") as handle:
                record = handle.read()
        except FileNotFoundError:
            return None
        return None if self.forgotten(key_id) else record

    def forgotten(self, key_id: str) -> bool:
        """True when the key was destroyed by `forget`."""
        return os.path.exists(self._path(key_id) + TOMBSTONE)

    def put(self, key_id: str, record: bytes) -> bool:
        """Store (or replace) a record atomically, never beside a tombstone (checked again
        after the rename, so a `destroy` racing with it always wins); False when the directory
        is read-only here (`lepton state rebuild` writes the missing copies from Redis)."""
        path = self._path(key_id)
        if self.forgotten(key_id):
            return True
        tmp = f"{path[:-len(key_id)]}.{key_id}.{os.getpid()}.{secrets.token_hex(4)}"
        try:
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileNotFoundError:
                os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as error:
            if error.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise
            log.warning("data key %s has no disk copy: %s is not writable here", key_id,
                        self.directory)
            return False
        try:
            os.write(fd, record)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        if self.forgotten(key_id):  # `destroy` ran since the check above: it wins
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        return True

    def destroy(self, key_id: str) -> bool:
        """Unlink the record and leave a tombstone; True if a record existed."""
        path = Path(self._path(key_id))
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path.with_name(path.name + TOMBSTONE), os.O_WRONLY | os.O_CREAT, 0o600)
        os.fsync(fd)
        os.close(fd)
        try:
            path.unlink()
            existed = True
        except FileNotFoundError:
            existed = False
        fsync_dir(path.parent)
        return existed

    def scan(self) -> Iterator[tuple[str, bytes]]:
        """(key id, record) of every stored key that has no tombstone."""
        if not self.directory.is_dir():
            return
        for sub in sorted(self.directory.iterdir()):
            if not sub.is_dir():
                continue
            for path in sorted(sub.iterdir()):
                if path.name.isalnum() and (record := self.get(path.name)) is not None:
                    yield path.name, record
