"""Validate and clean one payload against its dataset spec.

`Cleaner(spec).clean(payload, subject_id)` returns the clean payload (spec field order) and the
Changes made: missing/null values imputed per the spec, types and units normalised, numbers
clipped to [clip_min, clip_max], unknown fields dropped (or rejected, by setting), the subject
field filled from the envelope. It raises Rejection for a missing required field, a wrong type,
an unknown unit, a value outside [valid_min, valid_max], a value not allowed, text over
max_length, or a subject field that contradicts the envelope.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from services.ingest.normalise import FieldRule
from services.ingest.rejection import Reason, Rejection
from shared.datasets import DatasetSpec, FieldType, Role
from shared.events import Change, Scalar

UNIT_SUFFIX = "_unit"


@lru_cache(maxsize=4096)
def change(field: str, action: str, detail: str) -> Change:
    """The (immutable, so shared) Change for these values; most repeat on every event."""
    return Change(field=field, action=action, detail=detail)  # type: ignore[arg-type]


class Cleaner:
    """A dataset spec compiled into per-field rules."""

    def __init__(self, spec: DatasetSpec, unknown_fields: Literal["drop", "reject"] = "drop"):
        self.spec = spec
        self.rules = [FieldRule(field) for field in spec.fields]
        self.known = {field.name for field in spec.fields}
        self.unit_fields = {f.name + UNIT_SUFFIX: f.name for f in spec.fields if f.unit_factors}
        self.unknown_fields = unknown_fields
        subject = spec.by_role(Role.SUBJECT)
        self.subject_field = subject[0].name if subject else None
        self.impute = {r.name: r.coerce(r.spec.impute.value)[0] for r in self.rules
                       if r.spec.impute is not None}

    def clean(self, payload: dict[str, Scalar], subject_id: str
              ) -> tuple[dict[str, Scalar], list[Change]]:
        """The clean payload and the changes made, or Rejection."""
        changes: list[Change] = []
        out: dict[str, Scalar] = {}
        for rule in self.rules:
            name = rule.name
            value = payload.get(name)
            if value is None:
                if name == self.subject_field:
                    out[name] = subject_id
                    changes.append(change(field=name, action="imputed",
                                          detail="from the envelope subject_id"))
                elif name in self.impute:
                    out[name] = self.impute[name]
                    strategy = rule.spec.impute.strategy if rule.spec.impute else "constant"
                    changes.append(change(field=name, action="imputed", detail=strategy))
                elif rule.spec.required:
                    raise Rejection(Reason.MISSING_FIELD, f"{name}: required but missing",
                                    field=name)
                elif name in payload:
                    out[name] = None
                continue
            unit = payload.get(rule.unit_field) if rule.unit_field is not None else None
            if unit is None and type(value) is rule.exact:
                note = None
            elif unit is not None and not isinstance(unit, str):
                raise Rejection(Reason.WRONG_TYPE, f"{rule.unit_field}: must be text",
                                field=rule.unit_field or name)
            else:
                value, note = rule.coerce(value, unit)
            if note is not None:
                changes.append(change(field=name, action="normalised", detail=note))
            out[name] = self._check(rule, value, changes)
        if self.subject_field is not None and out.get(self.subject_field) != subject_id:
            raise Rejection(Reason.SUBJECT_MISMATCH,
                            f"{self.subject_field}: differs from the envelope subject_id",
                            field=self.subject_field)
        self._unknown(payload, changes)
        return out, changes

    def _check(self, rule: FieldRule, value: Scalar, changes: list[Change]) -> Scalar:
        spec = rule.spec
        if isinstance(value, int | float) and not isinstance(value, bool):
            if (spec.valid_min is not None and value < spec.valid_min) or (
                spec.valid_max is not None and value > spec.valid_max
            ):
                raise Rejection(
                    Reason.OUT_OF_RANGE,
                    f"{rule.name}: outside [{spec.valid_min}, {spec.valid_max}]", field=rule.name,
                )
            if spec.clip_min is not None and value < spec.clip_min:
                changes.append(change(field=rule.name, action="clipped", detail="to clip_min"))
                return _same_type(value, spec.clip_min)
            if spec.clip_max is not None and value > spec.clip_max:
                changes.append(change(field=rule.name, action="clipped", detail="to clip_max"))
                return _same_type(value, spec.clip_max)
        elif isinstance(value, str):
            if spec.max_length is not None and len(value) > spec.max_length:
                raise Rejection(Reason.TOO_LONG,
                                f"{rule.name}: longer than {spec.max_length} characters",
                                field=rule.name)
            if rule.allowed is not None and spec.type is not FieldType.CATEGORY \
                    and value not in rule.allowed:
                raise Rejection(Reason.NOT_ALLOWED, f"{rule.name}: not an allowed value",
                                field=rule.name)
        return value

    def _unknown(self, payload: dict[str, Scalar], changes: list[Change]) -> None:
        for name in payload:
            if name in self.known or name in self.unit_fields:
                continue
            if self.unknown_fields == "reject":
                raise Rejection(Reason.UNKNOWN_FIELD,
                                f"{name[:100]}: not a field of {self.spec.name}", field=name)
            changes.append(change(field=name, action="dropped", detail="not in the dataset spec"))


def _same_type(value: int | float, bound: float) -> int | float:
    return int(bound) if isinstance(value, int) else float(bound)
