"""Ciphers under one subject's data key: AES-256-GCM field encryption, per-subject tokens and
sealed bytes (dead letters), in formats that name their keys.

Ciphertext text: `enc1:<master key id>:<data key id>:<base64url(nonce | ciphertext | tag)>`; the
associated data binds that header, the event id and the field name. Sealed bytes (a subject's
dead letter): the same header, binary: `enc1:<master>:<data key>:` + nonce|ciphertext|tag.
Tokens (`pii: tokenize`): `tok2:<data key id>:<base64url(HMAC-SHA256(token key, field NUL
value)[:18])>`, where the token key is derived from the subject's own data key: equal values of
one subject give equal tokens (group by card within a subject), the same value of two subjects
gives unrelated tokens (no cross-subject join), and `forget` destroys the key, so the subject's
tokens can no longer be reproduced or linked to anything. Nothing holds a key that tokenizes
for every subject.

Consumes: a `DataKey` (from `KeyStore.data_keys`). Produces: ciphertexts, tokens, sealed bytes;
`parse_ciphertext`/`parse_sealed` split them again for `KeyStore` to open.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shared.crypto import CryptoError, KeyedHash, b64d, b64e

CIPHER_VERSION = "enc1"
TOKEN_VERSION = "tok2"  # noqa: S105 (a format tag)
NONCE_BYTES = 12
TAG_BYTES = 16


@dataclass(frozen=True, slots=True)
class DataKey:
    """An unwrapped data key and the subject's token key derived from it (never printed)."""

    key_id: str
    master_id: str
    aead: AESGCM
    token_hash: KeyedHash = field(repr=False)  # HMAC under the token key

    @classmethod
    def from_raw(cls, key_id: str, master_id: str, raw: bytes) -> DataKey:
        """The key from its 32 raw bytes."""
        token_key = hmac.digest(raw, b"lepton-token-key", "sha256")
        return cls(key_id, master_id, AESGCM(raw), KeyedHash(token_key))

    @property
    def header(self) -> str:
        """`enc1:<master key id>:<data key id>`."""
        return f"{CIPHER_VERSION}:{self.master_id}:{self.key_id}"

    def encrypt(self, event_id: str, field: str, plaintext: str,
                nonce: bytes | None = None) -> str:
        """Encrypt one field value of one event (under a fresh random nonce unless `nonce`, a
        never-reused random one, is given: a batch draws its nonces at once)."""
        nonce = nonce or os.urandom(NONCE_BYTES)
        sealed = self.aead.encrypt(nonce, plaintext.encode(), _aad(self.header, event_id, field))
        return f"{self.header}:{b64e(nonce + sealed)}"

    def tokenize(self, field: str, value: str) -> str:
        """The subject's token of `value` in `field`."""
        digest = self.token_hash.digest(f"{field}\0{value}".encode())
        return f"{TOKEN_VERSION}:{self.key_id}:{b64e(digest[:18])}"

    def seal(self, label: str, data: bytes) -> bytes:
        """Encrypt arbitrary bytes (binary: `enc1:<master>:<data key>:` + nonce|ct|tag)."""
        nonce = os.urandom(NONCE_BYTES)
        return (f"{self.header}:".encode() + nonce
                + self.aead.encrypt(nonce, data, _aad(self.header, label, "bytes")))

    def decrypt(self, blob: bytes, aad: bytes) -> bytes:
        """Open nonce|ciphertext|tag bound to `aad` (CryptoError when it fails)."""
        try:
            return self.aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
        except InvalidTag:
            raise CryptoError("ciphertext failed authentication for this event and field") from None


def is_ciphertext(value: object) -> bool:
    """True for a string in this module's ciphertext format."""
    return isinstance(value, str) and value.startswith(CIPHER_VERSION + ":")


def is_token(value: object) -> bool:
    """True for a string in this module's token format."""
    return isinstance(value, str) and value.startswith(TOKEN_VERSION + ":")


def parse_ciphertext(ciphertext: str, event_id: str, field: str) -> tuple[str, bytes, bytes]:
    """(data key id, nonce|ciphertext|tag, associated data) of a field ciphertext."""
    parts = ciphertext.split(":")
    if len(parts) != 4 or parts[0] != CIPHER_VERSION or not parts[1] or not parts[2]:
        raise CryptoError(f"not a {CIPHER_VERSION} ciphertext")
    try:
        blob = b64d(parts[3])
    except ValueError:
        raise CryptoError("ciphertext body is not base64url") from None
    if len(blob) < NONCE_BYTES + TAG_BYTES:
        raise CryptoError("ciphertext is truncated")
    return parts[2], blob, _aad(":".join(parts[:3]), event_id, field)


def parse_sealed(label: str, sealed: bytes) -> tuple[str, bytes, bytes]:
    """(data key id, nonce|ciphertext|tag, associated data) of sealed bytes."""
    parts = sealed.split(b":", 3)
    if len(parts) != 4 or parts[0] != CIPHER_VERSION.encode() or not parts[2]:
        raise CryptoError(f"not a sealed {CIPHER_VERSION} value")
    if len(parts[3]) < NONCE_BYTES + TAG_BYTES:
        raise CryptoError("sealed value is truncated")
    header = b":".join(parts[:3]).decode("ascii", "replace")
    return parts[2].decode("ascii", "replace"), parts[3], _aad(header, label, "bytes")


def key_ids_of(sealed: bytes | str) -> tuple[str, str]:
    """(master key id, data key id) named by a ciphertext or sealed value."""
    text = sealed if isinstance(sealed, str) else sealed[:120].decode("ascii", "replace")
    parts = text.split(":", 3)
    if len(parts) < 4 or parts[0] != CIPHER_VERSION:
        raise CryptoError(f"not a {CIPHER_VERSION} ciphertext")
    return parts[1], parts[2]


def _aad(header: str, event_id: str, field: str) -> bytes:
    return f"{header}\0{event_id}\0{field}".encode()
