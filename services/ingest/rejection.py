"""Why an event is rejected: the reason codes written to the DLQ header `lepton.dlq.reason`,
the pipeline stages, and the `Rejection` exception the stages raise (details never hold values).
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """DLQ reason codes (the table in services/ingest/README.md)."""

    BAD_JSON = "bad_json"
    TOO_LARGE = "too_large"
    INVALID_ENVELOPE = "invalid_envelope"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    UNKNOWN_DATASET = "unknown_dataset"
    UNSUPPORTED_SCHEMA = "unsupported_schema"
    UNKNOWN_FIELD = "unknown_field"
    UNKNOWN_UNIT = "unknown_unit"
    OUT_OF_RANGE = "out_of_range"
    NOT_ALLOWED = "not_allowed"
    TOO_LONG = "too_long"
    SUBJECT_MISMATCH = "subject_mismatch"
    KEY_UNAVAILABLE = "key_unavailable"
    INTERNAL_ERROR = "internal_error"


class Stage(StrEnum):
    """Where in the pipeline an event was rejected."""

    DECODE = "decode"
    VALIDATE = "validate"
    PROTECT = "protect"
    ENCODE = "encode"


class Rejection(Exception):
    """An event cannot pass: `reason` is a Reason code; `detail` names the field, never a value."""

    def __init__(self, reason: Reason, detail: str, *, stage: Stage = Stage.VALIDATE,
                 field: str = "", exception: str = "Rejection") -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.exception = exception
        self.reason = reason
        self.detail = detail
        self.stage = stage
        self.field = field


def internal(error: Exception, stage: Stage) -> Rejection:
    """The rejection of a record that raised `error` unexpectedly (the class name, no value)."""
    name = type(error).__name__
    return Rejection(Reason.INTERNAL_ERROR, f"{name} while processing", stage=stage,
                     exception=name)
