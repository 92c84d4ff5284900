"""Type and unit normalisation of one payload value against its FieldSpec.

`FieldRule.coerce(value, unit)` returns `(value, note)`: the value in the spec's type and
canonical unit, and a note naming what was normalised (None when it already was). It raises
Rejection (wrong_type, unknown_unit); range and allowed-value checks live in `cleaning`.
Accepted spellings: numbers as JSON numbers or numeric strings ("12.5"); a unit as a suffix
("1250 cents") or a sibling `<field>_unit` field; bools as true/false, 1/0, yes/no, t/f, y/n;
timestamps as ISO 8601 or epoch seconds/milliseconds (normalised to UTC ISO 8601).
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

from services.ingest.rejection import Reason, Rejection
from shared.datasets import FieldSpec, FieldType
from shared.events import Scalar

_NUMBER_WITH_UNIT = re.compile(
    r"^\s*([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)\s*([A-Za-z%$€£][\w/%$€£]*)?\s*$"
)
_TRUE = frozenset({"true", "1", "yes", "y", "t"})
_FALSE = frozenset({"false", "0", "no", "n", "f"})
_EPOCH_MS_ABOVE = 100_000_000_000
_EXACT: dict[FieldType, type] = {FieldType.FLOAT: float, FieldType.INT: int,
                                 FieldType.BOOL: bool}


class FieldRule:
    """One FieldSpec compiled for fast checks."""

    def __init__(self, spec: FieldSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.type = spec.type
        self.allowed = frozenset(spec.allowed) if spec.allowed else None
        self.allowed_folded = {a.casefold(): a for a in spec.allowed or ()}
        self.factors = {**({spec.unit: 1.0} if spec.unit else {}), **spec.unit_factors}
        self.factors_folded = {u.casefold(): f for u, f in self.factors.items()}
        self.unit_field = spec.name + "_unit" if spec.unit_factors else None
        self.exact = _EXACT.get(spec.type)

    def coerce(self, value: Scalar, unit: str | None = None) -> tuple[Scalar, str | None]:
        """`value` in the spec's type (and canonical unit), plus what was normalised."""
        kind = self.type
        if kind is FieldType.FLOAT or kind is FieldType.INT:
            return self._number(value, unit)
        if unit is not None:
            raise self._wrong(f"has a unit but is a {kind.value}")
        if kind is FieldType.CATEGORY:
            return self._category(value)
        if kind is FieldType.STRING:
            return self._string(value)
        if kind is FieldType.BOOL:
            return self._bool(value)
        return self._timestamp(value)

    def _wrong(self, why: str) -> Rejection:
        return Rejection(Reason.WRONG_TYPE, f"{self.name}: {why}", field=self.name)

    def _factor(self, unit: str) -> float:
        factor = self.factors.get(unit)
        if factor is None:
            factor = self.factors_folded.get(unit.casefold())
        if factor is None:
            known = ", ".join(sorted(self.factors)) or "none"
            raise Rejection(Reason.UNKNOWN_UNIT, f"{self.name}: unit not one of {known}",
                            field=self.name)
        return factor

    def _number(self, value: Scalar, unit: str | None) -> tuple[Scalar, str | None]:
        notes = []
        if isinstance(value, bool) or value is None:
            raise self._wrong(f"must be a number, got {type(value).__name__}")
        if isinstance(value, str):
            match = _NUMBER_WITH_UNIT.match(value)
            if match is None:
                raise self._wrong("is a string that is not a number")
            number: float | int = float(match.group(1))
            if match.group(2):
                if unit is not None:
                    raise self._wrong("has a unit suffix and a unit field")
                unit = match.group(2)
            notes.append("parsed from text")
        elif isinstance(value, int | float):
            number = value
        else:
            raise self._wrong(f"must be a number, got {type(value).__name__}")
        if unit is not None:
            factor = self._factor(unit)
            if factor != 1.0:
                number = number * factor
                notes.append(f"converted from {unit} to {self.spec.unit or 'canonical unit'}")
        if not math.isfinite(number):
            raise self._wrong("is not a finite number")
        if self.type is FieldType.INT:
            if isinstance(number, float):
                if not number.is_integer():
                    raise self._wrong("must be a whole number")
                number = int(number)
        elif isinstance(number, int):
            number = float(number)
        return number, "; ".join(notes) or None

    def _category(self, value: Scalar) -> tuple[Scalar, str | None]:
        if isinstance(value, bool) or value is None or not isinstance(value, str | int | float):
            raise self._wrong("must be a category name")
        text = value if isinstance(value, str) else str(value)
        assert self.allowed is not None  # a category spec always has allowed values
        if text in self.allowed:
            return text, None if isinstance(value, str) else "number as text"
        canonical = self.allowed_folded.get(text.strip().casefold())
        if canonical is None:
            raise Rejection(Reason.NOT_ALLOWED, f"{self.name}: not an allowed value",
                            field=self.name)
        return canonical, "trimmed and case-folded"

    def _string(self, value: Scalar) -> tuple[Scalar, str | None]:
        if isinstance(value, str):
            stripped = value.strip()
            return stripped, None if stripped == value else "trimmed"
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value), "number as text"
        raise self._wrong(f"must be text, got {type(value).__name__}")

    def _bool(self, value: Scalar) -> tuple[Scalar, str | None]:
        if isinstance(value, bool):
            return value, None
        if isinstance(value, int) and value in (0, 1):
            return bool(value), "number as bool"
        if isinstance(value, str):
            folded = value.strip().casefold()
            if folded in _TRUE:
                return True, "text as bool"
            if folded in _FALSE:
                return False, "text as bool"
        raise self._wrong("must be true or false")

    def _timestamp(self, value: Scalar) -> tuple[Scalar, str | None]:
        if isinstance(value, str):
            try:
                moment = datetime.fromisoformat(value.strip())
            except ValueError:
                raise self._wrong("is not an ISO 8601 time") from None
        elif isinstance(value, int | float) and not isinstance(value, bool):
            seconds = value / 1000 if abs(value) >= _EPOCH_MS_ABOVE else value
            try:
                moment = datetime.fromtimestamp(seconds, UTC)
            except (OverflowError, OSError, ValueError):
                raise self._wrong("is not a representable epoch time") from None
        else:
            raise self._wrong("must be a time")
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        text = moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
        return text, None if text == value else "as UTC ISO 8601"
