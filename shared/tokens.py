"""Keyed-hash tokens for join keys (`pii: tokenize`): equal values give equal tokens, which
reveal nothing without the token key. Token text:
`tok1:<token key id>:<base64url(HMAC-SHA256(token key, field NUL value)[:18])>`.

Consumes: `LEPTON_TOKEN_KEY` (base64url) or `<keys_path>/token.key` (0600, made on first use).
Produces: tokens, and domain-separated subkeys for other keyed ids. Also exported by
`shared.crypto`.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from shared.config import LeptonSettings
from shared.keyring import KmsError, b64d, b64e, read_or_create

TOKEN_VERSION = "tok1"  # noqa: S105 (a format tag, not a secret)
TOKEN_KEY_ENV = "LEPTON_TOKEN_KEY"  # noqa: S105
TOKEN_KEY_FILE = "token.key"  # noqa: S105


class Tokenizer:
    """Deterministic keyed-hash tokens: equal inputs give equal tokens, which reveal nothing."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 32:
            raise ValueError("token key must be at least 32 bytes")
        self._key = key
        self.key_id = hashlib.sha256(b"lepton-token-key-id\0" + key).hexdigest()[:8]
        self._prefix = f"{TOKEN_VERSION}:{self.key_id}:"

    def tokenize(self, field: str, value: str) -> str:
        """The token of `value` in `field`."""
        digest = hmac.digest(self._key, f"{field}\0{value}".encode(), "sha256")
        return self._prefix + b64e(digest[:18])

    def derive(self, label: str) -> bytes:
        """A 32-byte subkey for `label` (domain-separated from tokens)."""
        return hmac.digest(self._key, b"lepton-derive\0" + label.encode(), "sha256")


def load_tokenizer(settings: LeptonSettings) -> Tokenizer:
    """The tokenizer keyed by `LEPTON_TOKEN_KEY` (base64url) or `<keys_path>/token.key`."""
    env_value = os.environ.get(TOKEN_KEY_ENV)
    try:
        text = env_value or read_or_create(
            settings.keys_path() / TOKEN_KEY_FILE, lambda: b64e(os.urandom(32)).encode()
        ).decode()
        return Tokenizer(b64d(text.strip()))
    except ValueError:
        origin = TOKEN_KEY_ENV if env_value else str(settings.keys_path() / TOKEN_KEY_FILE)
        raise KmsError(f"{origin}: token key must be 32+ bytes of base64url") from None


def is_token(value: object) -> bool:
    """True for a string in this module's token format."""
    return isinstance(value, str) and value.startswith(TOKEN_VERSION + ":")
