"""Kill a (private) Redis mid-stream and restart it empty (no persistence): the services wait
and retry, nothing is lost or duplicated, and the privacy ledger (rebuilt from governance's
charge log) does not under-count."""

from __future__ import annotations

import time
from collections.abc import Callable

from tests.faults.conftest import (
    SERVICES,
    FaultReport,
    Pipeline,
    PrivateRedis,
    assert_exactly_once,
)

EVENTS = 20_000
RATE = 2000.0
DOWN_S = 6.0


def test_redis_killed_and_restarted_empty(
        private_redis: PrivateRedis, broker: str, make_pipeline: Callable[..., Pipeline],
        fault_report: FaultReport) -> None:
    pipeline = make_pipeline(broker, private_redis.url)
    events = pipeline.events(EVENTS, seed=33)
    pipeline.start_all()
    pipeline.feed(events, RATE)
    time.sleep(4.0)
    private_redis.kill()
    deadline = time.monotonic() + DOWN_S
    while time.monotonic() < deadline:
        pipeline.check_alive()
        time.sleep(0.5)
    private_redis.start()
    produced = pipeline.feed_done()
    assert produced.delivered == EVENTS, produced.errors
    pipeline.wait_trained(EVENTS)
    codes = pipeline.stop_all()
    assert codes == dict.fromkeys(SERVICES, 0), codes
    assert_exactly_once(pipeline, events, "redis kill+restart", fault_report,
                        notes=f"down {DOWN_S:.0f}s, restarted empty")
