"""The monitor principal's decision kinds: admitted with their typed, bounded detail when the
monitor signs them; refused when another principal signs them or the detail is out of bounds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from lepton.keyset import make_key_set
from services.governance.admission import (
    ALLOWED,
    INVALID,
    KIND_NOT_ALLOWED,
    Admitted,
    DriftDetail,
    Refused,
    admit,
)
from shared.allowlist import AllowList
from shared.events import Decision, encode
from shared.principals import Principal, sign_decision
from shared.signing import key_id, load_or_create_private_key

DRIFT: dict[str, Any] = {"model": "transactions", "version": 3, "window": 1000, "alpha": 0.01,
                         "retrain": False, "features": [{
                             "feature": "amount", "test": "ks", "statistic": 0.5,
                             "threshold": 0.001, "p_value": 1e-40}]}


def _signed(keys: Path, name: str, kind: str, detail: dict[str, Any]) -> bytes:
    key = load_or_create_private_key(keys / f"{name}.key")
    principal = Principal(name, key, key_id(key.public_key()))
    return encode(sign_decision(principal, Decision(kind=kind, actor="monitor",
                                                    dataset="transactions", detail=detail)))


def _admit(keys: Path, value: bytes) -> Admitted | Refused:
    return admit(value, lambda name: name == "transactions", 10.0,
                 AllowList(keys / "public", ALLOWED))


def test_monitor_decisions_are_admitted_typed(tmp_path: Path) -> None:
    make_key_set(tmp_path)
    admitted = _admit(tmp_path, _signed(tmp_path, "monitor", "drift_detected", DRIFT))
    assert isinstance(admitted, Admitted) and admitted.principal.name == "monitor"
    assert isinstance(admitted.detail, DriftDetail) and admitted.detail.features[0].test == "ks"
    quality = {"model": "transactions", "version": 3, "labelled": 500, "live_f1": 0.4,
               "offline_f1": 0.8, "live_roc_auc": None, "f1_drop": 0.1, "retrain": True}
    assert isinstance(_admit(tmp_path, _signed(tmp_path, "monitor", "quality_degraded",
                                               quality)), Admitted)


def test_other_principals_and_unbounded_details_are_refused(tmp_path: Path) -> None:
    make_key_set(tmp_path)
    refused = _admit(tmp_path, _signed(tmp_path, "serving", "drift_detected", DRIFT))
    assert isinstance(refused, Refused) and refused.code == KIND_NOT_ALLOWED
    monitor_promotes = _admit(tmp_path, _signed(tmp_path, "monitor", "model_promoted",
                                                {"model": "transactions", "version": 3}))
    assert isinstance(monitor_promotes, Refused) and monitor_promotes.code == KIND_NOT_ALLOWED
    for bad in ({**DRIFT, "features": []}, {**DRIFT, "alpha": 2.0},
                {**DRIFT, "features": [{**DRIFT["features"][0], "test": "eyeballed"}]},
                {**DRIFT, "extra": "field"}):
        found = _admit(tmp_path, _signed(tmp_path, "monitor", "drift_detected", bad))
        assert isinstance(found, Refused) and found.code == INVALID, bad
    assert orjson.loads(_signed(tmp_path, "monitor", "drift_detected", DRIFT))["signature"]
