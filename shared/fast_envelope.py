"""Envelope checks for the hot paths (ingest, governance): a parsed JSON object is accepted as a
`LeanEnvelope` only when pydantic's `Envelope` would accept it with the same values; anything
unusual (a coercion pydantic would make, a stamp, a bad value) returns None and the caller
falls back to `shared.events.decode_envelope`, which stays the one authority on errors.

Consumes: objects as `orjson.loads` returns them (JSON has no NaN, so none is looked for; a
fallback time may be a datetime). Produces: LeanEnvelope (and the pydantic JSON text of its
time). tests/fuzz/test_fast_envelope.py checks the equivalence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, get_args

from shared.events import Change, Envelope, Scalar

_IDENTIFIER = re.compile(r"[A-Za-z0-9._:@/+=-]{1,200}")
_NAME = re.compile(r"(?=.{1,100}\Z)[a-z0-9_-]+(?:\.[a-z0-9_-]+)*")
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?(?:Z|[+-]\d{2}:\d{2})")
_FIELDS = frozenset(Envelope.model_fields)
_SCALARS = frozenset({str, int, float, bool, type(None)})
_ACTIONS = frozenset(get_args(Change.model_fields["action"].annotation))
_CHANGE_KEYS = frozenset({"field", "action", "detail"})
MAX_PAYLOAD_FIELDS = 512
MAX_FIELD_NAME = 100


@dataclass(slots=True)
class LeanEnvelope:
    """The values of a valid envelope (changes are validated, not kept)."""

    event_id: str
    dataset: str
    schema_version: int
    subject_id: str
    occurred_at: datetime
    source: str
    payload: dict[str, Scalar]
    privacy: dict[str, Any] | None = None
    audit: dict[str, Any] | None = None
    occurred_json: str = ""  # pydantic's JSON form of the time, when known

    def time_json(self) -> str:
        """`occurred_at` as pydantic writes it in JSON."""
        return self.occurred_json or json_time(self.occurred_at)

    def time_iso(self) -> str:
        """`occurred_at.isoformat()` (from the kept JSON time, `Z` as `+00:00`, when known)."""
        kept = self.occurred_json
        return kept[:-1] + "+00:00" if kept else self.occurred_at.isoformat()


def json_time(moment: datetime) -> str:
    """An aware datetime as pydantic writes it in JSON (`Z` for UTC)."""
    text = moment.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def from_envelope(envelope: Envelope) -> LeanEnvelope:
    """A pydantic-validated Envelope as a LeanEnvelope."""
    dumped = envelope.model_dump(mode="json", include={"occurred_at", "privacy", "audit"})
    return LeanEnvelope(envelope.event_id, envelope.dataset, envelope.schema_version,
                        envelope.subject_id, envelope.occurred_at, envelope.source,
                        dict(envelope.payload), dumped["privacy"], dumped["audit"],
                        dumped["occurred_at"])


def lean_envelope(obj: Any) -> LeanEnvelope | None:
    """`obj` (parsed JSON) as a LeanEnvelope when it surely is a valid Envelope, else None
    (undecided)."""
    if type(obj) is not dict or not obj.keys() <= _FIELDS:
        return None
    event_id, dataset, subject = obj.get("event_id"), obj.get("dataset"), obj.get("subject_id")
    if (type(event_id) is not str or type(subject) is not str or type(dataset) is not str
            or _IDENTIFIER.fullmatch(event_id) is None or _IDENTIFIER.fullmatch(subject) is None
            or _NAME.fullmatch(dataset) is None):
        return None
    version = obj.get("schema_version", 1)
    source = obj.get("source", "unknown")
    if type(version) is not int or version < 1 or type(source) is not str \
            or not 0 < len(source) <= 200:
        return None
    written = obj.get("occurred_at")
    occurred = _time(written)
    payload = obj.get("payload")
    if occurred is None or type(payload) is not dict or not _payload_ok(payload) \
            or not _changes_ok(obj.get("changes", ())) or obj.get("privacy") is not None \
            or obj.get("audit") is not None:
        return None
    return LeanEnvelope(event_id, dataset, version, subject, occurred, source, payload,
                        occurred_json=_as_pydantic_writes(written))


def _as_pydantic_writes(text: Any) -> str:
    """A time `_time` accepted, when it is already the JSON pydantic writes for it (UTC as `Z`,
    no fraction or six digits that are not all zero); else "" (written when asked)."""
    if type(text) is str and text[-1:] == "Z" and (
            len(text) == 20 or (len(text) == 27 and text[20:26] != "000000")):
        return text
    return ""


def _time(value: Any) -> datetime | None:
    if type(value) is str:
        if _TIME.fullmatch(value) is None:
            return None
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None
    if isinstance(value, datetime) and value.utcoffset() is not None:
        return value
    return None


def _payload_ok(payload: dict[str, Any]) -> bool:
    """Pydantic's payload rules; no NaN check: JSON (so orjson's output) cannot hold one."""
    if len(payload) > MAX_PAYLOAD_FIELDS or not set(map(type, payload.values())) <= _SCALARS:
        return False
    return not payload or (max(map(len, payload)) <= MAX_FIELD_NAME and "" not in payload)


def _changes_ok(changes: Any) -> bool:
    if type(changes) is not list and type(changes) is not tuple:
        return False
    for change in changes:
        if type(change) is not dict or not change.keys() <= _CHANGE_KEYS \
                or type(change.get("field")) is not str or type(change.get("action")) is not str \
                or change["action"] not in _ACTIONS:
            return False
        detail = change.get("detail")
        if detail is not None and type(detail) is not str:
            return False
    return True
