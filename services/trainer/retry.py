"""Waiting out an outage: the trainer's Redis steps (registry index, live pointer, resume
mirror, release markers), its release publications (decisions and announcements, which
governance and serving deduplicate) and its start-up metadata reads are idempotent, so they are
retried with back-off instead of killing the process (and a cycle of training) on the first
refused connection or a broker that stopped answering."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import redis

from shared.kafka import DeliveryTimeout

T = TypeVar("T")
log = logging.getLogger(__name__)

REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError)
REDIS_OR_BROKER_DOWN = (*REDIS_DOWN, DeliveryTimeout)


def until_redis(step: Callable[[], T], what: str, stop: threading.Event | None = None,
                *, first_wait_s: float = 0.2, max_wait_s: float = 5.0,
                attempts_after_stop: int = 3,
                errors: tuple[type[Exception], ...] = REDIS_DOWN) -> T:
    """Run `step`, retrying with exponential back-off while it raises one of `errors` (default:
    Redis unreachable); after `stop` is set only `attempts_after_stop` more tries are made,
    then the error propagates."""
    wait = first_wait_s
    left_after_stop = attempts_after_stop
    while True:
        try:
            return step()
        except errors as error:
            if stop is not None and stop.is_set():
                left_after_stop -= 1
                if left_after_stop <= 0:
                    raise
            log.warning("%s waits (%s: %s); retrying in %.1f s", what,
                        type(error).__name__, error, wait)
            time.sleep(wait)
            wait = min(wait * 2, max_wait_s)
