"""Redis access: one client factory and one key scheme (every key under the configured prefix)."""

from __future__ import annotations

import redis

from shared.config import LeptonSettings


def make_redis(settings: LeptonSettings) -> redis.Redis[bytes]:
    """A Redis client for the configured URL, with timeouts and retry on connection errors."""
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=5,
        socket_connect_timeout=5,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=5),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )


def rkey(settings: LeptonSettings, *parts: str) -> str:
    """A Redis key under the configured prefix: `<prefix>part1:part2...`."""
    return settings.redis_prefix + ":".join(parts)
