"""SIGKILL ingest, governance and the trainer three times each, at random moments, while 20k
events stream through: every input is governed, trained on (model-card lineage) and audited
exactly once, the privacy ledger equals its charges, and `lepton audit verify` passes."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from tests.faults.conftest import SERVICES, FaultReport, Pipeline, assert_exactly_once

EVENTS = 20_000
RATE = 1500.0
KILLS_EACH = 3


def test_sigkill_every_service_three_times_under_load(
        broker: str, make_pipeline: Callable[..., Pipeline], fault_report: FaultReport) -> None:
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    pipeline = make_pipeline(broker)
    events = pipeline.events(EVENTS, seed=seed % 1000)
    pipeline.start_all()
    pipeline.feed(events, RATE)
    span = EVENTS / RATE
    schedule = sorted((rng.uniform(1.0, span), name) for name in SERVICES
                      for _ in range(KILLS_EACH))
    started = time.monotonic()
    for at, name in schedule:
        while time.monotonic() - started < at:
            pipeline.check_alive()
            time.sleep(0.02)
        pipeline.processes.kill(name)
        pipeline.start(name)
    produced = pipeline.feed_done()
    assert produced.delivered == EVENTS, produced.errors
    pipeline.wait_trained(EVENTS)
    codes = pipeline.stop_all()
    assert codes == dict.fromkeys(SERVICES, 0), codes
    assert_exactly_once(pipeline, events, "crashes (9x SIGKILL)", fault_report,
                        notes=f"seed {seed}; kills at " + ", ".join(
                            f"{name}@{at:.1f}s" for at, name in schedule))
