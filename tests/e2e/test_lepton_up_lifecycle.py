"""`lepton up` never orphans its children: a closed terminal (SIGHUP), a SIGTERM and a SIGKILL
of `lepton up` each leave no process of the platform running 15 s later. A service that cannot
start, or an embedded broker that dies, ends the run with the reason; a private redis-server
that dies is started again with what it held."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis

from lepton.children import RESTART_MIN_S
from lepton.up import BROKER_GONE
from shared.lifecycle import parent_death
from tests.conftest import REDIS_URL
from tests.helpers import free_port

SETTLE_S = 15.0


def _up_env(tmp_path: Path, redis_prefix: str, http_addr: str = "127.0.0.1:0"
            ) -> dict[str, str]:
    """The environment of a `lepton up` of this test alone (its data, Redis prefix, topics)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEPTON_")}
    env.update({"LEPTON_DATA_DIR": str(tmp_path / "data"), "LEPTON_REDIS_URL": REDIS_URL,
                "LEPTON_REDIS_PREFIX": redis_prefix, "LEPTON_SERVING_ADDR": "127.0.0.1:0",
                "LEPTON_SERVING_HTTP_ADDR": http_addr,
                "LEPTON_TOPIC_PREFIX": f"life{uuid.uuid4().hex[:8]}."})
    return env


def _alive(pids: set[int]) -> list[psutil.Process]:
    alive = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
    return alive


@contextlib.contextmanager
def _lepton_up(env: dict[str, str], log: Path, *args: str
               ) -> Iterator[tuple[subprocess.Popen[bytes], set[int]]]:
    """`lepton up ARGS` in its own session (like a shell job: a signal goes to it alone), once
    ready; the test adds the pids it saw to the set, and none of them outlives the block."""
    with log.open("wb") as handle:
        proc = subprocess.Popen([sys.executable, "-m", "lepton", "up", *args], env=env,
                                stdout=handle, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=parent_death())
    descendants: set[int] = set()
    try:
        deadline = time.monotonic() + 240
        while b"lepton up: ready" not in log.read_bytes():
            assert proc.poll() is None, log.read_text()[-4000:]
            assert time.monotonic() < deadline, log.read_text()[-4000:]
            time.sleep(0.5)
        yield proc, descendants
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        for leftover in _alive(descendants):
            with contextlib.suppress(psutil.NoSuchProcess):
                leftover.kill()


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGTERM, signal.SIGKILL],
                         ids=["SIGHUP", "SIGTERM", "SIGKILL"])
def test_no_process_survives_lepton_up(tmp_path: Path, redis_prefix: str,
                                       signum: signal.Signals) -> None:
    env = _up_env(tmp_path, redis_prefix)
    log = tmp_path / "up.log"
    with _lepton_up(env, log, "--demo", "--rate", "50") as (proc, descendants):
        time.sleep(2)  # the demo producer is started after the ready line
        descendants.update(p.pid for p in psutil.Process(proc.pid).children(recursive=True))
        names = {" ".join(p.cmdline()[1:4]) for p in _alive(descendants)}
        assert len(descendants) >= 6, names  # broker, 4 services, producer (and Redis)
        killed_at = time.monotonic()
        proc.send_signal(signum)
        while _alive(descendants) and time.monotonic() - killed_at < SETTLE_S:
            time.sleep(0.2)
        left = _alive(descendants)
        assert not left, [(p.pid, p.cmdline()) for p in left]
        elapsed = time.monotonic() - killed_at
        proc.wait(5)
        if signum != signal.SIGKILL:
            assert proc.returncode == 0, log.read_text()[-3000:]
            assert b"lepton up: stopped" in log.read_bytes()
        print(f"{signal.Signals(signum).name}: all {len(descendants)} children gone in "
              f"{elapsed:.1f} s")


def test_a_killed_test_session_leaves_no_broker(tmp_path: Path) -> None:
    """The session broker fixture dies with a SIGKILLed pytest (CI cancelling a job)."""
    test = tmp_path / "test_hold.py"
    marker = tmp_path / "broker.pid"
    test.write_text(
        "import time, psutil\n"
        "def test_hold(broker):\n"
        f"    kids = psutil.Process().children()\n"
        f"    open({str(marker)!r}, 'w').write(' '.join(str(k.pid) for k in kids))\n"
        "    time.sleep(300)\n")
    root = Path(__file__).resolve().parents[2]
    children: set[int] = set()
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest",
                             "-p", "no:randomly", "--rootdir", str(tmp_path), str(test)],
                            cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(root)}, preexec_fn=parent_death())
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() or not marker.read_text():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        children = {int(pid) for pid in marker.read_text().split()}
        assert _alive(children), "the broker fixture should be running"
        proc.kill()
        killed_at = time.monotonic()
        while _alive(children) and time.monotonic() - killed_at < 10:
            time.sleep(0.2)
        assert not _alive(children)
    finally:
        proc.kill()
        proc.wait()
        for leftover in _alive(children):
            leftover.kill()


def test_a_service_that_cannot_start_is_named_with_its_reason(tmp_path: Path,
                                                              redis_prefix: str) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    address = f"127.0.0.1:{taken.getsockname()[1]}"
    env = _up_env(tmp_path, redis_prefix, http_addr=address)
    try:
        result = subprocess.run([sys.executable, "-m", "lepton", "up"], env=env,
                                capture_output=True, text=True, timeout=240,
                                preexec_fn=parent_death())
    finally:
        taken.close()
    assert result.returncode == 1, result.stderr[-3000:]
    line = next(x for x in result.stderr.splitlines() if x.startswith("error: "))
    assert line.startswith(f"error: serving exited with 1: OSError: cannot listen on {address} "
                           "for HTTP: [Errno 98] Address already in use; see "), line
    assert "lepton up: stopped" in result.stderr


def test_a_dead_embedded_broker_stops_the_run_and_says_why(tmp_path: Path,
                                                          redis_prefix: str) -> None:
    env = _up_env(tmp_path, redis_prefix)
    log = tmp_path / "up.log"
    with _lepton_up(env, log) as (proc, descendants):
        children = psutil.Process(proc.pid).children(recursive=True)
        descendants.update(p.pid for p in children)
        (broker,) = [p for p in children if p.cmdline()[1:4] == ["-m", "lepton", "broker"]]
        broker.kill()
        assert proc.wait(60) == 1, log.read_text()[-4000:]
        text = log.read_text()
        assert f"lepton up: broker was killed by SIGKILL; see {tmp_path / 'data'}" in text
        assert f"error: {BROKER_GONE}" in text
        assert "lepton up: stopped" in text
        assert not _alive(descendants)


def test_a_private_redis_that_dies_is_started_again_with_what_it_held(
        tmp_path: Path, redis_prefix: str) -> None:
    env = _up_env(tmp_path, redis_prefix)
    env["LEPTON_REDIS_URL"] = f"redis://127.0.0.1:{free_port()}/0"  # down: a private one starts
    log = tmp_path / "up.log"
    with _lepton_up(env, log) as (proc, descendants):
        children = psutil.Process(proc.pid).children(recursive=True)
        descendants.update(p.pid for p in children)
        (server,) = [p for p in children if p.name() == "redis-server"]
        current = dict(line.split("=", 1) for line in
                       (tmp_path / "data" / "current.env").read_text().splitlines())
        url = current["LEPTON_REDIS_URL"]
        assert f"private redis {url}" in log.read_text()
        client = redis.Redis.from_url(url)
        assert list(client.scan_iter(match=f"{current['LEPTON_REDIS_PREFIX']}*"))  # the run's
        client.set(f"{redis_prefix}kept", b"before the kill")
        time.sleep(max(0.0, server.create_time() + RESTART_MIN_S + 1 - time.time()))
        server.kill()

        deadline = time.monotonic() + 30
        while b"redis-server started again" not in log.read_bytes():
            assert proc.poll() is None, log.read_text()[-4000:]
            assert time.monotonic() < deadline, log.read_text()[-4000:]
            time.sleep(0.5)
        descendants.update(p.pid for p in psutil.Process(proc.pid).children(recursive=True))
        assert client.get(f"{redis_prefix}kept") == b"before the kill"
        time.sleep(6)  # one more dashboard round: every service still running
        assert proc.poll() is None, log.read_text()[-4000:]
        text = log.read_text()
        assert "lepton up: redis was killed by SIGKILL; see " in text
        assert " exited with " not in text, text[-4000:]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()[-4000:]
        assert not _alive(descendants)
