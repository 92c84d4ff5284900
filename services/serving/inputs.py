"""Check raw request records against the model's dataset spec and clean them the way ingest
does (type checks, valid ranges, allowed values, clipping), tokenizing PII with the shared
keyed-hash tokenizer. Values are never put in error messages or logs, only field names."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Mapping
from typing import Any

from services.serving.errors import InvalidInput
from shared.datasets import DatasetSpec, FieldSpec, FieldType, PiiAction, Role
from shared.events import Scalar

log = logging.getLogger(__name__)

MAX_FIELDS = 512
Tokenize = Callable[[str, str], str]


def _check_number(spec: FieldSpec, value: Scalar) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"field {spec.name!r} must be a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidInput(f"field {spec.name!r} must be a finite number")
    if spec.type is FieldType.INT and isinstance(value, float):
        if not value.is_integer():
            raise InvalidInput(f"field {spec.name!r} must be an integer")
        value = int(value)
    if spec.valid_min is not None and value < spec.valid_min:
        raise InvalidInput(f"field {spec.name!r} is below its minimum {spec.valid_min:g}")
    if spec.valid_max is not None and value > spec.valid_max:
        raise InvalidInput(f"field {spec.name!r} is above its maximum {spec.valid_max:g}")
    if spec.clip_min is not None and value < spec.clip_min:
        value = type(value)(spec.clip_min)
    if spec.clip_max is not None and value > spec.clip_max:
        value = type(value)(spec.clip_max)
    return value


def _check_value(spec: FieldSpec, value: Scalar) -> Scalar:
    if spec.is_numeric:
        return _check_number(spec, value)
    if spec.type is FieldType.BOOL:
        if not isinstance(value, bool):
            raise InvalidInput(f"field {spec.name!r} must be true or false")
        return value
    if not isinstance(value, str):
        raise InvalidInput(f"field {spec.name!r} must be a string")
    if spec.allowed is not None and value not in spec.allowed:
        raise InvalidInput(
            f"field {spec.name!r} must be one of {', '.join(spec.allowed)}"
        )
    if spec.max_length is not None and len(value) > spec.max_length:
        raise InvalidInput(f"field {spec.name!r} is longer than {spec.max_length} characters")
    return value


class RecordSchema:
    """Validates and cleans raw records of one dataset before the feature transform."""

    def __init__(self, spec: DatasetSpec, tokenizer: Callable[[], Tokenize | None]) -> None:
        self.spec = spec
        self._fields = {f.name: f for f in spec.fields}
        self._required = [
            f.name for f in spec.fields if f.role is Role.FEATURE and f.required and not f.impute
        ]
        self._tokenizer_factory = tokenizer
        self._tokenize: Tokenize | None = None
        self._loaded = False
        self._lock = threading.Lock()

    def clean(self, record: Mapping[str, Scalar]) -> dict[str, Scalar]:
        """The cleaned record (features, tokenized PII); raise InvalidInput naming the field."""
        if len(record) > MAX_FIELDS:
            raise InvalidInput(f"record has more than {MAX_FIELDS} fields")
        out: dict[str, Scalar] = {}
        for name, value in record.items():
            spec = self._fields.get(name)
            if spec is None:
                raise InvalidInput(
                    f"field {name[:100]!r} is not a field of dataset {self.spec.name!r}"
                )
            if spec.role is Role.LABEL or value is None:
                continue
            if spec.role is Role.PII:
                token = self._protect(spec, value)
                if token is not None:
                    out[name] = token
                continue
            out[name] = _check_value(spec, value)
        for name in self._required:
            if name not in out:
                raise InvalidInput(f"field {name!r} is required")
        return out

    def _protect(self, spec: FieldSpec, value: Scalar) -> str | None:
        if spec.pii is not PiiAction.TOKENIZE:
            return None
        if not isinstance(value, str):
            raise InvalidInput(f"field {spec.name!r} must be a string")
        tokenize = self._tokenizer()
        return None if tokenize is None else tokenize(spec.name, value)

    def _tokenizer(self) -> Tokenize | None:
        if not self._loaded:
            with self._lock:
                if not self._loaded:
                    self._tokenize = self._tokenizer_factory()
                    self._loaded = True
        return self._tokenize


def tokenizer_factory(settings: Any) -> Callable[[], Tokenize | None]:
    """A lazy loader of the shared PII tokenizer; None (PII dropped) when no keys exist."""

    def load() -> Tokenize | None:
        try:
            from shared.crypto import load_tokenizer

            return load_tokenizer(settings).tokenize
        except Exception as error:
            log.warning("PII tokenizer unavailable (%s): PII fields in requests are dropped",
                        type(error).__name__)
            return None

    return load
