"""Local-mode DP release with OpenDP: calibration to ε, noise distribution (KS and variance over
many draws), randomized response of categories and the label (frequency test), the stamp's ε
equal to the sum of the fields' privacy maps, clipping, dropped unprotectable fields, DP off;
model mode releases records unchanged with no ε on the stamp."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from scipy import stats

from services.governance.privacy import DatasetPrivacy, PrivacyConfigError
from shared.datasets import DatasetSpec, PrivacySpec

DRAWS = 20_000


def _spec(privacy: dict[str, Any]) -> DatasetSpec:
    return DatasetSpec.model_validate({
        "name": "toy",
        "fields": [
            {"name": "id", "type": "string", "role": "id"},
            {"name": "subject", "type": "string", "role": "subject"},
            {"name": "amount", "type": "float", "role": "feature", "valid_min": 0,
             "valid_max": 1e6, "clip_min": 0, "clip_max": 100},
            {"name": "age", "type": "int", "role": "feature", "valid_min": 18, "valid_max": 90},
            {"name": "score", "type": "float", "role": "feature"},
            {"name": "colour", "type": "category", "role": "feature", "allowed": ["r", "g"]},
            {"name": "label", "type": "bool", "role": "label"},
        ],
        "privacy": {"mode": "local", **privacy},
    })


def _noise(privacy: DatasetPrivacy, payload: dict[str, Any]) -> dict[str, np.ndarray]:
    released = privacy.release([payload] * DRAWS)
    return {name: np.array([p[name] for p, _ in released]) - payload[name]
            for name in ("amount", "age")}


PAYLOAD = {"id": "1", "subject": "s", "amount": 50.0, "age": 54, "score": 3.0,
           "colour": "r", "label": True}


def test_laplace_noise_matches_the_configured_epsilon() -> None:
    eps = 2.0
    privacy = DatasetPrivacy(_spec({"mechanism": "laplace", "epsilon_per_event": eps}))
    assert privacy.epsilon <= eps
    assert privacy.epsilon == pytest.approx(eps, rel=1e-6)
    assert privacy.stamp.mechanism == "laplace" and privacy.stamp.delta == 0
    noise = _noise(privacy, PAYLOAD)
    # four protected fields (amount, age, colour, label) share ε: each number gets ε/4,
    # Laplace scale = width / (ε/4)
    assert privacy.stamp.epsilon == pytest.approx(
        sum(f.epsilon for f in privacy.features) + sum(r.epsilon for r in privacy.randomized))
    for name, width in (("amount", 100.0), ("age", 72.0)):
        scale = width / (eps / 4)
        sample = noise[name]
        assert abs(sample.mean()) < 6 * math.sqrt(2) * scale / math.sqrt(DRAWS)
        assert sample.var() == pytest.approx(2 * scale**2, rel=0.1)
        assert stats.kstest(sample, stats.laplace(scale=scale).cdf).pvalue > 1e-6
    # a scale calibrated to a 4x larger ε is clearly rejected
    wrong = stats.kstest(noise["amount"], stats.laplace(scale=100.0 / (4 * eps / 4)).cdf)
    assert wrong.pvalue < 1e-6


def test_gaussian_noise_matches_the_zcdp_budget() -> None:
    eps, delta = 1.0, 1e-6
    privacy = DatasetPrivacy(_spec({"mechanism": "gaussian", "epsilon_per_event": eps,
                                    "delta": delta}))
    log_term = math.log(1 / delta)
    # the two numbers get half of ε (two of four protected fields) as a zCDP budget
    rho = (math.sqrt(log_term + eps / 2) - math.sqrt(log_term)) ** 2
    assert privacy.rho == pytest.approx(rho, rel=1e-6) and privacy.rho <= rho
    rr = sum(r.epsilon for r in privacy.randomized)
    assert privacy.epsilon == pytest.approx(rr) and rr == pytest.approx(eps / 2, rel=1e-6)
    assert privacy.stamp.epsilon == pytest.approx(eps, rel=1e-6)
    assert privacy.stamp.epsilon <= eps * (1 + 1e-9)
    noise = _noise(privacy, PAYLOAD)
    for name, width in (("amount", 100.0), ("age", 72.0)):
        sigma = width / math.sqrt(2 * rho / 2)
        assert noise[name].var() == pytest.approx(sigma**2, rel=0.1)
        assert stats.kstest(noise[name], stats.norm(scale=sigma).cdf).pvalue > 1e-6


def test_randomized_response_frequencies_match_the_privacy_map() -> None:
    eps = 2.0
    privacy = DatasetPrivacy(_spec({"epsilon_per_event": eps}))
    colour, label = (next(r for r in privacy.randomized if r.name == n)
                     for n in ("colour", "label"))
    for field in (colour, label):  # two values each, ε/4 per field
        assert field.epsilon <= eps / 4 * (1 + 1e-9)
        assert field.probability == pytest.approx(math.exp(field.epsilon) / (
            math.exp(field.epsilon) + 1), rel=1e-6)
    released = privacy.release([PAYLOAD] * DRAWS)
    for name, truth, field in (("colour", "r", colour), ("label", True, label)):
        kept = sum(p[name] == truth for p, _ in released)
        assert stats.binomtest(kept, DRAWS, field.probability).pvalue > 1e-6
        # a mechanism that kept the truth with the probability of 4x the ε is rejected
        strong = math.exp(4 * field.epsilon) / (math.exp(4 * field.epsilon) + 1)
        assert stats.binomtest(kept, DRAWS, strong).pvalue < 1e-6
        assert all(any(c.field == name and c.action == "randomized" for c in ch)
                   for _, ch in released[:10])


def test_model_mode_releases_records_unchanged_without_an_epsilon() -> None:
    spec = _spec({}).model_copy(update={"privacy": PrivacySpec()})
    privacy = DatasetPrivacy(spec)
    assert not privacy.local and privacy.mode == "model"
    [(payload, changes)] = privacy.release([PAYLOAD])
    assert payload == PAYLOAD and changes == []
    assert (privacy.stamp.mode, privacy.stamp.epsilon) == ("model", None)


def test_values_are_clipped_unbounded_features_dropped_others_kept() -> None:
    privacy = DatasetPrivacy(_spec({"epsilon_per_event": 1e6}))
    [(payload, changes)] = privacy.release([{**PAYLOAD, "amount": 5000.0, "age": None}])
    assert "score" not in payload and "id" not in payload and "subject" not in payload
    assert payload["colour"] == "r" and payload["label"] is True
    assert payload["amount"] == pytest.approx(100.0, abs=0.01)
    assert payload["age"] == pytest.approx(54.0, abs=0.01)  # imputed at the midpoint
    actions = {(c.field, c.action) for c in changes}
    assert {("amount", "clipped"), ("age", "imputed"), ("score", "dropped"),
            ("amount", "noised"), ("age", "noised"), ("colour", "randomized"),
            ("label", "randomized"), ("id", "dropped")} <= actions


def test_disabled_dp_passes_features_through_and_costs_nothing() -> None:
    privacy = DatasetPrivacy(_spec({"epsilon_per_event": 1.0}), enabled=False)
    [(payload, changes)] = privacy.release([PAYLOAD])
    assert payload == PAYLOAD and changes == []
    assert (privacy.epsilon, privacy.rho) == (0, 0)
    assert privacy.stamp.mechanism == "none" and privacy.stamp.epsilon is None


def test_gaussian_without_delta_is_refused() -> None:
    with pytest.raises(PrivacyConfigError, match="delta"):
        DatasetPrivacy(_spec({"mechanism": "gaussian", "delta": 0.0}))
