"""Durability on disk: consumes a directory path and makes its entries (new files, renames,
unlinks) durable with an fsync of the directory itself. Used by the registry, governance's
audit segments and ingest's key files."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(folder: Path) -> None:
    """Fsync `folder` itself, so renames, new and removed entries in it are durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
