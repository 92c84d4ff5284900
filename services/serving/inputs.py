"""Check raw request records against the model's dataset spec and clean them the way ingest
does (type checks, valid ranges, allowed values, clipping). PII fields are checked for type and
dropped: tokens are keyed per data subject (shared/crypto.py) and never model inputs (a field has
one role, and only `feature` fields reach the FeatureTransform), so serving needs no token key
and train/serve parity holds by construction. Values are never put in error messages or logs,
only field names."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

from services.serving.errors import InvalidInput
from shared.datasets import DatasetSpec, FieldSpec, FieldType, PiiAction, Role
from shared.events import Scalar

log = logging.getLogger(__name__)

MAX_FIELDS = 512


_SKIP = object()
Check = Callable[[Scalar], Any]


def _number_check(spec: FieldSpec) -> Check:
    name, integer = spec.name, spec.type is FieldType.INT
    low, high = spec.valid_min, spec.valid_max
    clip_low, clip_high = spec.clip_min, spec.clip_max

    def check(value: Scalar) -> float | int:
        if value.__class__ not in (int, float):
            raise InvalidInput(f"field {name!r} must be a number")
        number: float | int = value
        if isinstance(number, float):
            if not math.isfinite(number):
                raise InvalidInput(f"field {name!r} must be a finite number")
            if integer:
                if not number.is_integer():
                    raise InvalidInput(f"field {name!r} must be an integer")
                number = int(number)
        if low is not None and number < low:
            raise InvalidInput(f"field {name!r} is below its minimum {low:g}")
        if high is not None and number > high:
            raise InvalidInput(f"field {name!r} is above its maximum {high:g}")
        if clip_low is not None and number < clip_low:
            number = type(number)(clip_low)
        if clip_high is not None and number > clip_high:
            number = type(number)(clip_high)
        return number

    return check


def _bool_check(spec: FieldSpec) -> Check:
    name = spec.name

    def check(value: Scalar) -> bool:
        if value is not True and value is not False:
            raise InvalidInput(f"field {name!r} must be true or false")
        return value

    return check


def _text_check(spec: FieldSpec) -> Check:
    name, longest = spec.name, spec.max_length
    allowed = frozenset(spec.allowed) if spec.allowed is not None else None
    choices = ", ".join(spec.allowed or ())

    def check(value: Scalar) -> str:
        if not isinstance(value, str):
            raise InvalidInput(f"field {name!r} must be a string")
        if allowed is not None and value not in allowed:
            raise InvalidInput(f"field {name!r} must be one of {choices}")
        if longest is not None and len(value) > longest:
            raise InvalidInput(f"field {name!r} is longer than {longest} characters")
        return value

    return check


class RecordSchema:
    """Validates and cleans raw records of one dataset before the feature transform."""

    def __init__(self, spec: DatasetSpec) -> None:
        self.spec = spec
        self._checks: dict[str, Check] = {f.name: self._check(f) for f in spec.fields}
        self._required = [
            f.name for f in spec.fields if f.role is Role.FEATURE and f.required and not f.impute
        ]
        self._unlogged = frozenset(f.name for f in spec.fields if f.role is Role.SUBJECT)

    def _check(self, spec: FieldSpec) -> Check:
        if spec.role is Role.LABEL:
            return lambda _value: _SKIP
        if spec.role is Role.PII:
            return lambda value: self._protect(spec, value)
        if spec.is_numeric:
            return _number_check(spec)
        if spec.type is FieldType.BOOL:
            return _bool_check(spec)
        return _text_check(spec)

    def clean(self, record: Mapping[str, Scalar]) -> dict[str, Scalar]:
        """The cleaned record (features; PII dropped); raise InvalidInput naming the field."""
        if len(record) > MAX_FIELDS:
            raise InvalidInput(f"record has more than {MAX_FIELDS} fields")
        checks = self._checks
        out: dict[str, Scalar] = {}
        for name, value in record.items():
            check = checks.get(name)
            if check is None:
                raise InvalidInput(
                    f"field {name[:100]!r} is not a field of dataset {self.spec.name!r}"
                )
            if value is None:
                continue
            cleaned = check(value)
            if cleaned is not _SKIP:
                out[name] = cleaned
        for name in self._required:
            if name not in out:
                raise InvalidInput(f"field {name!r} is required")
        return out

    def loggable(self, cleaned: dict[str, Scalar]) -> dict[str, Scalar]:
        """A cleaned record fit for logs: PII is already dropped by `clean`, and
        the data subject's id is dropped too."""
        return {k: v for k, v in cleaned.items() if k not in self._unlogged}

    def _protect(self, spec: FieldSpec, value: Scalar) -> object:
        if spec.pii is PiiAction.TOKENIZE and not isinstance(value, str):
            raise InvalidInput(f"field {spec.name!r} must be a string")
        return _SKIP
