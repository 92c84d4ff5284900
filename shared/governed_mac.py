"""Authenticated governed events: governance stamps each `events.governed` record with an
HMAC-SHA256 of its value (header `lepton.governed.mac`), the trainer checks it before using the
record, so nothing written to the topic by anyone else is ever trained on.

Consumes the MAC key: `LEPTON_GOVERNED_MAC_KEY_FILE`, else `<keys dir>/governed-mac.key` (32
random bytes, 0600, created by whichever of governance or the trainer starts first). The key is
shared by exactly those two principals and never travels on the bus. Produces and checks tags
(about a microsecond each).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

from shared.config import LeptonSettings

MAC_HEADER = "lepton.governed.mac"
MAC_KEY_FILE = "governed-mac.key"
DOMAIN = b"lepton.governed.v1\n"
KEY_BYTES = 32


def mac_key_path(settings: LeptonSettings) -> Path:
    """Where the governed-event MAC key is read (or created)."""
    return settings.governed_mac_key_file or settings.keys_path() / MAC_KEY_FILE


def load_or_create_key(path: Path) -> bytes:
    """The key in `path`, created (0600; directory 0700 when new) if absent."""
    if not path.exists():
        if not path.parent.exists():
            path.parent.mkdir(parents=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(os.urandom(KEY_BYTES))
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)  # atomic: whole or absent, and never replaces the other's key
        except FileExistsError:
            pass  # the other principal made it meanwhile
        finally:
            tmp.unlink()
    key = path.read_bytes()
    if len(key) < KEY_BYTES:
        raise ValueError(f"{path}: MAC key shorter than {KEY_BYTES} bytes")
    return key


class GovernedMac:
    """Tags and checks governed-event values under one key."""

    def __init__(self, key: bytes) -> None:
        self._base = hmac.new(key, DOMAIN, hashlib.sha256)

    @classmethod
    def load(cls, settings: LeptonSettings) -> GovernedMac:
        """The MAC of this deployment (key file created on first use)."""
        return cls(load_or_create_key(mac_key_path(settings)))

    def tag(self, value: bytes) -> bytes:
        """The hex tag of `value`."""
        mac = self._base.copy()
        mac.update(value)
        return mac.hexdigest().encode()

    def verify(self, value: bytes, tag: bytes | None) -> bool:
        """Whether `tag` is the tag of `value`."""
        return tag is not None and hmac.compare_digest(self.tag(value), tag)
