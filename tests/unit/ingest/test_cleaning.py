"""Validation and cleaning of payloads against dataset specs: examples and properties."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lepton.generators import transactions
from services.ingest.cleaning import Cleaner
from services.ingest.rejection import Reason, Rejection
from shared.datasets import FieldSpec, FieldType, load_spec

SPEC = load_spec("transactions")
CLEANER = Cleaner(SPEC)
BASE = next(transactions(1, seed=3)).payload
SUBJECT = str(BASE["customer_id"])


def clean(**changes: Any) -> tuple[dict[str, Any], list[tuple[str, str, str | None]]]:
    payload = {**BASE, **changes}
    payload = {k: v for k, v in payload.items() if v is not ...}
    out, made = CLEANER.clean(payload, SUBJECT)
    return out, [(c.field, c.action, c.detail) for c in made]


def reason_of(**changes: Any) -> Reason:
    with pytest.raises(Rejection) as caught:
        clean(**changes)
    return caught.value.reason


def test_a_valid_payload_passes_unchanged() -> None:
    out, made = clean()
    assert made == []
    assert out == BASE


def test_types_are_normalised_and_recorded() -> None:
    out, made = clean(amount="12.5", hour="7", card_present="TRUE", region="  North ",
                      merchant_category="Fuel")
    assert (out["amount"], out["hour"], out["card_present"]) == (12.5, 7, True)
    assert (out["region"], out["merchant_category"]) == ("north", "fuel")
    assert {(f, a) for f, a, _ in made} == {
        ("amount", "normalised"), ("hour", "normalised"), ("card_present", "normalised"),
        ("region", "normalised"), ("merchant_category", "normalised")}


def test_units_as_suffix_or_sibling_field_convert_to_the_canonical_unit() -> None:
    out, made = clean(amount="1250 cents")
    assert out["amount"] == pytest.approx(12.5)
    assert ("amount", "normalised", "parsed from text; converted from cents to USD") in made
    out, made = clean(amount=1250, amount_unit="cents")
    assert out["amount"] == pytest.approx(12.5)
    assert "amount_unit" not in out
    assert reason_of(amount="3 doubloons") is Reason.UNKNOWN_UNIT
    assert reason_of(amount=3, amount_unit="doubloons") is Reason.UNKNOWN_UNIT


def test_missing_values_are_imputed_per_spec_or_rejected_when_required() -> None:
    out, made = clean(distance_from_home_km=..., amount=None)
    assert out["distance_from_home_km"] == 8.0
    assert out["amount"] == 42.0
    assert ("amount", "imputed", "median") in made
    assert reason_of(hour=...) is Reason.MISSING_FIELD


def test_the_subject_field_comes_from_the_envelope_and_must_agree() -> None:
    out, made = clean(customer_id=...)
    assert out["customer_id"] == SUBJECT
    assert ("customer_id", "imputed", "from the envelope subject_id") in made
    assert reason_of(customer_id="cust-someone-else") is Reason.SUBJECT_MISMATCH


def test_clip_and_valid_ranges() -> None:
    out, made = clean(amount=9000.0, transactions_last_24h=70)
    assert (out["amount"], out["transactions_last_24h"]) == (5000.0, 50)
    assert ("amount", "clipped", "to clip_max") in made
    assert reason_of(amount=2_000_000) is Reason.OUT_OF_RANGE
    assert reason_of(hour=-1) is Reason.OUT_OF_RANGE


@pytest.mark.parametrize(("changes", "reason"), [
    ({"amount": "lots"}, Reason.WRONG_TYPE),
    ({"amount": True}, Reason.WRONG_TYPE),
    ({"hour": 3.5}, Reason.WRONG_TYPE),
    ({"card_present": "perhaps"}, Reason.WRONG_TYPE),
    ({"email": 12.5}, Reason.WRONG_TYPE),
    ({"region": "atlantis"}, Reason.NOT_ALLOWED),
    ({"email": "x" * 255}, Reason.TOO_LONG),
])
def test_bad_values_are_rejected_with_their_reason(changes: dict[str, Any], reason: Reason
                                                   ) -> None:
    assert reason_of(**changes) is reason


def test_rejection_details_never_contain_the_value() -> None:
    secret = "very-secret-value-" + "z" * 300
    with pytest.raises(Rejection) as caught:
        clean(email=secret)
    assert "very-secret" not in str(caught.value)
    assert caught.value.field == "email"


def test_unknown_fields_are_dropped_and_recorded_or_rejected_by_setting() -> None:
    out, made = clean(ssn="123-45-6789")
    assert "ssn" not in out
    assert ("ssn", "dropped", "not in the dataset spec") in made
    strict = Cleaner(SPEC, unknown_fields="reject")
    with pytest.raises(Rejection) as caught:
        strict.clean({**BASE, "ssn": "123-45-6789"}, SUBJECT)
    assert caught.value.reason is Reason.UNKNOWN_FIELD


# ---- properties ----

def _valid_value(field: FieldSpec) -> st.SearchStrategy[Any]:
    if field.name == "customer_id":
        return st.just(SUBJECT)
    if field.type is FieldType.CATEGORY:
        return st.sampled_from(field.allowed or ())
    if field.type is FieldType.BOOL:
        return st.booleans()
    if field.type is FieldType.STRING:
        return st.text(min_size=1, max_size=field.max_length or 50).filter(
            lambda s: s == s.strip() and s != "")
    low = field.valid_min if field.valid_min is not None else -1e9
    high = field.valid_max if field.valid_max is not None else 1e9
    if field.type is FieldType.INT:
        return st.integers(math.ceil(low), int(high))
    return st.floats(low, high, allow_nan=False, allow_infinity=False)


VALID_PAYLOADS = st.fixed_dictionaries({f.name: _valid_value(f) for f in SPEC.fields})
ANY_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12),
                       st.floats(allow_nan=False), st.text(max_size=30),
                       st.sampled_from(["12.5", " 3 ", "1e3", "7 cents", "TRUE", "no", "North"]))
ANY_PAYLOADS = st.fixed_dictionaries({}, optional={f.name: ANY_SCALAR for f in SPEC.fields})
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _conforms(out: dict[str, Any]) -> None:
    for field in SPEC.fields:
        if field.name not in out or out[field.name] is None:
            assert not field.required or field.impute is None
            continue
        value = out[field.name]
        expected = {FieldType.FLOAT: float, FieldType.INT: int, FieldType.BOOL: bool}.get(
            field.type, str)
        assert type(value) is expected, field.name
        if field.is_numeric:
            assert field.clip_min is None or value >= field.clip_min
            assert field.clip_max is None or value <= field.clip_max
            assert field.valid_min is None or value >= field.valid_min
        if field.allowed:
            assert value in field.allowed
        if field.max_length and isinstance(value, str):
            assert len(value) <= field.max_length


@FAST
@given(VALID_PAYLOADS)
def test_property_valid_payloads_always_pass_and_conform(payload: dict[str, Any]) -> None:
    out, _ = CLEANER.clean(payload, SUBJECT)
    _conforms(out)


@FAST
@given(ANY_PAYLOADS)
def test_property_any_payload_is_cleaned_to_conform_or_rejected_with_a_reason(
    payload: dict[str, Any],
) -> None:
    try:
        out, _ = CLEANER.clean(payload, SUBJECT)
    except Rejection as rejection:
        caught: Rejection | None = rejection
    else:
        caught = None
        _conforms(out)
    if caught is not None:
        assert caught.reason in set(Reason)
        assert caught.field


@FAST
@given(ANY_PAYLOADS)
def test_property_cleaning_is_idempotent(payload: dict[str, Any]) -> None:
    try:
        once, _ = CLEANER.clean(payload, SUBJECT)
    except Rejection:
        return
    twice, changes = CLEANER.clean(once, SUBJECT)
    assert twice == once
    assert changes == []


@FAST
@given(st.floats(0, 1_000_000, allow_nan=False), st.sampled_from(["", " ", "  "]))
def test_property_numeric_text_equals_the_number(amount: float, pad: str) -> None:
    as_number, _ = clean(amount=amount)
    as_text, _ = clean(amount=f"{pad}{amount!r}{pad}")
    assert as_text["amount"] == as_number["amount"]
