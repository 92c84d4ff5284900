"""The deterministic validation split: an event is held out when the hash of its event_id falls
in the first `percent` of 100 buckets (the same on every worker, restart and test)."""

from __future__ import annotations

import hashlib


def is_validation(event_id: str, percent: int) -> bool:
    """True when `event_id` belongs to the held-out split."""
    digest = hashlib.blake2b(event_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 100 < percent
