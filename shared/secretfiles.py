"""Secret files on disk (key material): created once, atomically and race-free, mode 0600 in
0700 directories, so concurrent first starts (trainer ranks, replicas) agree on one secret.

Consumes/produces: the files it is given.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path


def read_or_create(path: Path, make: Callable[[], bytes]) -> bytes:
    """The file's bytes; when absent, create it (mode 0600, atomically, race-free) from `make`."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    write_private(tmp, make())
    try:
        # link, unlike rename, fails when another process created the file first: theirs wins
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return path.read_bytes()


def write_private(path: Path, data: bytes) -> None:
    """Write a new file readable by its owner only, synced to disk; fails if it exists."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
