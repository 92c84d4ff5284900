"""Wire types (JSON over Kafka): the event Envelope, decisions for the audit log, model
announcements; strict decoding whose errors name the field; Kafka header helpers."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

import orjson
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)

CONTENT_TYPE_JSON = b"application/json"
MAX_EVENT_BYTES = 1_000_000

Scalar = str | int | float | bool | None
_W = TypeVar("_W", bound=BaseModel)
Identifier = Annotated[
    str, StringConstraints(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._:@/+=-]+$")
]
Name = Annotated[str, StringConstraints(
    min_length=1, max_length=100, pattern=r"^[a-z0-9_-]+(?:\.[a-z0-9_-]+)*$")]  # no ./.. parts


class Header:
    """Kafka header names used across the platform."""

    TRACEPARENT = "traceparent"
    TRACESTATE = "tracestate"
    CONTENT_TYPE = "content-type"
    DLQ_REASON = "lepton.dlq.reason"
    DLQ_DETAIL = "lepton.dlq.detail"
    DLQ_STAGE = "lepton.dlq.stage"
    DLQ_EXCEPTION = "lepton.dlq.exception"
    DLQ_ATTEMPT = "lepton.dlq.attempt"
    DLQ_TOPIC = "lepton.dlq.source.topic"
    DLQ_PARTITION = "lepton.dlq.source.partition"
    DLQ_OFFSET = "lepton.dlq.source.offset"
    ORIGIN = "lepton.origin"  # the consumed record an output answers (shared/stage/written.py)
    CONNECT_ERRORS = "__connect.errors."  # Kafka Connect's dead-letter header namespace


class EnvelopeError(ValueError):
    """An event failed decoding or validation; `field` names where and `reason` says why."""

    def __init__(self, field: str, reason: str, kind: str = "invalid") -> None:
        super().__init__(f"{field}: {reason}" if field else reason)
        self.field = field
        self.reason = reason
        self.kind = kind


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class Change(_Wire):
    """One thing a stage did to a payload field (imputed, clipped, encrypted, ...)."""

    field: str
    action: Literal[
        "imputed", "clipped", "normalised", "encrypted", "tokenized", "dropped", "noised",
        "randomized"
    ]
    detail: str | None = None


class PrivacyStamp(_Wire):
    """The differential-privacy release applied to an event's fields: in `local` mode the
    mechanism and the event's total ε; in `model` mode (the record is not noised, the model
    release is what is DP) and with DP off, `epsilon` is None."""

    mode: Literal["model", "local"] = "local"
    mechanism: str
    epsilon: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    delta: float = Field(default=0.0, ge=0, le=1, allow_inf_nan=False)


class AuditRef(_Wire):
    """Where the decision about this event sits in the audit log."""

    partition: int = Field(ge=0)
    leaf_index: int = Field(ge=0)


class Envelope(_Wire):
    """The event envelope (docs/ARCHITECTURE.md): identity, subject, time, source and payload."""

    event_id: Identifier
    dataset: Name
    schema_version: int = Field(default=1, ge=1)
    subject_id: Identifier
    occurred_at: AwareDatetime
    source: Annotated[str, StringConstraints(min_length=1, max_length=200)] = "unknown"
    payload: dict[str, Scalar]
    changes: tuple[Change, ...] = ()
    privacy: PrivacyStamp | None = None
    audit: AuditRef | None = None

    @field_validator("payload")
    @classmethod
    def _payload_keys(cls, value: dict[str, Scalar]) -> dict[str, Scalar]:
        if len(value) > 512:
            raise ValueError("has more than 512 fields")
        for key, item in value.items():
            if not key or len(key) > 100:
                raise ValueError(f"field name {key[:40]!r} must be 1 to 100 characters")
            if isinstance(item, float) and item != item:
                raise ValueError(f"field {key!r} is NaN")
        return value


class Decision(_Wire):
    """A decision about data, published on `audit.requests` for governance to seal."""

    decision_id: Identifier = Field(default_factory=lambda: uuid.uuid4().hex)
    kind: Name
    actor: str
    subject_id: Identifier | None = None
    event_id: Identifier | None = None
    dataset: Name | None = None
    detail: dict[str, Any] = Field(default_factory=dict)
    occurred_at: AwareDatetime = Field(default_factory=lambda: datetime.now(UTC))
    key_id: str | None = Field(default=None, max_length=64,
                               description="The signing principal's key id.")
    signature: str | None = Field(default=None, max_length=200, description=(
        "Ed25519 (base64) over shared.principals.canonical_decision; governance refuses "
        "decisions without a valid one from an allowed principal."))


class ModelAnnouncement(_Wire):
    """A model version announced on `models.updates`."""

    model: Name
    version: int = Field(ge=1)
    dataset: Name
    artifact_uri: str
    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    signature: str
    key_id: str
    metrics: dict[str, float] = Field(default_factory=dict)
    epsilon: float | None = None
    action: Literal["promote", "rollback", "canary", "shadow", "retire"] = "promote"
    share: float | None = Field(default=None, ge=0, le=1)
    announced_at: AwareDatetime = Field(default_factory=lambda: datetime.now(UTC))
    sequence: int = Field(default=0, ge=0, le=2**62,
                          description="Per-model monotonic sequence (replays are refused).")
    override: bool = Field(default=False, description=(
        "Operator-signed: serve a card whose gate status is not `promoted`."))
    signer_key_id: str | None = Field(default=None, max_length=64)
    signer_signature: str | None = Field(default=None, max_length=200, description=(
        "Ed25519 (base64) of the announcing principal over shared.announcements.signed_bytes."))


_UNION_TAGS = {"str", "int", "float", "bool", "none"}


def first_error(error: ValidationError) -> EnvelopeError:
    """The first validation error as an EnvelopeError naming the field (values never quoted)."""
    item = error.errors()[0]
    parts = [str(part) for part in item["loc"]]
    field = ".".join(p for p in parts if p not in _UNION_TAGS and "[" not in p)
    reason = str(item["msg"]).removeprefix("Value error, ")
    if any(p in _UNION_TAGS for p in parts):
        reason = "must be a string, number, boolean or null"
    kind = "missing_field" if item["type"] == "missing" else "invalid_field"
    if error.error_count() > 1:
        reason += f" (and {error.error_count() - 1} more)"
    return EnvelopeError(field, reason, kind)


def loads_json(data: bytes | str) -> Any:
    """Parse JSON, raising EnvelopeError(kind='bad_json') on failure."""
    if len(data) > MAX_EVENT_BYTES:
        raise EnvelopeError("", f"event is {len(data)} bytes, over {MAX_EVENT_BYTES}", "too_large")
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as error:
        raise EnvelopeError("", f"not valid JSON: {error}", "bad_json") from None


def decode_envelope(
    data: bytes | str,
    *,
    fallback_event_id: str | None = None,
    fallback_time: datetime | None = None,
) -> Envelope:
    """Decode and validate an Envelope; missing event_id/occurred_at take the fallbacks.

    Fallbacks let producers that write plain JSON (kcat) omit what the platform can derive
    deterministically (an id from topic/partition/offset, the broker timestamp).
    """
    obj = loads_json(data)
    if not isinstance(obj, dict):
        raise EnvelopeError("", "top level must be a JSON object", "bad_json")
    if "event_id" not in obj and fallback_event_id is not None:
        obj["event_id"] = fallback_event_id
    if "occurred_at" not in obj and fallback_time is not None:
        obj["occurred_at"] = fallback_time
    try:
        return Envelope.model_validate(obj)
    except ValidationError as error:
        raise first_error(error) from None


def encode(model: BaseModel) -> bytes:
    """Serialise a wire model as compact JSON."""
    return orjson.dumps(model.model_dump(mode="json", exclude_defaults=False))


def decode(model: type[_W], data: bytes | str) -> _W:
    """Decode a wire model of type `model`, raising EnvelopeError naming the field."""
    obj = loads_json(data)
    try:
        return model.model_validate(obj)
    except ValidationError as error:
        raise first_error(error) from None


def derived_event_id(topic: str, partition: int, offset: int) -> str:
    """A deterministic event id for an event that arrived without one."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"kafka://{topic}/{partition}/{offset}").hex


HeaderList = list[tuple[str, str | bytes | None]]


def headers_dict(
    headers: Sequence[tuple[str, bytes | str | None]] | Mapping[str, bytes | str | None] | None,
) -> dict[str, bytes]:
    """Kafka headers as a dict (last value wins), values as bytes."""
    out: dict[str, bytes] = {}
    pairs = headers.items() if isinstance(headers, Mapping) else headers or ()
    for key, value in pairs:
        if value is None:
            continue
        out[key] = value.encode() if isinstance(value, str) else value
    return out


def header_str(headers: Mapping[str, bytes], name: str, default: str = "") -> str:
    """One header decoded as UTF-8 text (invalid bytes replaced)."""
    value = headers.get(name)
    return default if value is None else value.decode("utf-8", "replace")


def dlq_headers(
    original: Iterable[tuple[str, bytes | str | None]] | None,
    *,
    reason: str,
    detail: str,
    stage: str,
    exception: str,
    topic: str,
    partition: int,
    offset: int,
    attempt: int = 1,
    service: str = "",
) -> HeaderList:
    """Headers for a dead-lettered record: the original ones plus why, where and how often, as
    `lepton.dlq.*` and as Kafka Connect's `__connect.errors.*` (for standard DLQ tooling)."""
    kept = [
        (k, v.encode() if isinstance(v, str) else v)
        for k, v in (original or ())
        if v is not None and not k.startswith(("lepton.dlq.", Header.CONNECT_ERRORS))
    ]
    text = detail[:1000].encode("utf-8", "replace")
    connect = Header.CONNECT_ERRORS
    return [
        *kept,
        (Header.DLQ_REASON, reason.encode()),
        (Header.DLQ_DETAIL, text),
        (Header.DLQ_STAGE, stage.encode()),
        (Header.DLQ_EXCEPTION, exception.encode()),
        (Header.DLQ_TOPIC, topic.encode()),
        (Header.DLQ_PARTITION, str(partition).encode()),
        (Header.DLQ_OFFSET, str(offset).encode()),
        (Header.DLQ_ATTEMPT, str(attempt).encode()),
        (connect + "topic", topic.encode()),
        (connect + "partition", str(partition).encode()),
        (connect + "offset", str(offset).encode()),
        (connect + "connector.name", (service or stage).encode()),
        (connect + "task.id", b"0"),
        (connect + "stage", stage.encode()),
        (connect + "class.name", (service or stage).encode()),
        (connect + "exception.class.name", (exception or reason).encode()),
        (connect + "exception.message", f"{reason}: ".encode() + text),
    ]
