"""The retrain trigger between the monitor and the trainer: a Redis flag per model, set by the
monitor (with its reason) when drift or degraded quality is detected, and taken (read and
deleted at once) by the trainer's rank 0, which then ends its cycle in progress early so a
model on the freshest data is gated and released."""

from __future__ import annotations

import redis

from shared.config import LeptonSettings
from shared.state import rkey

FLAG_TTL_S = 24 * 3600


def retrain_key(settings: LeptonSettings, model: str) -> str:
    """The flag's Redis key."""
    return rkey(settings, "trainer", model, "retrain")


def request_retrain(client: redis.Redis[bytes], settings: LeptonSettings, model: str,
                    reason: str) -> None:
    """Ask the trainer of `model` to end its cycle early."""
    client.set(retrain_key(settings, model), reason.encode()[:500], ex=FLAG_TTL_S)


def take_retrain(client: redis.Redis[bytes], settings: LeptonSettings, model: str
                 ) -> str | None:
    """The pending request's reason (deleting it), or None."""
    value = client.getdel(retrain_key(settings, model))
    return value.decode() if value is not None else None
