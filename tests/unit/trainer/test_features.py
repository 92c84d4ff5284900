"""FeatureTransform: encoding per field type, imputation, round trip through a dict."""

from __future__ import annotations

import numpy as np
import pytest

from lepton.generators import breast_cancer, transactions
from shared.datasets import load_spec
from shared.datasets.spec import DatasetSpec
from shared.models.features import FeatureTransform, bucket


def _spec() -> DatasetSpec:
    return DatasetSpec.model_validate({
        "name": "mini",
        "fields": [
            {"name": "id", "type": "string", "role": "id"},
            {"name": "x", "type": "float", "role": "feature",
             "impute": {"strategy": "constant", "value": 5.0}},
            {"name": "flag", "type": "bool", "role": "feature", "required": False},
            {"name": "colour", "type": "category", "role": "feature",
             "allowed": ["red", "green"]},
            {"name": "city", "type": "string", "role": "feature"},
            {"name": "group", "type": "category", "role": "sensitive", "allowed": ["a", "b"]},
            {"name": "y", "type": "bool", "role": "label"},
        ],
        "model": {"token_buckets": 4},
    })


def test_encodes_each_field_type() -> None:
    spec = _spec()
    rows = [
        {"x": 2.0, "flag": True, "colour": "red", "city": "Oslo", "group": "a", "y": True},
        {"x": 4.0, "flag": False, "colour": "green", "city": "Rome", "group": "b", "y": False},
        {"x": None, "colour": "blue", "city": None, "y": "true"},
    ]
    ft = FeatureTransform.fit(spec, rows)
    assert ft.dim == 1 + 1 + 2 + 4
    assert ft.feature_names[:4] == ["x", "flag", "colour=red", "colour=green"]
    out = ft.transform(rows)
    assert out.dtype == np.float32
    assert out.shape == (3, 8)
    # mean 3, std 1 over the two present values; the third row imputes 5.0 from the spec
    np.testing.assert_allclose(out[:, 0], [-1.0, 1.0, 2.0])
    np.testing.assert_allclose(out[:, 1], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(out[:, 2:4], [[1, 0], [0, 1], [0, 0]])
    assert out[0, 4 + bucket("Oslo", 4)] == 1.0
    assert out[0, 4:].sum() == 1.0
    assert out[2, 4:].sum() == 0.0
    np.testing.assert_allclose(ft.labels(rows), [1.0, 0.0, 1.0])
    assert ft.groups(rows) == ["a", "b", None]


def test_unparsable_numbers_are_imputed_and_labels_nan() -> None:
    ft = FeatureTransform.fit(_spec(), [{"x": 1.0}, {"x": 3.0}])
    out = ft.transform([{"x": "not a number"}, {"x": "3"}])
    np.testing.assert_allclose(out[:, 0], [3.0, 1.0])  # (5 - 2) / 1, (3 - 2) / 1
    assert np.isnan(ft.labels([{"y": "maybe"}])[0])


def test_round_trip_through_dict_gives_identical_matrix() -> None:
    spec = load_spec("transactions")
    payloads = [e.payload for e in transactions(200, seed=3)]
    ft = FeatureTransform.fit(spec, payloads)
    again = FeatureTransform.from_dict(ft.to_dict())
    np.testing.assert_array_equal(ft.transform(payloads), again.transform(payloads))
    assert again.sensitive == "age_band"
    assert again.label == "is_fraud"
    assert again.spec_hash == spec.spec_hash()


def test_breast_cancer_standardised() -> None:
    spec = load_spec("breast_cancer")
    payloads = [e.payload for e in breast_cancer()]
    ft = FeatureTransform.fit(spec, payloads)
    x = ft.transform(payloads)
    assert x.shape == (569, 30)
    np.testing.assert_allclose(x.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(x.std(axis=0), 1.0, atol=1e-3)
    assert ft.labels(payloads).sum() == 212  # malignant rows


def test_malformed_dict_is_rejected() -> None:
    with pytest.raises(ValueError, match="malformed"):
        FeatureTransform.from_dict({"dataset": "x"})
    with pytest.raises(ValueError, match="format"):
        FeatureTransform.from_dict({"format": 99})
