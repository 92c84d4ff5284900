"""What every holder of key material shares: the error types, base64url and a keyed hash.

The data keys, field encryption, tokens and the master keyring belong to ingest
(`services/ingest/keystore.py`, `ciphers.py`, `keyring.py`, `wrapped_keys.py`, `rewrap.py`; the
`lepton` CLI uses them for `forget`, `keys` and `dlq`). The other services hold no data key and
no master key: they seal dead letters to the DLQ public key (`shared/dlq.py`), and governance
derives subject pseudonyms from the platform key (`shared/tokens.py`, `shared/pseudonym.py`).

Consumes/produces: values only.
"""

from __future__ import annotations

import base64
import binascii
import hmac


class CryptoError(ValueError):
    """A ciphertext is malformed, was tampered with, or belongs to another event or field."""


class KeyDestroyed(CryptoError):
    """The ciphertext's data key no longer exists: its subject was forgotten."""


class KmsError(RuntimeError):
    """A master or platform key is unknown, malformed, or failed to unwrap a data key."""


class KeyedHash:
    """HMAC-SHA256 under one key, keyed once: each digest copies the keyed state (OpenSSL's key
    set-up dominates a short message)."""

    __slots__ = ("_mac",)

    def __init__(self, key: bytes) -> None:
        self._mac = hmac.new(key, digestmod="sha256")

    def digest(self, data: bytes) -> bytes:
        """HMAC-SHA256(key, data)."""
        mac = self._mac.copy()  # thread-safe: copy() takes the object's lock
        mac.update(data)
        return mac.digest()

    def hexdigest(self, data: bytes) -> str:
        """HMAC-SHA256(key, data) in hex."""
        mac = self._mac.copy()
        mac.update(data)
        return mac.hexdigest()


_URL_SAFE = bytes.maketrans(b"+/", b"-_")


def b64e(data: bytes) -> str:
    """URL-safe base64 without padding."""
    # base64.urlsafe_b64encode's own steps, without its two Python calls (half the cost)
    return binascii.b2a_base64(data, newline=False).translate(_URL_SAFE).rstrip(b"=") \
        .decode("ascii")


def b64d(text: str) -> bytes:
    """Inverse of `b64e` (raises ValueError on bad input)."""
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
