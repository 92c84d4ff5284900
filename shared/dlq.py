"""Dead letters without PII in clear, for every service that writes `events.rejected`.

A dead letter's value is the rejected record's bytes sealed with AES-256-GCM (`KeyStore.seal_bytes`:
`enc1:<master key id>:<data key id>:` + nonce|ciphertext|tag): under the subject's own data key
when the subject is known (so `lepton forget` shreds the dead letter too), else under the DLQ key,
a data key of the reserved pseudo-subject `#dlq` (no envelope subject can match it: `#` is not
allowed in ids). A forgotten subject's rejected bytes are discarded (empty value). The header
`lepton.dlq.sealed` says which (`subject` | `dlq` | `discarded`); the Kafka key is the subject's
pseudonym or none. The reason headers (`shared.events.dlq_headers`) stay readable. A record put
back on events.raw by `lepton dlq replay` carries `lepton.replay.origin` and
`lepton.replay.attempt`, so ingest keeps its derived event id and counts its attempts on.

Consumes: a `shared.crypto.KeyStore`. Produces: sealed values; `open` reverses them for
`lepton dlq show --reveal` and `lepton dlq replay`.
"""

from __future__ import annotations

from enum import StrEnum

from shared.crypto import DataKey, KeyDestroyed, KeyStore

DLQ_SUBJECT = "#dlq"
SEALED_HEADER = "lepton.dlq.sealed"
LABEL = "lepton-dlq"
REPLAY_ORIGIN = "lepton.replay.origin"  # topic/partition/offset where the record first arrived
REPLAY_ATTEMPT = "lepton.replay.attempt"  # dead-letter attempts so far


class Sealing(StrEnum):
    """How a dead letter's value is protected."""

    SUBJECT = "subject"
    DLQ = "dlq"
    DISCARDED = "discarded"


class DeadLetterSealer:
    """Seals dead-letter values under the subject's data key or the DLQ key."""

    def __init__(self, keystore: KeyStore) -> None:
        self.keystore = keystore

    def dlq_key(self) -> DataKey:
        """The DLQ key (minted on first use, cached like any data key)."""
        keys, failures = self.keystore.data_keys([DLQ_SUBJECT])
        if DLQ_SUBJECT not in keys:
            raise KeyDestroyed(f"the DLQ key is unavailable ({failures[DLQ_SUBJECT]})")
        return keys[DLQ_SUBJECT]

    def seal(self, raw: bytes, *, key: DataKey | None = None,
             forgotten: bool = False) -> tuple[bytes, Sealing]:
        """(sealed value, how): under `key` (the subject's), nothing when the subject is
        forgotten, else under the DLQ key."""
        if forgotten:
            return b"", Sealing.DISCARDED
        if key is not None:
            return self.keystore.seal_bytes(key, LABEL, raw), Sealing.SUBJECT
        return self.keystore.seal_bytes(self.dlq_key(), LABEL, raw), Sealing.DLQ

    def open(self, value: bytes) -> bytes:
        """The original bytes of a sealed dead letter (CryptoError/KeyDestroyed when shredded)."""
        return self.keystore.open_bytes(LABEL, value)
