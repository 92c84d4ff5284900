"""The trainer waits out a Redis outage: refused connections are retried with back-off (a real
closed port), and a stop request ends the waiting after a few more tries."""

from __future__ import annotations

import socket
import threading

import pytest
import redis

from services.trainer.retry import until_redis


def _dead_redis() -> redis.Redis:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return redis.Redis(port=port, socket_connect_timeout=0.5)


def test_retries_until_redis_answers() -> None:
    dead = _dead_redis()
    calls = []

    def step() -> str:
        calls.append(1)
        if len(calls) < 3:
            dead.ping()
        return "done"

    assert until_redis(step, "test", first_wait_s=0.01) == "done"
    assert len(calls) == 3


def test_gives_up_after_stop() -> None:
    dead = _dead_redis()
    stop = threading.Event()
    stop.set()
    calls = []

    def step() -> None:
        calls.append(1)
        dead.ping()

    with pytest.raises(redis.ConnectionError):
        until_redis(step, "test", stop, first_wait_s=0.01, attempts_after_stop=2)
    assert len(calls) == 2
