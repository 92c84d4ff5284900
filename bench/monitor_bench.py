"""Monitor drift statistics: false-alarm rate on unshifted traffic and cost per window.

Builds a DP reference (ε 1.0, OpenDP Laplace) from 20k generated transactions exactly as the
trainer does, then evaluates 200 windows of 1000 unshifted transactions (another seed, the
tests' path) and, for each of 30 freshly noised references, 10 windows of 4000 (the
distances' path, each window with the noise margin and at the bare threshold), timing each
evaluation (day_of_week excluded: see CLOCK). Run: `.venv/bin/python bench/monitor_bench.py`.
"""

from __future__ import annotations

import random
import time

from lepton.generators import transactions
from services.monitor.drift import window_drift
from shared.datasets import load_spec
from shared.models.reference import SCORE, ReferenceCounter, spec_bins

WINDOWS, SIZE, LARGE = 200, 1000, 4
REFERENCES = 30
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
    # one reference's noise draw either pushes a feature past 0.1 or not: many references;
    # each window is evaluated twice, the second time as if the reference were exact (no margin)
    exact = {name: counts.copy() for name, counts in counter.counts.items()}
    alarms, seconds, closest = [0, 0], [0.0, 0.0], [0.0, 0.0]
    tests = evaluations = 0
    size = LARGE * SIZE
    for _ in range(REFERENCES):
        counter.counts = {name: counts.copy() for name, counts in exact.items()}
        noised = counter.reference("bench", counter.noise(1.0, 1))
        bare = {**noised, "privacy": {**noised["privacy"], "scale": 0.0}}
        for w in range(WINDOWS // LARGE // 5):
            window = live[w * size:(w + 1) * size]
            scores = [rng.random() for _ in window]
            for i, reference in enumerate((noised, bare)):
                began = time.perf_counter()
                results = window_drift(reference, window, scores, alpha=0.01,
                                       small_window=SIZE, distance_threshold=0.1)
                seconds[i] += time.perf_counter() - began
                kept = [r for r in results if r.feature not in (SCORE, CLOCK)]
                alarms[i] += sum(r.drifted for r in kept)
                closest[i] = max(closest[i], *(r.statistic / r.threshold for r in kept))
            tests += len(kept)
            evaluations += 1
    for i, name in enumerate(("with the noise margin", "bare threshold 0.1")):
        print(f"distances, {REFERENCES} references x {WINDOWS // LARGE // 5} windows of {size}, "
              f"{name}: {alarms[i]} alarms in {tests} feature tests, largest distance "
              f"{closest[i]:.2f} of its threshold; "
              f"{seconds[i] / evaluations * 1000:.1f} ms per window")

if __name__ == "__main__":
    main()
