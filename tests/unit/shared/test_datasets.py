"""Dataset specs load and validate; the generators emit events their spec accepts."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from lepton.generators import breast_cancer, generate, transactions
from shared.datasets import FieldType, Role, builtin_names, load_spec, load_spec_file
from shared.datasets.spec import DatasetSpec
from shared.events import Envelope


def _conforms(spec: DatasetSpec, event: Envelope) -> None:
    assert event.dataset == spec.name
    for field in spec.fields:
        value = event.payload.get(field.name)
        if field.required:
            assert value is not None, field.name
        if value is None:
            continue
        if field.type is FieldType.CATEGORY:
            assert field.allowed is not None and value in field.allowed, (field.name, value)
        if field.is_numeric:
            assert isinstance(value, int | float) and not isinstance(value, bool), field.name
            if field.valid_min is not None:
                assert value >= field.valid_min, field.name
            if field.valid_max is not None:
                assert value <= field.valid_max, field.name
        if field.type is FieldType.BOOL:
            assert isinstance(value, bool), field.name
    assert set(event.payload) <= {f.name for f in spec.fields}


def test_builtin_specs_declare_roles() -> None:
    assert {"transactions", "breast_cancer"} <= set(builtin_names())
    tx = load_spec("transactions")
    assert tx.label is not None and tx.label.name == "is_fraud"
    assert tx.sensitive is not None and tx.sensitive.name == "age_band"
    assert {f.pii for f in tx.pii_fields} == {"tokenize", "encrypt"}
    assert tx.by_role(Role.SUBJECT)[0].name == "customer_id"
    bc = load_spec("breast_cancer")
    assert len(bc.features) == 30
    assert bc.spec_hash() != tx.spec_hash()


def test_transactions_are_valid_seeded_and_learnable() -> None:
    spec = load_spec("transactions")
    events = list(transactions(5000, seed=3))
    for event in events[:500]:
        _conforms(spec, event)
    assert [e.event_id for e in events[:50]] == [e.event_id for e in transactions(50, seed=3)]
    assert len({e.event_id for e in events}) == len(events)
    fraud = [e for e in events if e.payload["is_fraud"]]
    assert 0.01 < len(fraud) / len(events) < 0.08
    def mean_ratio(group: list[Envelope]) -> float:
        return sum(float(e.payload["amount_vs_avg_ratio"] or 0) for e in group) / len(group)
    legit = [e for e in events if not e.payload["is_fraud"]]
    assert mean_ratio(fraud) > 2 * mean_ratio(legit)
    assert len(Counter(e.payload["age_band"] for e in events)) == 5


def test_breast_cancer_replays_the_bundled_rows() -> None:
    spec = load_spec("breast_cancer")
    events = list(breast_cancer())
    assert len(events) == 569
    for event in events:
        _conforms(spec, event)
    assert sum(bool(e.payload["malignant"]) for e in events) == 212


def test_unknown_generator_and_bad_spec_are_clear(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="no generator"):
        generate("nope", 1)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nfields:\n  - {name: a, type: category, role: feature}\n")
    with pytest.raises(ValueError, match="allowed"):
        load_spec_file(bad)


def test_privacy_defaults_to_model_mode_with_one_event_per_subject(tmp_path: Path) -> None:
    plain = tmp_path / "plain.yaml"
    plain.write_text("name: x\nfields:\n  - {name: y, type: bool, role: label}\n")
    privacy = load_spec_file(plain).privacy
    assert (privacy.mode, privacy.max_events_per_subject, privacy.allow_non_private) == (
        "model", 1, False)
    assert (privacy.epsilon_per_release, privacy.delta) == (1.0, 1e-5)
    assert load_spec_file(plain).model.min_auc == 0.6
    for name in ("transactions", "breast_cancer"):
        assert load_spec(name).privacy.mode == "model"
        assert not load_spec(name).privacy.allow_non_private
    no_delta = tmp_path / "no_delta.yaml"
    no_delta.write_text("name: x\nfields:\n  - {name: y, type: bool, role: label}\n"
                        "privacy: {delta: 0.0}\n")
    with pytest.raises(ValueError, match="delta"):
        load_spec_file(no_delta)


def test_decision_threshold_is_a_probability_or_tune(tmp_path: Path) -> None:
    assert load_spec("transactions").model.decision_threshold == "tune"
    assert load_spec("breast_cancer").model.decision_threshold == "tune"
    plain = tmp_path / "plain.yaml"
    plain.write_text("name: x\nfields:\n  - {name: y, type: bool, role: label}\n")
    assert load_spec_file(plain).model.decision_threshold == 0.5
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nfields:\n  - {name: y, type: bool, role: label}\n"
                   "model: {decision_threshold: 1.5}\n")
    with pytest.raises(ValueError, match="between 0 and 1"):
        load_spec_file(bad)
