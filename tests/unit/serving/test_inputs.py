"""Request records checked and cleaned against the dataset spec like ingest does; PII dropped
(never a model input); messages name fields, never values."""

from __future__ import annotations

import pytest

from services.serving.errors import InvalidInput
from services.serving.inputs import RecordSchema
from shared.datasets import load_spec
from shared.models.features import FeatureTransform
from tests.unit.serving.support import record


def _schema() -> RecordSchema:
    return RecordSchema(load_spec("transactions"))


def test_clean_clips_and_drops_pii() -> None:
    raw = {**record(1), "amount": 9000.0, "hour": 5.0, "is_fraud": True}
    clean = _schema().clean(raw)
    assert clean["amount"] == 5000.0
    assert clean["hour"] == 5
    assert isinstance(clean["hour"], int)
    assert "is_fraud" not in clean
    assert "email" not in clean
    assert "name" not in clean
    assert "card_number" not in clean
    assert all(str(raw[f]) not in str(clean) for f in ("card_number", "email", "name"))


def test_pii_is_never_a_model_input() -> None:
    spec = load_spec("transactions")
    transform = FeatureTransform.fit(spec, [_schema().clean(record(i)) for i in range(20)])
    pii = tuple(f.name for f in spec.pii_fields)
    assert transform.feature_names and not [n for n in transform.feature_names
                                            if n.startswith(pii)]


@pytest.mark.parametrize(("change", "fragment"), [
    ({"bogus": 1}, "'bogus' is not a field"),
    ({"amount": True}, "'amount' must be a number"),
    ({"amount": float("inf")}, "finite"),
    ({"amount": 2e6}, "above its maximum"),
    ({"region": "mars"}, "must be one of"),
    ({"card_number": 4111}, "'card_number' must be a string"),
    ({"transaction_id": "x" * 65}, "longer than 64"),
])
def test_invalid_records_name_the_field_not_the_value(change: dict[str, object],
                                                      fragment: str) -> None:
    with pytest.raises(InvalidInput) as info:
        _schema().clean({**record(2), **change})
    assert fragment in str(info.value)
    for value in change.values():
        if isinstance(value, str) and len(value) > 3:
            assert value not in str(info.value)


def test_missing_required_feature_and_optional_imputed() -> None:
    rec = record(2)
    rec.pop("distance_from_home_km", None)
    assert "distance_from_home_km" not in _schema().clean(rec)
    rec.pop("hour")
    with pytest.raises(InvalidInput, match="'hour' is required"):
        _schema().clean(rec)
