"""Disk helpers of the registry: consumes version directories and weight bytes, produces
fsynced files and directories, sha256 digests and ArtifactError for a safetensors header that
does not match its data."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import orjson

from shared.models.registry.card import ArtifactError


def fsync_files(folder: Path) -> None:
    """Fsync every file in `folder`."""
    for path in folder.iterdir():
        with path.open("rb") as handle:
            os.fsync(handle.fileno())


def check_header(weights: bytes, what: str) -> None:
    """Parse the safetensors header (length-prefixed JSON) and check the offsets fit."""
    try:
        size = int.from_bytes(weights[:8], "little")
        header = orjson.loads(weights[8:8 + size])
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, IndexError) as error:
        raise ArtifactError(f"{what}: bad safetensors header: {error!r}") from None
    if 8 + size + max(ends, default=0) != len(weights):
        raise ArtifactError(f"{what}: safetensors data does not match its header")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
