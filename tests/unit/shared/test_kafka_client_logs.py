"""The repeat limiter behind Kafka clients' logs: the first of each kind, then one per period
saying how many were left out."""

from __future__ import annotations

import time

from shared.kafka.client_logs import RepeatLimiter


def test_each_kind_is_admitted_first_then_once_per_period_with_the_count_left_out() -> None:
    limiter = RepeatLimiter(every=0.3)
    assert limiter.admit("a") == 0
    assert limiter.admit("b") == 0  # another kind has its own period
    assert [limiter.admit("a") for _ in range(4)] == [None] * 4
    time.sleep(0.35)
    assert limiter.admit("a") == 4
    assert limiter.note(4) == " (4 more like it in the last 0.3 s)"
    assert limiter.note(0) == ""
    assert limiter.admit("a") is None
