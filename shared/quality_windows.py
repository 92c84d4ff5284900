"""Signed data-quality window summaries on `quality.windows`: ingest publishes one per dataset,
closed window and replica; the trainer holds a cycle whose data's index is below the spec's
`quality.min_index`.

A summary holds counts, never values (no PII): the window, the replica, its events, the
dataset's field count and its erroneous field values (Σ over fields of missing, wrong type, out
of range, invalid and clipped), the index both as Σ per-field error rate and as 1 − mean
per-field error rate, and the spec's `min_index` as ingest read it. It is signed by the
`ingest` principal over a domain tag and its sorted-key JSON without the signature (as
decisions are, shared/principals.py); a receiver verifies it against its allow-list
(shared/allowlist.py: `ingest` may say `quality_window`) and ignores any record that fails.

Consumes a record value (bytes); produces a verified `QualityWindow` or the reason it is
ignored.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import orjson
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from shared.allowlist import AllowList
from shared.events import Name
from shared.principals import Principal, canonical
from shared.signing import verify

QUALITY_DOMAIN = b"lepton.quality.v1\n"
KIND = "quality_window"
SIGNERS: dict[str, frozenset[str]] = {"ingest": frozenset({KIND})}
MAX_BYTES = 4096
TOLERANCE = 1e-9

# why a record is ignored (the trainer counts them by reason)
INVALID = "invalid"
UNSIGNED = "unsigned"
UNKNOWN_KEY = "unknown_key"
BAD_SIGNATURE = "bad_signature"
NOT_ALLOWED = "not_allowed"

Replica = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{1,100}$")]


class QualityWindow(BaseModel):
    """One replica's quality counts of one dataset over one closed window."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = 1
    dataset: Name
    replica: Replica
    window_start: AwareDatetime
    window_end: AwareDatetime
    partial: bool = Field(description="Closed at stop before its end.")
    events: int = Field(ge=1, le=10**12)
    fields: int = Field(ge=1, le=10_000, description="The dataset spec's field count.")
    errors: int = Field(ge=0, description="Erroneous field values (Σ over fields).")
    sum_error_rate: float = Field(ge=0, allow_inf_nan=False)
    quality_index: float = Field(le=1, allow_inf_nan=False)
    min_index: float | None = Field(default=None, ge=0, le=1, allow_inf_nan=False)
    key_id: str | None = Field(default=None, max_length=64)
    signature: str | None = Field(default=None, max_length=200)

    @model_validator(mode="after")
    def _consistent(self) -> QualityWindow:
        if self.window_end <= self.window_start:
            raise ValueError("window_end must be after window_start")
        if self.errors > self.events * self.fields:
            raise ValueError("errors: more than events × fields")
        if abs(self.sum_error_rate - self.errors / self.events) > TOLERANCE:
            raise ValueError("sum_error_rate: not errors / events")
        if abs(self.quality_index - (1 - self.errors / (self.events * self.fields))) > TOLERANCE:
            raise ValueError("quality_index: not 1 − errors / (events × fields)")
        return self

    @property
    def start_s(self) -> float:
        """The window's start, seconds since the epoch."""
        return self.window_start.timestamp()

    @property
    def end_s(self) -> float:
        """The window's end, seconds since the epoch."""
        return self.window_end.timestamp()


def window_of(dataset: str, replica: str, start: datetime, end: datetime, *, partial: bool,
              events: int, fields: int, errors: int, min_index: float | None) -> QualityWindow:
    """An unsigned summary from its counts (both index forms computed here)."""
    return QualityWindow(
        dataset=dataset, replica=replica, window_start=start, window_end=end, partial=partial,
        events=events, fields=fields, errors=errors, sum_error_rate=errors / events,
        quality_index=1 - errors / (events * fields), min_index=min_index)


def sign_window(principal: Principal, window: QualityWindow) -> bytes:
    """The record value: `window` with the principal's key id and signature, as JSON."""
    unsigned = window.model_copy(update={"key_id": principal.key_id, "signature": None})
    body = unsigned.model_dump(mode="json")
    body["signature"] = principal.sign(canonical(QUALITY_DOMAIN, body))
    return orjson.dumps(body)


def verify_window(value: bytes, allow: AllowList) -> QualityWindow | str:
    """The summary in `value` when a principal allowed to say `quality_window` signed exactly
    these bytes' content; otherwise why it is ignored (INVALID, UNSIGNED, ...)."""
    if len(value) > MAX_BYTES:
        return INVALID
    try:
        raw = orjson.loads(value)
    except orjson.JSONDecodeError:
        return INVALID
    if not isinstance(raw, dict):
        return INVALID
    kid, signature = raw.get("key_id"), raw.get("signature")
    if not isinstance(kid, str) or not isinstance(signature, str):
        return UNSIGNED
    principal = allow.lookup(kid)
    if principal is None:
        return UNKNOWN_KEY
    if not verify(principal.public, canonical(QUALITY_DOMAIN, raw), signature):
        return BAD_SIGNATURE
    if KIND not in principal.kinds:
        return NOT_ALLOWED
    try:
        return QualityWindow.model_validate(raw)
    except ValidationError:
        return INVALID
