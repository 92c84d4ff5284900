"""Dedup claims in Redis: duplicates from other sources, replays of our own uncommitted attempts."""

from __future__ import annotations

import time

import pytest
import redis

from services.ingest.dedup import Claim, Deduper
from shared.config import LeptonSettings
from tests.conftest import REDIS_URL


@pytest.fixture
def settings(redis_prefix: str) -> LeptonSettings:
    return LeptonSettings(redis_url=REDIS_URL, redis_prefix=redis_prefix)


def test_first_claim_wins_and_other_sources_are_duplicates(
    settings: LeptonSettings, redis_client: redis.Redis
) -> None:
    deduper = Deduper(settings, redis_client, window_s=60)
    claims = [Claim("tx", "e1", "raw/0/1"), Claim("tx", "e2", "raw/0/2"),
              Claim("tx", "e1", "raw/3/9")]
    assert deduper.check(claims, [])[0] == [False, False, True]
    assert deduper.check([Claim("tx", "e2", "raw/1/5")], [])[0] == [True]
    assert deduper.check([Claim("other", "e2", "raw/1/5")], [])[0] == [False]


def test_replaying_the_same_source_is_not_a_duplicate(
    settings: LeptonSettings, redis_client: redis.Redis
) -> None:
    """A crash after claiming but before the transaction committed must not lose the event."""
    deduper = Deduper(settings, redis_client, window_s=60)
    claim = Claim("tx", "e1", "raw/0/1")
    assert deduper.check([claim], [])[0] == [False]
    assert deduper.check([claim], [])[0] == [False]
    assert deduper.check([Claim("tx", "e1", "raw/0/2")], [])[0] == [True]


def test_claims_expire_after_the_window(settings: LeptonSettings,
                                        redis_client: redis.Redis) -> None:
    deduper = Deduper(settings, redis_client, window_s=1)
    assert deduper.check([Claim("tx", "e1", "raw/0/1")], [])[0] == [False]
    ttl = redis_client.ttl(f"{settings.redis_prefix}ingest:dedup:tx:e1")
    assert 0 < ttl <= 1
    time.sleep(1.1)
    assert deduper.check([Claim("tx", "e1", "raw/0/7")], [])[0] == [False]


def test_forgotten_subjects_are_looked_up_in_the_same_call(
    settings: LeptonSettings, redis_client: redis.Redis
) -> None:
    redis_client.sadd(f"{settings.redis_prefix}policy:forgotten", "alice")
    deduper = Deduper(settings, redis_client, window_s=60)
    duplicate, forgotten = deduper.check([Claim("tx", "e1", "raw/0/1")], ["alice", "bob"])
    assert duplicate == [False]
    assert forgotten == {"alice"}
    assert deduper.check([], ["bob"]) == ([], set())
