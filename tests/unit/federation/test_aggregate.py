"""FedAvg's math and the server's noise: the sample-weighted average of clipped updates,
clipping to the norm, the noise's standard deviation (Flower's z·C/m, z·C·max weight when
weights differ), and the site-level ε equal to Opacus's RDP accountant for noise multiplier
z/2 (replace-one adjacency) over the rounds."""

from __future__ import annotations

import numpy as np
import pytest
from opacus.accountants import RDPAccountant

from services.federation.aggregate import clip, fedavg, norm, site_level_epsilon
from shared.accounting import ORDERS


def _update(seed: int, scale: float = 1.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"layers.0.weight": (rng.normal(0, scale, (4, 3))).astype(np.float32),
            "layers.0.bias": (rng.normal(0, scale, 4)).astype(np.float32)}


def test_fedavg_is_the_sample_weighted_mean_of_clipped_updates() -> None:
    updates = [(_update(1, 0.01), 100), (_update(2, 0.01), 300), (_update(3, 5.0), 600)]
    average, std = fedavg(updates, clip_norm=1.0, noise_multiplier=0.0)
    assert std == 0.0
    big, size = clip(updates[2][0], 1.0)
    assert size > 1.0 and norm(big) == pytest.approx(1.0, rel=1e-6)
    for name in average:
        expected = 0.1 * updates[0][0][name] + 0.3 * updates[1][0][name] + 0.6 * big[name]
        assert np.allclose(average[name], expected, atol=1e-6)
    # an update within the bound is left as it is
    small, _ = clip(updates[0][0], 1.0)
    assert all(np.array_equal(small[k], updates[0][0][k]) for k in small)


def test_noise_follows_flowers_calibration() -> None:
    zeros = {"w": np.zeros(200_000, dtype=np.float32)}
    equal, std = fedavg([(zeros, 10)] * 4, clip_norm=2.0, noise_multiplier=0.5,
                        rng=np.random.default_rng(0))
    assert std == pytest.approx(0.5 * 2.0 / 4)  # z·C/m for equal weights
    assert float(np.std(equal["w"])) == pytest.approx(std, rel=0.01)
    _, weighted = fedavg([(zeros, 10), (zeros, 30)], clip_norm=2.0, noise_multiplier=0.5)
    assert weighted == pytest.approx(0.5 * 2.0 * 0.75)  # z·C·max weight


def test_site_level_epsilon_is_opacus_rdp_for_half_the_multiplier() -> None:
    accountant = RDPAccountant()
    accountant.history = [(1.5 / 2, 1.0, 10)]
    expected = accountant.get_epsilon(delta=1e-5, alphas=list(ORDERS))
    assert site_level_epsilon(1.5, 10, 1e-5) == pytest.approx(expected, rel=1e-9)
    assert site_level_epsilon(0.0, 10, 1e-5) is None


def test_mismatched_updates_are_refused() -> None:
    with pytest.raises(ValueError, match="different tensors"):
        fedavg([({"a": np.zeros(2, np.float32)}, 1), ({"b": np.zeros(2, np.float32)}, 1)],
               1.0, 0.0)
    with pytest.raises(ValueError, match="no updates"):
        fedavg([], 1.0, 0.0)
