"""SIGSTOP the (private) broker process for 30 s under a 20k-event load, then SIGCONT: every
service survives the freeze and resumes, and nothing is lost or duplicated end to end."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

from tests.faults.conftest import (
    SERVICES,
    FaultReport,
    Pipeline,
    PrivateBroker,
    assert_exactly_once,
)

EVENTS = 20_000
RATE = 2000.0
PAUSE_S = 30.0


def test_broker_frozen_for_thirty_seconds(
        private_broker: PrivateBroker, make_pipeline: Callable[..., Pipeline],
        fault_report: FaultReport) -> None:
    pipeline = make_pipeline(private_broker.bootstrap)
    events = pipeline.events(EVENTS, seed=21)
    pipeline.start_all()
    pipeline.feed(events, RATE)
    time.sleep(4.0)
    processes = pipeline.processes
    processes.signal(private_broker.name, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + PAUSE_S
        while time.monotonic() < deadline:
            pipeline.check_alive()
            time.sleep(0.5)
    finally:
        processes.signal(private_broker.name, signal.SIGCONT)
    produced = pipeline.feed_done()
    assert produced.delivered == EVENTS, produced.errors
    pipeline.wait_trained(EVENTS)
    processes.check_alive(private_broker.name)
    codes = pipeline.stop_all()
    assert codes == dict.fromkeys(SERVICES, 0), codes
    assert_exactly_once(pipeline, events, "broker SIGSTOP 30s", fault_report)
