"""The JSON of a clean event: the input envelope with the clean, protected payload and the
Changes made, written with the fields, order and formats pydantic's `Envelope` writes
(`shared.events.encode`), without building the model."""

from __future__ import annotations

from typing import Any

import orjson

from shared.events import Change, Scalar
from shared.fast_envelope import LeanEnvelope

_CACHE: dict[int, tuple[Change, dict[str, Any]]] = {}


def change_json(change: Change) -> dict[str, Any]:
    """A Change as a JSON-ready dict, cached by identity: the cleaner and the protector reuse
    one Change object per (field, action, detail), and hashing a model would cost more."""
    found = _CACHE.get(id(change))
    if found is None or found[0] is not change:
        if len(_CACHE) >= 4096:
            _CACHE.clear()
        found = _CACHE[id(change)] = (change, change.model_dump(mode="json"))
    return found[1]


def clean_json(envelope: LeanEnvelope, payload: dict[str, Scalar],
               changes: list[Change]) -> bytes:
    """The `events.clean` value of `envelope` carrying `payload` and `changes`."""
    return orjson.dumps({
        "event_id": envelope.event_id, "dataset": envelope.dataset,
        "schema_version": envelope.schema_version, "subject_id": envelope.subject_id,
        "occurred_at": envelope.time_json(), "source": envelope.source, "payload": payload,
        "changes": [change_json(c) for c in changes], "privacy": envelope.privacy,
        "audit": envelope.audit,
    })
