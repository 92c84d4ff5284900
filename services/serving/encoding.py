"""A per-row feature encoder for small requests: the trainer's FeatureTransform (consumed as
its columns) compiled into plain Python steps that write one float32 row per cleaned record.
`FeatureTransform.transform` builds its matrix column by column with a few NumPy calls per
column, which dominates the cost of scoring one row; this computes the same float64 values
and casts them to float32 once. It handles only the value types `RecordSchema.clean` produces
(anything else: None, and the caller uses the transform) and is checked against the transform
on sample records before a model uses it."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from shared.models.features import Column, FeatureTransform, bucket

Row = list[float]
Step = Callable[[Mapping[str, Any], Row], bool]  # False: a value it does not handle
Encoder = Callable[[Sequence[Mapping[str, Any]]], npt.NDArray[np.float32] | None]
MAX_ROWS = 64  # above this the column-wise transform is as fast


def _numeric(column: Column, at: int) -> Step:
    name, fill, mean, std, isfinite = column.name, column.fill, column.mean, column.std, \
        math.isfinite

    def step(record: Mapping[str, Any], row: Row) -> bool:
        value = record.get(name)
        if value is None:
            number = fill
        elif value.__class__ is float or value.__class__ is int:
            number = float(value)
            if not isfinite(number):
                number = fill
        else:
            return False
        row[at] = (number - mean) / std
        return True

    return step


def _boolean(column: Column, at: int) -> Step:
    name, fill = column.name, column.fill

    def step(record: Mapping[str, Any], row: Row) -> bool:
        value = record.get(name)
        if value is None:
            row[at] = fill
        elif value is True or value is False:
            row[at] = 1.0 if value else 0.0
        else:
            return False
        return True

    return step


def _category(column: Column, at: int) -> Step:
    name, impute = column.name, column.impute
    index = {c: at + i for i, c in enumerate(column.categories)}

    def step(record: Mapping[str, Any], row: Row) -> bool:
        value = record.get(name)
        if value is None:
            if impute is None:
                return True
            value = str(impute)
        elif value.__class__ is not str:
            return False
        position = index.get(value)
        if position is not None:
            row[position] = 1.0
        return True

    return step


def _hashed(column: Column, at: int) -> Step:
    name, impute, buckets = column.name, column.impute, column.buckets

    def step(record: Mapping[str, Any], row: Row) -> bool:
        value = record.get(name)
        if value is None:
            if impute is None:
                return True
            value = str(impute)
        elif value.__class__ is not str:
            return False
        row[at + bucket(value, buckets)] = 1.0
        return True

    return step


_STEPS = {"numeric": _numeric, "bool": _boolean, "category": _category, "hash": _hashed}


def compile_rows(transform: FeatureTransform) -> Encoder | None:
    """An encoder of cleaned records giving `transform`'s matrix, or None when a column kind
    is not covered (timestamps)."""
    steps: list[Step] = []
    at = 0
    for column in transform.columns:
        make = _STEPS.get(column.kind)
        if make is None:
            return None
        steps.append(make(column, at))
        at += column.width
    dim = at

    def encode(records: Sequence[Mapping[str, Any]]) -> npt.NDArray[np.float32] | None:
        if len(records) > MAX_ROWS:
            return None
        rows = []
        for record in records:
            row = [0.0] * dim
            for step in steps:
                if not step(record, row):
                    return None
            rows.append(row)
        return np.array(rows, dtype=np.float32).reshape(len(records), dim)

    return encode


def matches(transform: FeatureTransform, encode: Encoder,
            records: Sequence[Mapping[str, Any]]) -> bool:
    """True when `encode` gives exactly `transform`'s matrix for `records`, one by one and
    all together."""
    expected = transform.transform(records)
    together = encode(records)
    if together is None or not np.array_equal(together, expected):
        return False
    for i, record in enumerate(records):
        one = encode([record])
        if one is None or not np.array_equal(one, expected[i:i + 1]):
            return False
    return True
