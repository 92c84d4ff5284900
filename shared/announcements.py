"""Signed model announcements: who may announce what, the monotonic sequence, the signature.

An announcement is signed by its principal (trainer, operator, a serving replica relaying an
admin API change, or a federation coordinator promoting a federated model) over a domain tag
and the sorted-key JSON of (model, version, action, sha256, card signature, sequence, share,
override). The sequence is per model, allocated from one Redis
counter (`INCR`) that every announcer shares, so a receiver refuses anything at or below the
last sequence it applied (replays). Each allocated number is also made durable, before the
announcement is sent, in `<registry>/<model>/announce-seq` (next to `live.json`): after a Redis
loss the counter resumes above it, a restarted serving starts its replay floor there (never
at 0), and `lepton state rebuild` puts it back. Consumes a `ModelAnnouncement` and a
`Principal`; produces the signed announcement, or verifies one against a public key.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
from pathlib import Path

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
SEQUENCE_FILE = "announce-seq"
log = logging.getLogger(__name__)

# Raise the counter to the durable floor (it is lower only after a Redis loss); returns it.
_RAISE = """
local floor = tonumber(ARGV[1])
local now = tonumber(redis.call('GET', KEYS[1]) or '0')
if now < floor then redis.call('SET', KEYS[1], floor) return floor end
return now
"""
# The same, then allocate the next number.
_NEXT = """
local floor = tonumber(ARGV[1])
if tonumber(redis.call('GET', KEYS[1]) or '0') < floor then redis.call('SET', KEYS[1], floor) end
return redis.call('INCR', KEYS[1])
"""


def sequence_key(settings: LeptonSettings, model: str) -> str:
    """The Redis counter of `model`'s announcement sequence."""
    return rkey(settings, "models", model, "announce-seq")


def sequence_path(settings: LeptonSettings, model: str) -> Path:
    """The durable copy of `model`'s highest allocated sequence."""
    return settings.registry_path() / model / SEQUENCE_FILE


def durable_sequence(settings: LeptonSettings, model: str) -> int:
    """The highest sequence made durable for `model` (0 when none was)."""
    try:
        return int(sequence_path(settings, model).read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def next_sequence(client: redis.Redis[bytes], settings: LeptonSettings, model: str) -> int:
    """Allocate the next sequence number of `model`'s announcements (above its durable copy
    too) and make it durable before it is used."""
    key = sequence_key(settings, model)
    sequence = int(client.register_script(_NEXT)(keys=[key],
                                                 args=[durable_sequence(settings, model)]))
    _persist(settings, model, sequence)
    return sequence


def current_sequence(client: redis.Redis[bytes], settings: LeptonSettings, model: str) -> int:
    """The last sequence number allocated for `model` (0 when none was): the Redis counter or
    its durable copy, whichever is higher."""
    value = client.get(sequence_key(settings, model))
    return max(int(value) if value is not None else 0, durable_sequence(settings, model))


def restore_sequence(client: redis.Redis[bytes], settings: LeptonSettings, model: str) -> int:
    """Raise `model`'s Redis counter to its durable copy (after a Redis loss); returns it."""
    return int(client.register_script(_RAISE)(keys=[sequence_key(settings, model)],
                                              args=[durable_sequence(settings, model)]))


def _persist(settings: LeptonSettings, model: str, sequence: int) -> None:
    path = sequence_path(settings, model)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(f".{SEQUENCE_FILE}.lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent announcers: the file only grows
            if durable_sequence(settings, model) >= sequence:
                return
            tmp = path.with_name(f".{SEQUENCE_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
            with open(tmp, "w") as handle:
                handle.write(f"{sequence}\n")
                handle.flush()
                os.fsync(handle.fileno())
            tmp.replace(path)
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    except OSError as error:  # e.g. a read-only registry mount: Redis alone holds it
        log.warning("announcement sequence %d of %s is not durable (%s): after a Redis loss "
                    "a replay of it could pass", sequence, model, error)


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
