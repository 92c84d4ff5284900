"""Validate and clean a batch of one dataset's payloads against its spec, column by column.

`Cleaner(spec).clean_batch(payloads, subject_ids)` returns, per event, the clean payload (spec
field order) and the Changes made, or the Rejection that stops it: missing/null values imputed
per the spec, types and units normalised, numbers clipped to [clip_min, clip_max], unknown
fields dropped (or rejected, by setting), the subject field filled from the envelope. An event
is rejected for a missing required field, a wrong type, an unknown unit, a value outside
[valid_min, valid_max], a value not allowed, text over max_length, or a subject field that
contradicts the envelope; when several fields fail, the first in spec order names the reason.
Every field is checked in every event, so the batch also yields per-field quality counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from services.ingest.columns import MISSING, ColumnResult, FieldColumn, Outcome, change
from services.ingest.normalise import FieldRule
from services.ingest.rejection import Reason, Rejection
from shared.datasets import DatasetSpec, Role
from shared.events import Change, Scalar

UNIT_SUFFIX = "_unit"


@dataclass(slots=True)
class Cleaned:
    """A cleaned batch: per event a payload and its Changes, or the Rejection; per field the
    outcome counts (rows: spec fields, columns: Outcome), imputations and rejections."""

    payloads: list[dict[str, Scalar] | None]
    changes: list[list[Change]]
    rejections: list[Rejection | None]
    outcomes: npt.NDArray[np.int64]
    imputed: npt.NDArray[np.int64]
    rejected: npt.NDArray[np.int64]


class Cleaner:
    """A dataset spec compiled into per-field column rules."""

    def __init__(self, spec: DatasetSpec, unknown_fields: Literal["drop", "reject"] = "drop"):
        self.spec = spec
        subject = spec.by_role(Role.SUBJECT)
        self.subject_field = subject[0].name if subject else None
        self.columns = [FieldColumn(FieldRule(f), f.name == self.subject_field)
                        for f in spec.fields]
        self.names = [f.name for f in spec.fields]
        self.position = {name: k for k, name in enumerate(self.names)}
        self.position.update((f.name + UNIT_SUFFIX, k) for k, f in enumerate(spec.fields)
                             if f.unit_factors)
        self.known = frozenset(self.position)
        self.unknown_fields = unknown_fields

    def clean(self, payload: dict[str, Scalar], subject_id: str
              ) -> tuple[dict[str, Scalar], list[Change]]:
        """One event: the clean payload and the changes made, or Rejection."""
        cleaned = self.clean_batch([payload], [subject_id])
        if cleaned.rejections[0] is not None:
            raise cleaned.rejections[0]
        out = cleaned.payloads[0]
        assert out is not None
        return out, cleaned.changes[0]

    def clean_batch(self, payloads: Sequence[dict[str, Scalar]], subject_ids: Sequence[str]
                    ) -> Cleaned:
        """Clean every payload (with its envelope's subject id); never raises Rejection."""
        n, k = len(payloads), len(self.columns)
        payloads, subjects = list(payloads), list(subject_ids)
        changes: list[list[Change]] = [[] for _ in range(n)]
        rejections: list[Rejection | None] = [None] * n
        where = np.full(n, -1, np.int64)  # the field that rejected each event
        outcomes = np.zeros((k, len(Outcome)), np.int64)
        imputed = np.zeros(k, np.int64)
        columns: list[list[Any]] = []
        late: list[tuple[int, int, Rejection]] = []  # checked after every field
        for position, column in enumerate(self.columns):
            result = column.run(payloads, subjects, changes)
            if column.is_subject:
                late = [(i, position, error) for i, error in self._mismatches(result, subjects)]
            for i, rejection in result.errors.items():
                if rejections[i] is None:
                    rejections[i], where[i] = rejection, position
            outcomes[position] = np.bincount(result.outcome, minlength=len(Outcome))
            imputed[position] = result.imputed
            columns.append(result.values)
        for i, position, rejection in late:
            if rejections[i] is None:
                rejections[i], where[i] = rejection, position
        self._unknown(payloads, changes, rejections)
        rejected = np.bincount(where[where >= 0], minlength=k)
        return Cleaned(self._rows(columns, rejections), changes, rejections, outcomes, imputed,
                       rejected)

    def _mismatches(self, result: ColumnResult, subjects: list[str]
                    ) -> list[tuple[int, Rejection]]:
        """Events whose subject field contradicts the envelope (counted as invalid)."""
        field = self.subject_field or ""
        detail = f"{field}: differs from the envelope subject_id"
        found = []
        for i, (value, subject) in enumerate(zip(result.values, subjects, strict=True)):
            if value != subject and i not in result.errors:
                found.append((i, Rejection(Reason.SUBJECT_MISMATCH, detail, field=field)))
                result.outcome[i] = Outcome.INVALID
        return found

    def _unknown(self, payloads: list[dict[str, Scalar]], changes: list[list[Change]],
                 rejections: list[Rejection | None]) -> None:
        known = self.known
        for i, payload in enumerate(payloads):
            if payload.keys() <= known or rejections[i] is not None:
                continue
            for name in payload:
                if name in known:
                    continue
                if self.unknown_fields == "reject":
                    rejections[i] = Rejection(
                        Reason.UNKNOWN_FIELD, f"{name[:100]}: not a field of {self.spec.name}",
                        field=name)
                    break
                changes[i].append(change(name, "dropped", "not in the dataset spec"))

    def _rows(self, columns: list[list[Any]], rejections: list[Rejection | None]
              ) -> list[dict[str, Scalar] | None]:
        names = self.names
        rows: list[dict[str, Scalar] | None] = []
        gaps = any(MISSING in column for column in columns)
        for row, rejection in zip(zip(*columns, strict=True), rejections, strict=True):
            if rejection is not None:
                rows.append(None)
            elif gaps:
                rows.append({n: v for n, v in zip(names, row, strict=True) if v is not MISSING})
            else:
                rows.append(dict(zip(names, row, strict=True)))
        return rows
