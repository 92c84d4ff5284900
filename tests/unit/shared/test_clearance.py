"""shared.models.clearance: which cards may answer. A DP (model-mode) release only once its
charge was accepted; local and declared non-private versions always; a card that does not
state its privacy never."""

from __future__ import annotations

from typing import Any

import pytest

from shared.models.clearance import privacy_refusal
from shared.models.registry import ModelCard


def _card(privacy: dict[str, Any]) -> ModelCard:
    return ModelCard(model="m", dataset="transactions", spec_hash="x", architecture={},
                     feature_transform={}, privacy=privacy)


@pytest.mark.parametrize("privacy", [
    {"mode": "model", "ledger": {"status": "charged"}},
    {"mode": "local"},
    {"mode": "non-private", "non_private": True},
    {"mode": "federated", "sites": {"a": {"ledger": {"status": "charged"}},
                                    "b": {"ledger": {"status": "charged"}}}},
])
def test_cleared(privacy: dict[str, Any]) -> None:
    assert privacy_refusal(_card(privacy)) is None


@pytest.mark.parametrize(("privacy", "reason"), [
    ({"mode": "model"}, "never charged"),
    ({"mode": "model", "ledger": None}, "never charged"),
    ({"mode": "model", "ledger": {"status": "refused"}}, "(refused)"),
    ({"mode": "non-private"}, "does not state"),
    ({}, "does not state"),
    ({"mode": "bogus"}, "does not state"),
    ({"mode": "federated", "sites": {}}, "no contributing site"),
    ({"mode": "federated", "sites": {"a": {"ledger": {"status": "charged"}},
                                     "b": {"ledger": {"status": "refused"}}}}, "sites b never"),
])
def test_refused(privacy: dict[str, Any], reason: str) -> None:
    refusal = privacy_refusal(_card(privacy))
    assert refusal is not None
    assert reason in refusal
