"""Dead letters without PII in clear, for every service that writes `events.rejected`.

A dead letter's value is the rejected record's bytes, sealed one of two ways; the header
`lepton.dlq.sealed` says which (`subject` | `dlq` | `discarded`):
- `subject`: ingest seals a record that names a subject under that subject's data key
  (`services/ingest/ciphers.py`, `enc1:<master key id>:<data key id>:` + nonce|ct|tag), so
  `lepton forget` shreds the dead letter too;
- `dlq`: everything else (ingest without a known subject, governance, the trainer, serving) is
  sealed to the **DLQ public key** with HPKE (RFC 9180: DHKEM X25519, HKDF-SHA256, AES-256-GCM):
  `dlq1:<DLQ key id>:` + encapsulated key | ciphertext | tag, the key id and label bound as HPKE
  info. Sealing needs only the public key (`<public keys dir>/dlq.pub`), so a service that writes
  dead letters holds nothing that reads them; only the operator's `lepton dlq show --reveal` and
  `lepton dlq replay` hold the private key (`LEPTON_DLQ_KEY_FILE`, default
  `<keys dir>/principals/dlq.key`). Dead letters written before this scheme (`enc1` under the
  data key of the pseudo-subject `#dlq`) still open with the key store;
- `discarded`: a forgotten subject's rejected bytes are dropped (empty value).

With one keys directory (`lepton up`, tests) the key pair is made on first use, as the
principals' keys are; with `LEPTON_PRINCIPALS_PUBLIC_DIR` set (compose) `lepton keys principals`
makes it and `dlq.pub` must be there. The Kafka key is the subject's pseudonym or none; the
reason headers (`shared.events.dlq_headers`) stay readable. A record put back on events.raw by
`lepton dlq replay` carries `lepton.replay.origin` and `lepton.replay.attempt`, so ingest keeps
its derived event id and counts its attempts on.

Consumes the DLQ public key (sealing) or private key (opening). Produces sealed values; the
opener reverses them.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from shared.config import LeptonSettings
from shared.crypto import CryptoError, KmsError
from shared.principals import principals_dir, private_dir, public_keys_dir
from shared.secretfiles import read_or_create

SEALED_HEADER = "lepton.dlq.sealed"
LABEL = "lepton-dlq"
REPLAY_ORIGIN = "lepton.replay.origin"  # topic/partition/offset where the record first arrived
REPLAY_ATTEMPT = "lepton.replay.attempt"  # dead-letter attempts so far
DLQ_KEY_FILE = "dlq.key"
DLQ_PUBLIC_FILE = "dlq.pub"
VERSION = b"dlq1"
_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)

OpenSubject = Callable[[str, bytes], bytes]  # (label, enc1 value) -> bytes: the key store's


class Sealing(StrEnum):
    """How a dead letter's value is protected."""

    SUBJECT = "subject"
    DLQ = "dlq"
    DISCARDED = "discarded"


def dlq_key_id(public: X25519PublicKey) -> str:
    """A short stable id of a DLQ public key: 16 hex digits of the sha256 of its raw bytes."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def make_dlq_key(private_path: Path, public_path: Path) -> str:
    """Create the DLQ key pair if absent (private 0600 in a 0700 directory, race-free; public
    PEM at `public_path`); returns its key id."""
    if not private_path.exists():
        private_dir(private_path.parent)
    private = _load_private(private_path, create=True)
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    if not public_path.exists() or public_path.read_bytes() != public_pem:
        public_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = public_path.with_name(f".{public_path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        tmp.write_bytes(public_pem)
        tmp.replace(public_path)
    return dlq_key_id(private.public_key())


def _load_private(path: Path, *, create: bool = False) -> X25519PrivateKey:
    def make() -> bytes:
        return X25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())

    try:
        pem = read_or_create(path, make) if create else path.read_bytes()
    except FileNotFoundError:
        raise KmsError(f"no DLQ private key at {path} (LEPTON_DLQ_KEY_FILE)") from None
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, X25519PrivateKey):
        raise KmsError(f"{path} is not an X25519 private key")
    return key


def _info(key_id: str) -> bytes:
    return VERSION + b":" + key_id.encode() + b"\0" + LABEL.encode()


class DeadLetterSealer:
    """Seals dead-letter values to the DLQ public key (it cannot open them)."""

    def __init__(self, public: X25519PublicKey) -> None:
        self.public = public
        self.key_id = dlq_key_id(public)
        self._prefix = VERSION + b":" + self.key_id.encode() + b":"

    @classmethod
    def load(cls, settings: LeptonSettings) -> DeadLetterSealer:
        """The sealer of this deployment: `<public keys dir>/dlq.pub`, made with its private
        key on first use when every key lives in one keys directory."""
        path = public_keys_dir(settings) / DLQ_PUBLIC_FILE
        if not path.exists() and settings.principals_public_dir is None:
            directory = principals_dir(settings)
            make_dlq_key(directory / DLQ_KEY_FILE, path)
        try:
            public = serialization.load_pem_public_key(path.read_bytes())
        except (OSError, ValueError) as error:
            raise KmsError(f"DLQ public key {path} unreadable: {error}") from None
        if not isinstance(public, X25519PublicKey):
            raise KmsError(f"{path} is not an X25519 public key")
        return cls(public)

    def seal(self, raw: bytes, *, forgotten: bool = False) -> tuple[bytes, Sealing]:
        """(sealed value, how): nothing when the subject is forgotten, else sealed to the
        DLQ key."""
        if forgotten:
            return b"", Sealing.DISCARDED
        return self._prefix + _SUITE.encrypt(raw, self.public, info=_info(self.key_id)), \
            Sealing.DLQ


class DeadLetterOpener:
    """Opens dead letters for the operator: `dlq1` values with the DLQ private key, `enc1`
    values (subject-sealed, or the old `#dlq` key) with the key store's `open_bytes`."""

    def __init__(self, private: X25519PrivateKey | None, open_subject: OpenSubject) -> None:
        self._private = private
        self.key_id = dlq_key_id(private.public_key()) if private is not None else None
        self._open_subject = open_subject

    @classmethod
    def load(cls, settings: LeptonSettings, open_subject: OpenSubject) -> DeadLetterOpener:
        """The operator's opener (`LEPTON_DLQ_KEY_FILE`, default `<keys>/principals/dlq.key`;
        without it only subject-sealed letters open)."""
        path = settings.dlq_key_file or principals_dir(settings) / DLQ_KEY_FILE
        return cls(_load_private(path) if path.exists() else None, open_subject)

    def open(self, value: bytes) -> bytes:
        """The original bytes of a sealed dead letter (CryptoError/KeyDestroyed when it
        cannot be opened here, or was shredded)."""
        if not value.startswith(VERSION + b":"):
            return self._open_subject(LABEL, value)
        parts = value.split(b":", 2)
        if len(parts) != 3:
            raise CryptoError(f"not a sealed {VERSION.decode()} value")
        kid = parts[1].decode("ascii", "replace")
        body = parts[2]
        if self._private is None:
            raise CryptoError(f"sealed to DLQ key {kid}; no DLQ private key here "
                              "(LEPTON_DLQ_KEY_FILE)")
        if kid != self.key_id:
            raise CryptoError(f"sealed to DLQ key {kid}, not to this key ({self.key_id})")
        try:
            return _SUITE.decrypt(body, self._private, info=_info(kid))
        except (InvalidTag, ValueError):
            raise CryptoError("dead letter failed authentication under the DLQ key") from None
