"""The columnar cleaner against the per-event cleaner it replaced (kept here as the oracle):
on generated batches both give identical payloads (values and types, in order), Changes and
rejections (reason, field, detail) for every event; plus the per-field quality counts."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lepton.generators import transactions
from services.ingest.cleaning import Cleaner
from services.ingest.columns import Outcome
from services.ingest.rejection import Reason, Rejection, Stage
from shared.datasets import DatasetSpec, FieldSpec, FieldType, load_spec
from tests.unit.ingest.oracle_cleaning import Cleaner as Oracle

TRANSACTIONS = load_spec("transactions")
# every field type and rule the specs allow, including an impute value outside the clip range
ODD = DatasetSpec.model_validate({
    "name": "odd", "fields": [
        {"name": "who", "type": "string", "role": "subject", "max_length": 12},
        {"name": "when", "type": "timestamp", "role": "feature", "required": False},
        {"name": "level", "type": "int", "role": "feature", "valid_min": -5, "valid_max": 2**60,
         "clip_min": 0, "clip_max": 9, "impute": {"value": 50}},
        {"name": "weight", "type": "float", "role": "feature", "unit": "kg",
         "unit_factors": {"g": 0.001, "lb": 0.4536}, "required": False},
        {"name": "tag", "type": "string", "role": "feature", "allowed": ["a", "b"],
         "required": False},
        {"name": "note", "type": "string", "role": "feature", "required": False},
        {"name": "kind", "type": "category", "role": "feature", "allowed": ["Red", "blue"]},
        {"name": "flag", "type": "bool", "role": "label", "impute": {"value": "yes"}},
    ]})

TEXTS = st.sampled_from(["12.5", " 3 ", "1e3", "7 cents", "1250 cents", "3 lb", "9 g", "TRUE",
                         "no", "North", " fuel ", "Fuel", "red", " BLUE", "a", "b ", "c",
                         "2026-01-01T00:00:00Z", "2026-01-01 10:00", "x" * 13, "", "nan",
                         "cust-1", " cust-1 ", "2.0", "-7", "1e400"])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20),
                    st.sampled_from([0, 1, 2**53 + 1, 2**61, -2**53 - 1, 10**400]),
                    st.floats(allow_nan=False), st.text(max_size=6), TEXTS)


BASE = next(transactions(1, seed=3)).payload
SUBJECTS = st.sampled_from([str(BASE["customer_id"]), "cust-1"])


def _good(field: FieldSpec) -> st.SearchStrategy[Any]:
    """Values that are (nearly always) valid for `field`, in its type or as normalisable text."""
    if field.role.value == "subject":
        return SUBJECTS | SUBJECTS.map(lambda s: f" {s} ")
    if field.allowed:
        return st.sampled_from(field.allowed) | st.sampled_from(field.allowed).map(
            lambda a: f" {a.upper()} ")
    if field.type is FieldType.BOOL:
        return st.booleans() | st.sampled_from(["yes", "F", 0, 1])
    if field.type is FieldType.TIMESTAMP:
        return st.sampled_from(["2026-01-01T00:00:00+02:00", 1_767_225_600, 1_767_225_600_000.0])
    if field.is_numeric:
        low = -10.0 if field.valid_min is None else field.valid_min
        high = 10.0 if field.valid_max is None else min(field.valid_max, 1e7)
        numbers = st.integers(int(low), int(high)) if field.type is FieldType.INT else \
            st.floats(low, high)
        return numbers | numbers.map(lambda v: f"{v}") | numbers.map(lambda v: f"{v} cents")
    return st.text(max_size=6) | st.text(max_size=6).map(lambda t: f"  {t} ")


def _payloads(spec: DatasetSpec) -> st.SearchStrategy[dict[str, Any]]:
    """Mostly valid payloads: each field usually good, sometimes anything, sometimes absent."""
    fields = {f.name: st.one_of(*[_good(f)] * 5, SCALARS) for f in spec.fields}
    fields.update({f.name + "_unit": st.one_of(st.sampled_from(["cents", "USD", "g", "lb", "x"]),
                                               SCALARS) for f in spec.fields if f.unit_factors})
    fields["extra"] = SCALARS
    required = {f.name for f in spec.fields if f.required}
    return st.fixed_dictionaries({k: v for k, v in fields.items() if k in required},
                                 optional={k: v for k, v in fields.items() if k not in required})


def _nearly_valid() -> st.SearchStrategy[dict[str, Any]]:
    """The valid transactions payload with up to two fields replaced."""
    return st.dictionaries(st.sampled_from(sorted(BASE)), SCALARS, max_size=2).map(
        lambda spoil: {**BASE, **spoil})


def _typed(value: Any) -> Any:
    if isinstance(value, dict):
        return [(k, type(v).__name__, v) for k, v in value.items()]
    return (type(value).__name__, value)


def _outcome(cleaner: Any, payload: dict[str, Any], subject: str) -> Any:
    try:
        out, changes = cleaner.clean(payload, subject)
    except Rejection as rejection:
        return ("rejected", rejection.reason, rejection.field, rejection.detail, rejection.stage)
    except Exception as error:  # the processor dead-letters it as an internal error
        return ("rejected", Reason.INTERNAL_ERROR, "", f"{type(error).__name__} while processing",
                Stage.VALIDATE)
    return (_typed(out), [(c.field, c.action, c.detail) for c in changes])


def _compare(spec: DatasetSpec, batch: list[dict[str, Any]], subjects: list[str],
             mode: str) -> None:
    oracle, cleaner = Oracle(spec, mode), Cleaner(spec, mode)  # type: ignore[arg-type]
    cleaned = cleaner.clean_batch(batch, subjects)
    for i, (payload, subject) in enumerate(zip(batch, subjects, strict=True)):
        rejection = cleaned.rejections[i]
        if rejection is not None:
            got: Any = ("rejected", rejection.reason, rejection.field, rejection.detail,
                        rejection.stage)
        else:
            got = (_typed(cleaned.payloads[i]),
                   [(c.field, c.action, c.detail) for c in cleaned.changes[i]])
        assert got == _outcome(oracle, dict(payload), subject), (i, payload)
    assert cleaned.outcomes.sum() == len(batch) * len(spec.fields)
    assert cleaned.rejected.sum() <= sum(r is not None for r in cleaned.rejections)


FAST = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FAST
@given(st.lists(st.tuples(_payloads(TRANSACTIONS) | _nearly_valid(), SUBJECTS),
                max_size=12), st.sampled_from(["drop", "reject"]))
def test_property_transactions_batches_match_the_per_event_cleaner(
        rows: list[tuple[dict[str, Any], str]], mode: str) -> None:
    _compare(TRANSACTIONS, [r[0] for r in rows], [r[1] for r in rows], mode)


@FAST
@given(st.lists(st.tuples(_payloads(ODD), SUBJECTS), max_size=12),
       st.sampled_from(["drop", "reject"]))
def test_property_every_field_kind_matches_the_per_event_cleaner(
        rows: list[tuple[dict[str, Any], str]], mode: str) -> None:
    _compare(ODD, [r[0] for r in rows], [r[1] for r in rows], mode)


def test_quality_counts_every_field_of_every_event() -> None:
    base, subject = BASE, str(BASE["customer_id"])
    batch = [dict(base), {**base, "amount": None}, {**base, "hour": 24, "amount": "x"},
             {**base, "amount": 9000.0}, {k: v for k, v in base.items() if k != "region"},
             {**base, "amount": 2e6}]
    cleaned = Cleaner(TRANSACTIONS).clean_batch(batch, [subject] * len(batch))
    names = [f.name for f in TRANSACTIONS.fields]
    amount, hour, region = (names.index(n) for n in ("amount", "hour", "region"))
    # ok, missing, wrong type, out of range, invalid, clipped
    assert cleaned.outcomes[amount].tolist() == [2, 1, 1, 1, 0, 1]
    assert cleaned.outcomes[hour, Outcome.OUT_OF_RANGE] == 1  # counted though amount rejected
    assert cleaned.outcomes[region, Outcome.MISSING] == 1
    assert cleaned.imputed[amount] == 1
    assert cleaned.rejected[amount] == 2 and cleaned.rejected[hour] == 0  # first field wins
    assert cleaned.rejected[region] == 1
    assert [r is None for r in cleaned.rejections] == [True, True, False, True, False, False]


@pytest.mark.parametrize("spec", [TRANSACTIONS, ODD], ids=lambda s: s.name)
def test_an_empty_batch_is_fine(spec: DatasetSpec) -> None:
    cleaned = Cleaner(spec).clean_batch([], [])
    assert cleaned.payloads == [] and cleaned.outcomes.sum() == 0


def test_the_odd_spec_covers_every_field_type() -> None:
    assert {f.type for f in ODD.fields} == set(FieldType)
    assert isinstance(ODD.fields[0], FieldSpec)
