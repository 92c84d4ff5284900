"""Master-key maintenance for `lepton keys rotate|rewrap|status|retire`: re-wrap every data key
under the active master key (compare-and-swap per key, so a key forgotten meanwhile is never
resurrected) and count what each master key still wraps.

Consumes a `KeyStore` (Redis records and their disk copies). Produces re-wrapped records and
reports; never key material.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.ingest.keystore import KeyStore, master_of
from shared.crypto import KmsError

BATCH = 500


@dataclass(frozen=True)
class RewrapReport:
    """What a re-wrap pass did."""

    active: str
    rewrapped: int
    current: int
    changed_meanwhile: int
    failed: int


def master_key_usage(store: KeyStore) -> dict[str, int]:
    """How many data keys each master key currently wraps (Redis and the disk copies)."""
    records = dict(store.files.scan())
    records.update(store.records())
    usage: dict[str, int] = {}
    for record in records.values():
        master_id = master_of(record)
        usage[master_id] = usage.get(master_id, 0) + 1
    return usage


def rewrap(store: KeyStore) -> RewrapReport:
    """Re-wrap every data key not under the active master key (safe while others run)."""
    active = store.kms.active_key_id()
    rewrapped = current = changed = failed = 0
    batch: list[tuple[str, bytes, bytes]] = []

    def flush() -> None:
        nonlocal rewrapped, changed
        pipe = store.redis.pipeline(transaction=False)
        for key_id, old, new in batch:
            store.swap(keys=[store.key_prefix + key_id], args=[old, new], client=pipe)
        results = pipe.execute()
        for (key_id, _, new), swapped in zip(batch, results, strict=True):
            if swapped:
                store.files.put(key_id, new)
        rewrapped += sum(results)
        changed += len(results) - sum(results)
        batch.clear()

    for key_id, record in store.records():
        if master_of(record) == active:
            current += 1
            continue
        try:
            key = store.unwrap(key_id, record)
        except KmsError:
            failed += 1
            continue
        batch.append((key_id, record, store.wrap(key_id, key)))
        if len(batch) >= BATCH:
            flush()
    if batch:
        flush()
    for key_id, record in store.files.scan():  # disk copies not (or no longer) in Redis
        if master_of(record) == active:
            continue
        live = store.redis.get(store.key_prefix + key_id)
        if live is not None and master_of(live) == active:
            store.files.put(key_id, live)
            continue
        try:
            store.files.put(key_id, store.wrap(key_id, store.unwrap(key_id, record)))
            rewrapped += live is None
        except KmsError:
            failed += 1
    return RewrapReport(active, rewrapped, current, changed, failed)
