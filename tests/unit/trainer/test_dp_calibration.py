"""The trainer's noise calibration: the smallest σ (to 0.1 %) whose per-subject ε stays within
the target, checked against Opacus's own search as the oracle."""

from __future__ import annotations

import sys
import threading
import warnings

import pytest
from opacus.accountants.utils import get_noise_multiplier

from services.trainer.dp import calibrate, user_curve
from shared.accounting import ORDERS, epsilon_from_rdp

DELTA = 1e-5


@pytest.mark.parametrize(("epsilon", "rate", "steps"),
                         [(0.5, 0.01, 500), (1.0, 0.05, 200), (3.0, 0.1, 100), (8.0, 1.0, 5)])
def test_sigma_is_the_smallest_within_the_target(epsilon: float, rate: float, steps: int) -> None:
    sigma = calibrate(epsilon, DELTA, rate, steps, events_per_subject=1)
    assert epsilon_from_rdp(user_curve(sigma, rate, steps, 1), DELTA) <= epsilon
    assert epsilon_from_rdp(user_curve(sigma * 0.998, rate, steps, 1), DELTA) > epsilon
    with warnings.catch_warnings():  # Opacus warns about its trial σ at the grid's edge
        warnings.simplefilter("ignore")
        oracle = get_noise_multiplier(target_epsilon=epsilon, target_delta=DELTA,
                                      sample_rate=rate, steps=steps, accountant="rdp",
                                      epsilon_tolerance=0.001, alphas=list(ORDERS))
    assert sigma == pytest.approx(oracle, rel=0.01)


def test_group_privacy_needs_more_noise_and_stays_within_the_target() -> None:
    alone = calibrate(1.0, DELTA, 0.05, 200, events_per_subject=1)
    grouped = calibrate(1.0, DELTA, 0.05, 200, events_per_subject=4)
    assert grouped > 2 * alone
    assert epsilon_from_rdp(user_curve(grouped, 0.05, 200, 4), DELTA) <= 1.0


def test_calibration_leaves_the_process_warning_filters_alone() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        before = list(warnings.filters)
        calibrate(0.5, DELTA, 0.01, 500, events_per_subject=1)
        # compared inside the block, before catch_warnings restores anything: a calibration
        # that changed the process's filters (e.g. to silence Opacus) would show here
        assert warnings.filters == before
    assert caught == []


def test_concurrent_calibrations_warn_nothing() -> None:
    """Federated sites calibrate on threads of one process: nothing may leak a warning."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            for _ in range(10):  # trial σ at the grid's edge: Opacus's search would warn
                calibrate(0.3, DELTA, 0.001, 100, events_per_subject=1)
        except BaseException as error:
            errors.append(error)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # interleave the threads often
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            threads = [threading.Thread(target=run) for _ in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert errors == []
    assert [str(w.message) for w in caught] == []
