"""Fuzz services.governance.admission.admit: any bytes (signed by an allowed key or not) give an
Admitted decision or a Refused with a known code, never another exception; an admitted decision
is of a kind its principal may emit, and a charge is finite and within the maximum on a known
dataset; the committed corpus is replayed first."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.governance.admission import (
    ALLOWED,
    CODES,
    EPSILON_OVER_MAX,
    INVALID,
    UNKNOWN_KIND,
    Admitted,
    Refused,
    ReleaseChargeDetail,
    admit,
)
from shared.allowlist import AllowList
from shared.principals import Principal, canonical_decision
from shared.signing import key_id, load_or_create_private_key
from tests.fuzz.conftest import corpus

MAX_EPSILON = 10.0


@dataclass
class Keys:
    """An allow-list of one trainer key, and that key."""

    allow: AllowList
    trainer: Principal


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    directory = tmp_path_factory.mktemp("principals")
    key = load_or_create_private_key(directory / "trainer.key")
    return Keys(AllowList(directory, ALLOWED), Principal("trainer", key, key_id(key.public_key())))


def _known(name: str) -> bool:
    return name in {"tiny", "transactions"}


def _signed(keys: Keys, obj: dict[str, object]) -> bytes:
    obj = {**obj, "key_id": keys.trainer.key_id}
    obj["signature"] = keys.trainer.sign(canonical_decision(obj))
    return json.dumps(obj, allow_nan=False).encode()


def _check(data: bytes, keys: Keys) -> Admitted | Refused:
    result = admit(data, _known, MAX_EPSILON, keys.allow)
    if isinstance(result, Refused):
        assert result.code in CODES, result
        assert len(result.text()) <= 1000
        return result
    decision = result.decision
    assert decision.dataset is None or _known(decision.dataset)
    for value in (decision.decision_id, decision.subject_id, decision.event_id,
                  decision.dataset):
        assert value is None or (".." not in value.split("/") and value not in (".", ".."))
    assert result.principal.name == "trainer"
    assert result.decision.kind in result.principal.kinds
    if isinstance(result.detail, ReleaseChargeDetail):
        assert math.isfinite(result.detail.epsilon) and 0 <= result.detail.epsilon <= MAX_EPSILON
    return result


@pytest.mark.parametrize("path", corpus("decision"), ids=lambda p: p.name)
def test_corpus_replays(path: Path, keys: Keys) -> None:
    _check(path.read_bytes(), keys)
    _check(_signed(keys, json.loads(path.read_bytes())), keys)


def test_corpus_verdicts(keys: Keys) -> None:
    base = Path(__file__).parent / "corpus/decision"
    valid = json.loads((base / "valid_charge.json").read_bytes())
    assert isinstance(_check(_signed(keys, valid), keys), Admitted)
    unsigned = _check(json.dumps(valid).encode(), keys)
    assert isinstance(unsigned, Refused) and unsigned.code == "unsigned"
    # the removed dp_sgd_charge kind, validly signed by the trainer: refused as unknown
    for name, code in (("poison.json", INVALID), ("huge_epsilon.json", EPSILON_OVER_MAX),
                       ("dotdot_dataset.json", INVALID),
                       ("legacy_dp_sgd_charge.json", UNKNOWN_KIND)):
        result = _check(_signed(keys, json.loads((base / name).read_bytes())), keys)
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
    "kind": st.sampled_from(["release_charge", "consent_changed", "subject_forgotten",
                             "model_promoted", "key_rotated", "nope"]) | json_values,
    "detail": detail_like | json_values,
})


@settings(settings.get_profile("fuzz"))
@given(st.binary(max_size=2048))
def test_random_bytes(keys: Keys, data: bytes) -> None:
    _check(data, keys)


@settings(settings.get_profile("fuzz"))
@given(decision_like, st.booleans())
def test_decision_shaped_json(keys: Keys, obj: dict[str, object], sign: bool) -> None:
    try:
        data = _signed(keys, obj) if sign else json.dumps(obj, allow_nan=False).encode()
    except ValueError:
        return
    _check(data, keys)
