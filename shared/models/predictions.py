"""Wire models of the Kafka prediction path: `PredictRequest` (JSON on
`predictions.requests`, key = request id), `PredictResult` (JSON on `predictions.results`,
key = request id, trace context in the headers) and `PredictionLogRecord` (JSON on
`predictions.log`, key = request id: one per answered prediction of any entry point). Every
successful result names its model version; a request that cannot be served gets a result with
`error` set instead."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from shared.events import Identifier, Name, Scalar

ErrorCode = Literal["invalid_argument", "not_found", "unavailable", "failed_precondition"]
RouteName = Literal["live", "canary", "pinned"]
EntryName = Literal["grpc", "v2-grpc", "http", "kafka"]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class PredictRequest(_Wire):
    """A record to score; `model` may be omitted when serving hosts one model."""

    request_id: Identifier
    model: Name | None = None
    version: int | None = Field(default=None, ge=1, description="Pin this model version.")
    features: dict[str, Scalar]
    sent_at: AwareDatetime = Field(default_factory=lambda: datetime.now(UTC))


class PredictResult(_Wire):
    """The answer to one PredictRequest: a score by a named model version, or an error."""

    request_id: Identifier
    model: str | None = None
    version: int | None = None
    score: float | None = None
    label: bool | None = None
    route: RouteName | None = None
    error: str | None = None
    error_code: ErrorCode | None = None
    served_at: AwareDatetime = Field(default_factory=lambda: datetime.now(UTC))

    @property
    def ok(self) -> bool:
        """True when the request was scored."""
        return self.error is None


class PredictionLogRecord(_Wire):
    """One answered prediction as serving saw it; `inputs` is the cleaned record (PII and
    subject ids dropped), never raw PII."""

    request_id: str
    model: str
    version: int
    route: RouteName
    entry: EntryName
    inputs: dict[str, Scalar]
    score: float
    label: bool
    latency_ms: float
    traceparent: str | None = None
    logged_at: AwareDatetime = Field(default_factory=lambda: datetime.now(UTC))
