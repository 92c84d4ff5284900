"""Master keys behind a small KMS interface: the `Kms` protocol (wrap/unwrap data keys under a
named master key) and `LocalKms`, a keyring file (0600, created on first use) or the
`LEPTON_MASTER_KEYS` environment variable. Vault or a cloud KMS plugs in by implementing `Kms`.
Only ingest and the operator's `lepton` CLI load it.

Consumes: `<keys_path>/master-keys.json` or `LEPTON_MASTER_KEYS`. Produces: wrapped key bytes.
Key material is never logged or put in exception messages.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shared.config import LeptonSettings
from shared.crypto import KmsError, b64d, b64e
from shared.secretfiles import read_or_create, write_private

MASTER_KEYS_ENV = "LEPTON_MASTER_KEYS"
KEYRING_FILE = "master-keys.json"
NONCE_BYTES = 12
REFRESH_S = 5.0


@runtime_checkable
class Kms(Protocol):
    """Wraps and unwraps data keys under named master keys (local keyring, Vault, cloud KMS)."""

    def active_key_id(self) -> str:
        """The master key new wraps use."""
        ...

    def wrap(self, plaintext: bytes, aad: bytes) -> tuple[str, bytes]:
        """Wrap `plaintext` under the active key; returns (master key id, wrapped bytes)."""
        ...

    def unwrap(self, key_id: str, wrapped: bytes, aad: bytes) -> bytes:
        """Unwrap bytes wrapped under master key `key_id`, or raise KmsError."""
        ...


def _new_key_id() -> str:
    return "mk" + secrets.token_hex(4)


def _keyring_bytes(active: str, keys: dict[str, bytes]) -> bytes:
    doc = {"version": 1, "active": active, "keys": {k: b64e(v) for k, v in keys.items()}}
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2)


def _parse_keyring(data: bytes, origin: str) -> tuple[str, dict[str, bytes]]:
    try:
        doc = orjson.loads(data)
        keys = {str(k): b64d(str(v)) for k, v in doc["keys"].items()}
        active = str(doc["active"])
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError):
        raise KmsError(f"{origin} is not a valid keyring") from None
    _check_keys(keys, active, origin)
    return active, keys


def _parse_env(text: str) -> tuple[str, dict[str, bytes]]:
    keys: dict[str, bytes] = {}
    active = ""
    for item in filter(None, (part.strip() for part in text.split(","))):
        key_id, sep, material = item.partition(":")
        try:
            if not sep:
                raise ValueError
            keys[key_id] = b64d(material)
        except ValueError:
            raise KmsError(f"{MASTER_KEYS_ENV}: entries must be `id:base64key`") from None
        active = key_id
    _check_keys(keys, active, MASTER_KEYS_ENV)
    return active, keys


def _check_keys(keys: dict[str, bytes], active: str, origin: str) -> None:
    if not keys or active not in keys:
        raise KmsError(f"{origin}: no active master key")
    for key_id, key in keys.items():
        if len(key) != 32 or not key_id.isalnum():
            raise KmsError(f"{origin}: key {key_id[:20]!r} must be 32 bytes, its id alphanumeric")


class LocalKms:
    """AES-256-GCM key wrapping under master keys from a keyring file or the environment.

    The file is re-read when it changes (checked at most every few seconds, and at once when an
    unknown key id is seen), so a running process follows `lepton keys rotate` without restart.
    """

    def __init__(self, path: Path | None = None, env_value: str | None = None) -> None:
        if path is None and not env_value:
            raise KmsError("LocalKms needs a keyring path or a key list")
        self.path = None if env_value else path
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        if env_value:
            self._active, self._keys = _parse_env(env_value)
        else:
            self._load(force=True)

    @classmethod
    def from_settings(cls, settings: LeptonSettings) -> LocalKms:
        """`LEPTON_MASTER_KEYS` when set, else `<keys_path>/master-keys.json` (made if absent)."""
        env_value = os.environ.get(MASTER_KEYS_ENV)
        return cls(settings.keys_path() / KEYRING_FILE, env_value or None)

    @property
    def writable(self) -> bool:
        """True when keys live in a file this process may rotate."""
        return self.path is not None

    def key_ids(self) -> list[str]:
        """Every master key id, oldest first."""
        self._load()
        return list(self._keys)

    def active_key_id(self) -> str:
        """The master key new wraps use (follows rotations made by other processes)."""
        self._load()
        return self._active

    def wrap(self, plaintext: bytes, aad: bytes) -> tuple[str, bytes]:
        """Wrap `plaintext` under the active master key, bound to `aad`."""
        key_id = self.active_key_id()
        nonce = os.urandom(NONCE_BYTES)
        return key_id, nonce + AESGCM(self._keys[key_id]).encrypt(nonce, plaintext, aad)

    def unwrap(self, key_id: str, wrapped: bytes, aad: bytes) -> bytes:
        """Unwrap bytes wrapped under `key_id`; KmsError when the key is unknown or they fail."""
        if key_id not in self._keys:
            self._load(force=True)
        key = self._keys.get(key_id)
        if key is None:
            raise KmsError(f"unknown master key {key_id[:20]!r}")
        try:
            return AESGCM(key).decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], aad)
        except InvalidTag:
            raise KmsError(f"wrapped data key failed authentication under {key_id}") from None

    def add_key(self) -> str:
        """Add a fresh master key and make it active (keyring files only); returns its id."""
        key_id = _new_key_id()
        self._rewrite(lambda active, keys: (key_id, {**keys, key_id: AESGCM.generate_key(256)}))
        return key_id

    def remove_key(self, key_id: str) -> None:
        """Delete master key `key_id` from the keyring file (never the active one)."""

        def drop(active: str, keys: dict[str, bytes]) -> tuple[str, dict[str, bytes]]:
            if key_id not in keys:
                raise KmsError(f"no master key {key_id[:20]!r}")
            if key_id == active:
                raise KmsError(f"{key_id} is the active master key: rotate first")
            return active, {k: v for k, v in keys.items() if k != key_id}

        self._rewrite(drop)

    def _rewrite(self, change: Callable[[str, dict[str, bytes]],
                                        tuple[str, dict[str, bytes]]]) -> None:
        """Apply `change` to the keyring file under its lock, atomically."""
        if self.path is None:
            raise KmsError(f"master keys come from {MASTER_KEYS_ENV}: change them there instead")
        lock_path = self.path.with_name(f".{self.path.name}.lock")
        with os.fdopen(os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600), "r+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._load(force=True)
            active, keys = change(self._active, dict(self._keys))
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{secrets.token_hex(4)}")
            write_private(tmp, _keyring_bytes(active, keys))
            tmp.replace(self.path)
        self._load(force=True)

    def _load(self, force: bool = False) -> None:
        if self.path is None:
            return
        now = time.monotonic()
        if not force and now - self._checked < REFRESH_S:
            return
        self._checked = now
        if self._stamp is not None and not force:
            try:
                if _stamp(self.path) == self._stamp:
                    return
            except FileNotFoundError:
                return
        first = _new_key_id()
        data = read_or_create(
            self.path, lambda: _keyring_bytes(first, {first: AESGCM.generate_key(256)})
        )
        self._active, self._keys = _parse_keyring(data, str(self.path))
        self._stamp = _stamp(self.path)


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns
