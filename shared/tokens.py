"""The platform key: the one long-lived secret from which keyed identifiers are derived
(subject pseudonyms, data-key ids), domain-separated per purpose. It never tokenizes PII:
tokens are keyed per subject (`shared.crypto.KeyStore.tokenize`) so forgetting destroys them.

Consumes: `LEPTON_TOKEN_KEY` (base64url) or `<keys_path>/token.key` (0600, made on first use).
Produces: 32-byte subkeys. Also exported by `shared.crypto`.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from shared.config import LeptonSettings
from shared.keyring import KmsError, b64d, b64e
from shared.secretfiles import read_or_create

TOKEN_KEY_ENV = "LEPTON_TOKEN_KEY"  # noqa: S105 (names, not secrets)
TOKEN_KEY_FILE = "token.key"  # noqa: S105


class PlatformKey:
    """Derives domain-separated subkeys from the platform key."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 32:
            raise ValueError("platform key must be at least 32 bytes")
        self._key = key
        self.key_id = hashlib.sha256(b"lepton-token-key-id\0" + key).hexdigest()[:8]

    def derive(self, label: str) -> bytes:
        """A 32-byte subkey for `label`."""
        return hmac.digest(self._key, b"lepton-derive\0" + label.encode(), "sha256")


def load_platform_key(settings: LeptonSettings) -> PlatformKey:
    """The platform key from `LEPTON_TOKEN_KEY` (base64url) or `<keys_path>/token.key`."""
    env_value = os.environ.get(TOKEN_KEY_ENV)
    try:
        text = env_value or read_or_create(
            settings.keys_path() / TOKEN_KEY_FILE, lambda: b64e(os.urandom(32)).encode()
        ).decode()
        return PlatformKey(b64d(text.strip()))
    except ValueError:
        origin = TOKEN_KEY_ENV if env_value else str(settings.keys_path() / TOKEN_KEY_FILE)
        raise KmsError(f"{origin}: token key must be 32+ bytes of base64url") from None
