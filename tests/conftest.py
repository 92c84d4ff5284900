"""Shared fixtures: one embedded broker process per session, real Redis with per-test keys,
and per-test topic prefixes so tests never see each other's records."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from shared.config import LeptonSettings
from shared.kafka import ensure_topics
from shared.lifecycle import parent_death
from shared.topics import Topics

REDIS_URL = os.environ.get("LEPTON_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")

def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


# `timeout pytest …` or CI stopping the run sends SIGTERM: turn it into KeyboardInterrupt so
# fixture teardowns still kill the broker and service processes the tests started
signal.signal(signal.SIGTERM, _interrupt)

for _name in [n for n in os.environ if n.startswith("LEPTON_")]:
    if _name != "LEPTON_TEST_REDIS_URL":
        del os.environ[_name]
# serving's HTTP API defaults to 0.0.0.0:8080; tests (and the services they spawn) share a
# machine, so each takes a free loopback port instead
os.environ["LEPTON_SERVING_HTTP_ADDR"] = "127.0.0.1:0"


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Run `lepton broker` in a subprocess for the whole session; yield its bootstrap address."""
    path = tmp_path_factory.mktemp("broker") / "bootstrap"
    # stderr to a file, never an unread pipe: a full pipe would block the broker's log writes
    log = path.with_name("broker.log")
    with log.open("wb") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lepton", "broker", "--bootstrap-file", str(path)],
            stdout=subprocess.DEVNULL, stderr=handle, preexec_fn=parent_death(),
            env={**os.environ, "LEPTON_DATA_DIR": str(path.parent)},
        )
    deadline = time.monotonic() + 30
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"embedded broker did not start: {log.read_text()[-3000:]}")
        time.sleep(0.05)
    try:
        yield path.read_text().strip()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A Redis key prefix private to this test; its keys are deleted afterwards."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError as error:
        raise RuntimeError(f"Redis at {REDIS_URL} is down: start redis-server ({error})") from None
    prefix = f"test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def redis_client(redis_prefix: str) -> Iterator[redis.Redis]:
    """A client of the real Redis server (keys must start with `redis_prefix`)."""
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.close()


@pytest.fixture
def lepton_env(
    broker: str, redis_prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> LeptonSettings:
    """Point LEPTON_* at the session broker, real Redis, a fresh topic prefix and data dir."""
    prefix = f"t{uuid.uuid4().hex[:10]}."
    values = {
        "LEPTON_KAFKA_BOOTSTRAP": broker,
        "LEPTON_TOPIC_PREFIX": prefix,
        "LEPTON_REDIS_URL": REDIS_URL,
        "LEPTON_REDIS_PREFIX": redis_prefix,
        "LEPTON_DATA_DIR": str(tmp_path / "data"),
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    settings = LeptonSettings()
    ensure_topics(settings, Topics(prefix).all())
    return settings
