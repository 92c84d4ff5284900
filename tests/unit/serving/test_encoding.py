"""The per-row encoder gives exactly the trainer's FeatureTransform matrix (the oracle), for
every column kind, missing and non-finite values, one row or many; anything else it leaves to
the transform."""

from __future__ import annotations

import math
import random

import numpy as np

from services.serving.encoding import MAX_ROWS, compile_rows, matches
from services.serving.inputs import RecordSchema
from shared.datasets import load_spec
from shared.events import Scalar
from shared.models.features import Column, FeatureTransform
from tests.unit.serving.support import fitted_transform, record

COLUMNS = [
    Column("a", "numeric", mean=3.5, std=2.25, impute=1.0),
    Column("b", "numeric", mean=-7.0, std=0.1),
    Column("c", "numeric", mean=0.0, std=1.0, impute="4.5"),
    Column("flag", "bool", impute=1.0),
    Column("other", "bool"),
    Column("kind", "category", categories=("x", "y", "z"), impute="y"),
    Column("tier", "category", categories=("low", "high")),
    Column("word", "hash", buckets=16, impute="none"),
    Column("tag", "hash", buckets=4),
]


def _records(count: int) -> list[dict[str, Scalar]]:
    rng = random.Random(7)
    numbers: list[Scalar] = [0, 1, -3, 12345678901, 0.5, -2.75, 1e30, math.inf, -math.inf,
                             math.nan, None]
    values: dict[str, list[Scalar]] = {
        "a": numbers, "b": numbers, "c": numbers, "flag": [True, False, None],
        "other": [True, False, None], "kind": ["x", "y", "z", "w", None],
        "tier": ["low", "high", "mid", None], "word": ["alpha", "beta", "", "γ", None],
        "tag": ["t1", "t2", None]}
    out = []
    for _ in range(count):
        rec = {name: rng.choice(options) for name, options in values.items()}
        out.append({k: v for k, v in rec.items() if v is not None or rng.random() < 0.5})
    return out


def test_every_column_kind_matches_the_transform() -> None:
    transform = FeatureTransform("synthetic", "hash", list(COLUMNS))
    encode = compile_rows(transform)
    assert encode is not None
    records = _records(400)
    for i in range(0, len(records), 40):
        assert matches(transform, encode, records[i:i + 40])
    one = encode(records[:1])
    assert one is not None and one.dtype == np.float32 and one.shape == (1, transform.dim)


def test_served_records_match_and_a_big_batch_goes_to_the_transform() -> None:
    transform = fitted_transform()
    schema = RecordSchema(load_spec("transactions"))
    encode = compile_rows(transform)
    assert encode is not None
    cleaned = [schema.clean(record(i)) for i in range(MAX_ROWS)]
    assert matches(transform, encode, cleaned)
    assert encode(cleaned + cleaned[:1]) is None


def test_values_it_does_not_handle_fall_back() -> None:
    transform = FeatureTransform("synthetic", "hash", list(COLUMNS))
    encode = compile_rows(transform)
    assert encode is not None
    for odd in ({"a": "3.5"}, {"a": True}, {"flag": 1}, {"kind": 3}, {"word": 2.0}):
        assert encode([odd]) is None
    timestamps = FeatureTransform("synthetic", "hash", [Column("at", "timestamp")])
    assert compile_rows(timestamps) is None


def test_a_wrong_encoder_is_caught() -> None:
    transform = FeatureTransform("synthetic", "hash", list(COLUMNS))
    shifted = FeatureTransform("synthetic", "hash",
                               [Column("a", "numeric", mean=3.5, std=2.0, impute=1.0),
                                *COLUMNS[1:]])
    encode = compile_rows(shifted)
    assert encode is not None
    assert not matches(transform, encode, _records(20))
