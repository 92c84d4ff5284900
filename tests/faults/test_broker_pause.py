"""SIGSTOP the (private) broker process under a 20k-event load. Frozen for 30 s, mid-stream
(once 2,000 events are governed) or while the services start, then SIGCONT: every service
survives the freeze and resumes. Frozen and the services sent SIGTERM: each exits within 10 s,
and once restarted nothing is lost or duplicated end to end."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import pytest

from tests.faults.conftest import (
    SERVICES,
    FaultReport,
    Pipeline,
    PrivateBroker,
    assert_exactly_once,
    wait_until,
)

EVENTS = 20_000
RATE = 2000.0
PAUSE_S = 30.0
MID_STREAM = 2000  # governed events before the freeze (of 20,000, fed at 2,000/s)


@pytest.mark.parametrize(("governed_first", "scenario"), [
    # every stage is at work: batches in flight, consumed, processed and committed
    (MID_STREAM, "broker SIGSTOP 30s"),
    # the services are still starting: checking topics, joining their groups (a join left
    # unanswered by the frozen broker used to idle a stage for librdkafka's 300 s)
    (0, "broker SIGSTOP 30s during start-up"),
], ids=["mid-stream", "during-start-up"])
def test_broker_frozen_for_thirty_seconds(
        private_broker: PrivateBroker, make_pipeline: Callable[..., Pipeline],
        fault_report: FaultReport, governed_first: int, scenario: str) -> None:
    pipeline = make_pipeline(private_broker.bootstrap)
    events = pipeline.events(EVENTS, seed=21)
    pipeline.start_all()
    pipeline.feed(events, RATE)
    if governed_first:
        pipeline.wait_governed(governed_first)
    else:
        time.sleep(1.0)
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
    assert_exactly_once(pipeline, events, scenario, fault_report)


STOP_LIMIT_S = 10.0


def test_sigterm_with_broker_frozen_stops_on_time_and_restart_loses_nothing(
        private_broker: PrivateBroker, make_pipeline: Callable[..., Pipeline],
        fault_report: FaultReport) -> None:
    pipeline = make_pipeline(private_broker.bootstrap)
    events = pipeline.events(EVENTS, seed=23)
    pipeline.start_all()
    pipeline.feed(events, RATE)
    processes = pipeline.processes
    # mid-stream: every stage has work in flight (the trainer a cycle) when the broker freezes
    wait_until(lambda: pipeline.trained_rows() > 0, "a first model", 120, pipeline.check_alive)
    processes.signal(private_broker.name, signal.SIGSTOP)
    try:
        time.sleep(2.0)
        for name in SERVICES:
            processes.signal(name, signal.SIGTERM)
        began = time.monotonic()
        took: dict[str, float] = {}
        while len(took) < len(SERVICES) and time.monotonic() - began < 30:
            for name in SERVICES:
                if name not in took and processes.procs[name].poll() is not None:
                    took[name] = time.monotonic() - began
            time.sleep(0.05)
    finally:
        processes.signal(private_broker.name, signal.SIGCONT)
    assert set(took) == set(SERVICES), f"still running 30 s after SIGTERM: {took}"
    slow = {name: round(s, 1) for name, s in took.items() if s > STOP_LIMIT_S}
    assert not slow, f"stopped later than {STOP_LIMIT_S} s after SIGTERM: {slow}"

    pipeline.start_all()
    produced = pipeline.feed_done()
    assert produced.delivered == EVENTS, produced.errors
    pipeline.wait_trained(EVENTS)
    codes = pipeline.stop_all()
    assert codes == dict.fromkeys(SERVICES, 0), codes
    assert_exactly_once(pipeline, events, "SIGTERM with broker frozen, restart", fault_report,
                        notes=f"stopped in {max(took.values()):.1f} s")
