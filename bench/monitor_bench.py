"""Monitor drift statistics: false-alarm rate on unshifted traffic and cost per window.

Builds a DP reference (ε 1.0, OpenDP Laplace) from 20k generated transactions exactly as the
trainer does, then evaluates 200 windows of 1000 unshifted transactions (another seed), timing
each evaluation (day_of_week excluded: see CLOCK). Run: `.venv/bin/python bench/monitor_bench.py`.
"""

from __future__ import annotations

import random
import time

from lepton.generators import transactions
from services.monitor.drift import window_drift
from shared.datasets import load_spec
from shared.models.reference import SCORE, ReferenceCounter, spec_bins

WINDOWS, SIZE = 200, 1000
# the generator's clock advances ~3 s an event: 200 windows span a week, the reference a
# day, so day_of_week drifts for real; it is left out of the false-alarm count
CLOCK = "day_of_week"


def main() -> None:
    """Print the measured false-alarm rate and evaluation cost."""
    rng = random.Random(0)
    rows = [dict(e.payload) for e in transactions(20_000, seed=1, customers=100_000)]
    counter = ReferenceCounter(spec_bins(load_spec("transactions")))
    counter.add_rows(rows)
    counter.add_scores([rng.random() for _ in rows])
    reference = counter.reference("bench", counter.noise(1.0, 1))
    live = [dict(e.payload) for e in transactions(WINDOWS * SIZE, seed=2, customers=400_000)]
    alarms = windows_alarmed = tests = 0
    began = time.perf_counter()
    for w in range(WINDOWS):
        window = live[w * SIZE:(w + 1) * SIZE]
        results = window_drift(reference, window, [rng.random() for _ in window], alpha=0.01,
                               small_window=SIZE, distance_threshold=0.1)
        drifted = [r for r in results if r.drifted and r.feature not in (SCORE, CLOCK)]
        tests += len(results) - 2
        alarms += len(drifted)
        windows_alarmed += bool(drifted)
    per_window = (time.perf_counter() - began) / WINDOWS
    print(f"unshifted: {alarms} alarms in {tests} feature tests, {windows_alarmed}/{WINDOWS} "
          f"windows alarmed; {per_window * 1000:.1f} ms per window of {SIZE} "
          f"({SIZE / per_window:,.0f} records/s of evaluation)")


if __name__ == "__main__":
    main()
