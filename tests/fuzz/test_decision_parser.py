"""Fuzz services.governance.admission.admit: any bytes give an Admitted decision or a Refused
with a known code, never another exception; an admitted charge is finite and within the maximum
on a known dataset; the committed corpus is replayed first."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.governance.admission import (
    EPSILON_OVER_MAX,
    INVALID,
    TOO_LARGE,
    UNKNOWN_DATASET,
    UNKNOWN_KIND,
    Admitted,
    ChargeDetail,
    Refused,
    admit,
)
from tests.fuzz.conftest import corpus

CODES = {INVALID, TOO_LARGE, UNKNOWN_KIND, UNKNOWN_DATASET, EPSILON_OVER_MAX}
MAX_EPSILON = 10.0


def _known(name: str) -> bool:
    return name in {"tiny", "transactions"}


def _check(data: bytes) -> Admitted | Refused:
    result = admit(data, _known, MAX_EPSILON)
    if isinstance(result, Refused):
        assert result.code in CODES, result
        assert len(result.text()) <= 1000
        return result
    decision = result.decision
    assert decision.dataset is None or _known(decision.dataset)
    for value in (decision.decision_id, decision.subject_id, decision.event_id,
                  decision.dataset):
        assert value is None or (".." not in value.split("/") and value not in (".", ".."))
    if isinstance(result.detail, ChargeDetail):
        assert math.isfinite(result.detail.epsilon) and 0 <= result.detail.epsilon <= MAX_EPSILON
    return result


@pytest.mark.parametrize("path", corpus("decision"), ids=lambda p: p.name)
def test_corpus_replays(path: Path) -> None:
    _check(path.read_bytes())


def test_corpus_verdicts() -> None:
    base = Path(__file__).parent / "corpus/decision"
    assert isinstance(_check((base / "valid_charge.json").read_bytes()), Admitted)
    for name, code in (("poison.json", INVALID), ("huge_epsilon.json", EPSILON_OVER_MAX),
                       ("dotdot_dataset.json", INVALID)):
        result = _check((base / name).read_bytes())
        assert isinstance(result, Refused) and result.code == code, (name, result)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=20)
seed = json.loads((Path(__file__).parent / "corpus/decision/valid_charge.json").read_text())
detail_like = st.fixed_dictionaries(
    {}, optional={k: st.one_of(st.just(v), json_values) for k, v in seed["detail"].items()})
decision_like = st.fixed_dictionaries({}, optional={
    **{k: st.one_of(st.just(v), json_values) for k, v in seed.items() if k != "detail"},
    "kind": st.sampled_from(["dp_sgd_charge", "consent_changed", "subject_forgotten",
                             "model_promoted", "key_rotated", "nope"]) | json_values,
    "detail": detail_like | json_values,
})


@settings(settings.get_profile("fuzz"))
@given(st.binary(max_size=2048))
def test_random_bytes(data: bytes) -> None:
    _check(data)


@settings(settings.get_profile("fuzz"))
@given(decision_like)
def test_decision_shaped_json(obj: dict[str, object]) -> None:
    try:
        data = json.dumps(obj, allow_nan=False).encode()
    except ValueError:
        return
    _check(data)
