"""Signed model announcements: who may announce what, the monotonic sequence, the signature.

An announcement is signed by its principal (trainer, operator, a serving replica relaying an
admin API change, or a federation coordinator promoting a federated model) over a domain tag
and the sorted-key JSON of (model, version, action, sha256, card signature, sequence, share,
override). The sequence is per model, allocated from one Redis
counter (`INCR`) that every announcer shares, so a receiver refuses anything at or below the
last sequence it applied (replays). Consumes a `ModelAnnouncement` and a `Principal`; produces
the signed announcement, or verifies one against a public key.
"""

from __future__ import annotations

import orjson
import redis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from shared.config import LeptonSettings
from shared.events import ModelAnnouncement
from shared.principals import Principal
from shared.signing import verify
from shared.state import rkey

ANNOUNCEMENT_DOMAIN = b"lepton.announcement.v1\n"
_ALL = frozenset({"promote", "rollback", "canary", "shadow", "retire"})
ANNOUNCERS: dict[str, frozenset[str]] = {"trainer": _ALL, "operator": _ALL, "serving": _ALL,
                                         "federation": frozenset({"promote"})}
OVERRIDERS = frozenset({"operator"})


def sequence_key(settings: LeptonSettings, model: str) -> str:
    """The Redis counter of `model`'s announcement sequence."""
    return rkey(settings, "models", model, "announce-seq")


def next_sequence(client: redis.Redis[bytes], settings: LeptonSettings, model: str) -> int:
    """Allocate the next sequence number of `model`'s announcements."""
    return int(client.incr(sequence_key(settings, model)))


def current_sequence(client: redis.Redis[bytes], settings: LeptonSettings, model: str) -> int:
    """The last sequence number allocated for `model` (0 when none was)."""
    value = client.get(sequence_key(settings, model))
    return int(value) if value is not None else 0


def signed_bytes(announcement: ModelAnnouncement) -> bytes:
    """The bytes an announcement's signature covers."""
    body = {"model": announcement.model, "version": announcement.version,
            "action": announcement.action, "sha256": announcement.sha256,
            "card_signature": announcement.signature, "sequence": announcement.sequence,
            "share": announcement.share, "override": announcement.override,
            "signer_key_id": announcement.signer_key_id}
    return ANNOUNCEMENT_DOMAIN + orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def sign_announcement(principal: Principal, announcement: ModelAnnouncement,
                      sequence: int) -> ModelAnnouncement:
    """`announcement` with `sequence`, the principal's key id and its signature."""
    unsigned = announcement.model_copy(update={
        "sequence": sequence, "signer_key_id": principal.key_id, "signer_signature": None})
    return unsigned.model_copy(update={"signer_signature": principal.sign(signed_bytes(unsigned))})


def verify_announcement(public: Ed25519PublicKey, announcement: ModelAnnouncement) -> bool:
    """Whether `announcement` carries a valid signature by `public`."""
    signature = announcement.signer_signature
    return signature is not None and verify(public, signed_bytes(announcement), signature)
