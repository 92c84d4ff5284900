"""The platform key: the one long-lived secret from which keyed identifiers are derived
(subject pseudonyms, data-key ids), domain-separated per purpose. It never tokenizes PII:
tokens are keyed per subject (`services/ingest/ciphers.py`) so forgetting destroys them. Held
by ingest, governance (pseudonyms of operator input) and the operator only.

Consumes: `LEPTON_TOKEN_KEY` (base64url), else `LEPTON_TOKEN_KEY_FILE` (a read-only secret;
must exist), else `<keys_path>/token.key` (0600, made on first use). Produces: 32-byte subkeys.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from shared.config import LeptonSettings
from shared.crypto import KmsError, b64d, b64e
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
    """The platform key from `LEPTON_TOKEN_KEY` (base64url), `LEPTON_TOKEN_KEY_FILE` or
    `<keys_path>/token.key`."""
    env_value = os.environ.get(TOKEN_KEY_ENV)
    path = settings.token_key_file or settings.keys_path() / TOKEN_KEY_FILE
    origin = TOKEN_KEY_ENV if env_value else str(path)
    try:
        if env_value:
            text = env_value
        elif settings.token_key_file is not None:
            text = path.read_text()
        else:
            text = read_or_create(path, new_platform_key).decode()
        return PlatformKey(b64d(text.strip()))
    except FileNotFoundError:
        raise KmsError(f"{origin} does not exist") from None
    except ValueError:
        raise KmsError(f"{origin}: token key must be 32+ bytes of base64url") from None


def new_platform_key() -> bytes:
    """The contents of a fresh `token.key` file."""
    return b64e(os.urandom(32)).encode()
