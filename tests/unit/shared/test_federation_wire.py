"""Federation messages: a signed round task and site update round-trip (tensors and fields);
a changed byte, an unknown key, a missing signature or a kind the signer may not send are
refused before anything is parsed."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from shared.allowlist import AllowList
from shared.config import LeptonSettings
from shared.federation import (
    KEY_HEADER,
    TASK_KINDS,
    UPDATE_KINDS,
    FederationMessageError,
    RoundTask,
    SiteUpdate,
    decode,
    encode,
)
from shared.principals import Principal, principals_dir


def _principal(tmp_path: Path, name: str, who: str) -> Principal:
    settings = LeptonSettings(data_dir=tmp_path / who)
    principal = Principal.load(settings, name)  # type: ignore[arg-type]
    public = tmp_path / "public"
    public.mkdir(exist_ok=True)
    (public / f"{who}.pub").write_bytes((principals_dir(settings) / f"{name}.pub").read_bytes())
    return principal


def _task() -> RoundTask:
    return RoundTask(federation="fed-1", model="m", dataset="transactions", spec_hash="ab",
                     round=1, rounds=3, kind="fit", sites=("site-a",),
                     deadline=time.time() + 60, architecture={"kind": "logistic"},
                     feature_transform={}, local_epochs=0.5, minibatch=32, learning_rate=1.0,
                     clip_norm=1.0, epsilon=1.0)


def test_round_trip_and_refusals(tmp_path: Path) -> None:
    coordinator = _principal(tmp_path, "federation", "federation")
    site = _principal(tmp_path, "trainer", "site-a")
    at_site = AllowList(tmp_path / "public", {"federation": TASK_KINDS})
    at_coordinator = AllowList(tmp_path / "public", {"site-a": UPDATE_KINDS})
    weights = {"layers.0.weight": np.arange(6, dtype=np.float32).reshape(2, 3)}
    value, headers = encode(_task(), weights, coordinator)
    task, tensors, signer = decode(value, headers, at_site, RoundTask)
    assert (task, signer) == (_task().model_copy(update={"deadline": task.deadline}),
                              "federation")
    assert np.array_equal(tensors["layers.0.weight"], weights["layers.0.weight"])
    # a changed byte anywhere in the value
    changed = bytearray(value)
    changed[-1] ^= 1
    with pytest.raises(FederationMessageError, match="bad signature"):
        decode(bytes(changed), headers, at_site, RoundTask)
    # a site's key is not the coordinator's; no signature at all
    forged, forged_headers = encode(_task(), weights, site)
    with pytest.raises(FederationMessageError, match="not allowed"):
        decode(forged, forged_headers, at_site, RoundTask)
    with pytest.raises(FederationMessageError, match="unsigned"):
        decode(value, [h for h in headers if h[0] == KEY_HEADER], at_site, RoundTask)
    # a kind the signer may not send
    update = SiteUpdate(federation="fed-1", round=1, site="site-a", kind="declined",
                        num_examples=0, reason="budget")
    value, headers = encode(update, {}, site)
    assert decode(value, headers, at_coordinator, SiteUpdate)[0] == update
    strict = AllowList(tmp_path / "public", {"site-a": frozenset({"fit"})})
    with pytest.raises(FederationMessageError, match="may not send"):
        decode(value, headers, strict, SiteUpdate)
