"""What every holder of key material shares: the error types and base64url.

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


class CryptoError(ValueError):
    """A ciphertext is malformed, was tampered with, or belongs to another event or field."""


class KeyDestroyed(CryptoError):
    """The ciphertext's data key no longer exists: its subject was forgotten."""


class KmsError(RuntimeError):
    """A master or platform key is unknown, malformed, or failed to unwrap a data key."""


_URL_SAFE = bytes.maketrans(b"+/", b"-_")


def b64e(data: bytes) -> str:
    """URL-safe base64 without padding."""
    # base64.urlsafe_b64encode's own steps, without its two Python calls (half the cost)
    return binascii.b2a_base64(data, newline=False).translate(_URL_SAFE).rstrip(b"=") \
        .decode("ascii")


def b64d(text: str) -> bytes:
    """Inverse of `b64e` (raises ValueError on bad input)."""
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
