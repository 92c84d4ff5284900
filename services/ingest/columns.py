"""One spec field over a batch: the column of its values in every payload is imputed,
normalised, range-checked and clipped at once (numbers as numpy arrays), with each event's
outcome kept for the DLQ reason and the data-quality counts.

Values already of the spec's type take the vectorised path; anything else (numbers as text,
units, case-folded categories, timestamps) goes through `normalise.FieldRule.coerce` one
value at a time. Consumes: the column, its `<field>_unit` column, the envelopes' subject ids.
Produces: a ColumnResult; Changes are appended to each event's list in spec order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt

from services.ingest.normalise import FieldRule
from services.ingest.rejection import Reason, Rejection, Stage, internal
from shared.datasets import FieldType
from shared.events import Change, Scalar

MISSING: Any = type("Missing", (), {"__repr__": lambda self: "MISSING"})()  # absent: omitted
EXACT_FLOAT = 2.0 ** 53  # integers beyond this are compared in Python, not as float64


class Outcome(IntEnum):
    """What happened to one field of one event (the quality counts' kinds)."""

    OK = 0
    MISSING = 1
    WRONG_TYPE = 2
    OUT_OF_RANGE = 3
    INVALID = 4  # not allowed, too long, subject mismatch, unknown field (rejected)
    CLIPPED = 5


OUTCOME_OF = {Reason.MISSING_FIELD: Outcome.MISSING, Reason.WRONG_TYPE: Outcome.WRONG_TYPE,
              Reason.UNKNOWN_UNIT: Outcome.WRONG_TYPE, Reason.OUT_OF_RANGE: Outcome.OUT_OF_RANGE}


@lru_cache(maxsize=4096)
def change(field: str, action: str, detail: str | None) -> Change:
    """The (immutable, so shared) Change for these values; most repeat on every event."""
    return Change(field=field, action=action, detail=detail)  # type: ignore[arg-type]


@dataclass(slots=True)
class ColumnResult:
    """A cleaned column: values (MISSING where absent), errors and outcome per event."""

    values: list[Any]
    outcome: npt.NDArray[np.int8]
    errors: dict[int, Rejection] = field(default_factory=dict)
    missing: set[int] = field(default_factory=set)  # imputed or null: never checked further
    imputed: int = 0

    def done(self, i: int) -> bool:
        """True when event `i`'s value needs no more checks (missing or rejected)."""
        return i in self.missing or i in self.errors


class FieldColumn:
    """A FieldSpec compiled for whole columns."""

    def __init__(self, rule: FieldRule, is_subject: bool) -> None:
        spec = rule.spec
        self.rule = rule
        self.name = rule.name
        self.is_subject = is_subject
        self.impute = rule.coerce(spec.impute.value)[0] if spec.impute is not None else None
        strategy = spec.impute.strategy if spec.impute is not None else "constant"
        self.imputed = change(self.name, "imputed", strategy)
        self.from_envelope = change(self.name, "imputed", "from the envelope subject_id")
        self.numeric = spec.is_numeric
        self.text = spec.type in (FieldType.STRING, FieldType.CATEGORY, FieldType.TIMESTAMP)
        self.check_allowed = rule.allowed is not None and spec.type is not FieldType.CATEGORY
        inf = float("inf")
        self.bounds = (-inf if spec.valid_min is None else spec.valid_min,
                       inf if spec.valid_max is None else spec.valid_max,
                       -inf if spec.clip_min is None else spec.clip_min,
                       inf if spec.clip_max is None else spec.clip_max)
        cast = int if spec.type is FieldType.INT else float
        self.clip_to = (None if spec.clip_min is None else cast(spec.clip_min),
                        None if spec.clip_max is None else cast(spec.clip_max))
        self.clipped = (change(self.name, "clipped", "to clip_min"),
                        change(self.name, "clipped", "to clip_max"))

    def run(self, payloads: list[dict[str, Scalar]], subjects: list[str],
            changes: list[list[Change]]) -> ColumnResult:
        """Clean this field's column of `payloads` (appending Changes per event)."""
        name = self.name
        values: list[Any] = [p.get(name) for p in payloads]
        result = ColumnResult(values, np.zeros(len(values), np.int8))
        if None in values:
            self._missing(result, payloads, subjects, changes)
        units = self._units(payloads)
        exact = self.rule.exact
        if units is None and exact is not None:
            odd = [i for i, v in enumerate(values) if type(v) is not exact]
        elif units is None and self.rule.type is FieldType.CATEGORY:
            allowed = self.rule.allowed or frozenset()
            odd = [i for i, v in enumerate(values) if type(v) is not str or v not in allowed]
        elif units is None and self.rule.type is FieldType.STRING:
            odd = self._strings(result, changes)
        else:
            odd = list(range(len(values)))
        self._coerce(result, [i for i in odd if not result.done(i)], units, changes)
        if self.numeric:
            self._numbers(result, changes)
        elif self.text:
            self._texts(result)
        return result

    def _missing(self, result: ColumnResult, payloads: list[dict[str, Scalar]],
                 subjects: list[str], changes: list[list[Change]]) -> None:
        name, values = self.name, result.values
        for i in [i for i, v in enumerate(values) if v is None]:
            result.outcome[i] = Outcome.MISSING
            result.missing.add(i)
            if self.is_subject:
                values[i] = subjects[i]
                changes[i].append(self.from_envelope)
            elif self.impute is not None:
                values[i] = self.impute
                changes[i].append(self.imputed)
            elif self.rule.spec.required:
                result.errors[i] = Rejection(Reason.MISSING_FIELD, f"{name}: required but missing",
                                             field=name)
                continue
            elif name not in payloads[i]:
                values[i] = MISSING
                continue
            else:
                continue
            result.imputed += 1

    def _units(self, payloads: list[dict[str, Scalar]]) -> list[Any] | None:
        unit_field = self.rule.unit_field
        if unit_field is None:
            return None
        units = [p.get(unit_field) for p in payloads]
        return None if units.count(None) == len(units) else units

    def _strings(self, result: ColumnResult, changes: list[list[Change]]) -> list[int]:
        """Strip text values in place (recording "trimmed"); the others' indices."""
        odd = []
        trimmed = None
        values = result.values
        for i, value in enumerate(values):
            if type(value) is not str or i in result.missing:
                odd.append(i)
                continue
            stripped = value.strip()
            if stripped != value:
                values[i] = stripped
                trimmed = trimmed or change(self.name, "normalised", "trimmed")
                changes[i].append(trimmed)
        return odd

    def _coerce(self, result: ColumnResult, odd: list[int], units: list[Any] | None,
                changes: list[list[Change]]) -> None:
        values, rule = result.values, self.rule
        for i in odd:
            value = values[i]
            unit = units[i] if units is not None else None
            try:
                if unit is None and type(value) is rule.exact:
                    continue
                if unit is not None and not isinstance(unit, str):
                    raise Rejection(Reason.WRONG_TYPE, f"{rule.unit_field}: must be text",
                                    field=rule.unit_field or self.name)
                values[i], note = rule.coerce(value, unit)
            except Rejection as rejection:
                result.errors[i] = rejection
                result.outcome[i] = OUTCOME_OF.get(rejection.reason, Outcome.INVALID)
                continue
            except Exception as error:  # one odd value must never fail the batch
                result.errors[i] = internal(error, Stage.VALIDATE)
                result.outcome[i] = Outcome.INVALID
                continue
            if note is not None:
                changes[i].append(change(self.name, "normalised", note))

    def _numbers(self, result: ColumnResult, changes: list[list[Change]]) -> None:
        values, errors = result.values, result.errors
        index = [i for i in range(len(values)) if not result.done(i)] \
            if errors or result.missing else list(range(len(values)))
        if not index:
            return
        taken = values if len(index) == len(values) else [values[i] for i in index]
        try:
            column = np.array(taken, dtype=np.float64)
        except OverflowError:  # an integer beyond float64: compare every value in Python
            column = np.full(len(taken), np.nan)
        at = np.asarray(index)
        low, high, clip_low, clip_high = self.bounds
        out = (column < low) | (column > high)
        below = ~out & (column < clip_low)
        above = ~out & ~below & (column > clip_high)
        for k in np.flatnonzero(np.isnan(column) | (np.abs(column) >= EXACT_FLOAT)):
            value = taken[k]  # exact comparisons for what float64 cannot hold exactly
            out[k] = value < low or value > high
            below[k] = not out[k] and value < clip_low
            above[k] = not out[k] and not below[k] and value > clip_high
        spec = self.rule.spec
        for i in at[out].tolist():
            errors[i] = Rejection(Reason.OUT_OF_RANGE,
                                  f"{self.name}: outside [{spec.valid_min}, {spec.valid_max}]",
                                  field=self.name)
        result.outcome[at[out]] = Outcome.OUT_OF_RANGE
        for mask, bound, made in ((below, self.clip_to[0], self.clipped[0]),
                                  (above, self.clip_to[1], self.clipped[1])):
            for i in at[mask].tolist():
                values[i] = bound
                changes[i].append(made)
            result.outcome[at[mask]] = Outcome.CLIPPED

    def _texts(self, result: ColumnResult) -> None:
        values, errors, spec, rule = result.values, result.errors, self.rule.spec, self.rule
        limit = spec.max_length
        if limit is None and not self.check_allowed:
            return
        for i, value in enumerate(values):
            if type(value) is not str or result.done(i):
                continue
            if limit is not None and len(value) > limit:
                errors[i] = Rejection(Reason.TOO_LONG,
                                      f"{self.name}: longer than {limit} characters",
                                      field=self.name)
            elif self.check_allowed and value not in (rule.allowed or ()):
                errors[i] = Rejection(Reason.NOT_ALLOWED, f"{self.name}: not an allowed value",
                                      field=self.name)
            else:
                continue
            result.outcome[i] = Outcome.INVALID
