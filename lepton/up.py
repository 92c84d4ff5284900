"""`lepton up`: run the whole platform on one machine.

Starts the embedded broker (unless LEPTON_KAFKA_BOOTSTRAP is set), Redis (the configured URL,
or a private `redis-server`), every service as its own process, and with `--demo` a producer;
shows live topic progress; Ctrl-C stops everything, leaving no process behind.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Group
from rich.live import Live
from rich.table import Table

from shared.config import LeptonSettings
from shared.topics import Topic, Topics

SERVICES = ("ingest", "governance", "trainer", "serving")


@dataclass
class Child:
    """A process `lepton up` started and must stop."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path


@dataclass
class Platform:
    """Everything `lepton up` runs, stopped in reverse order."""

    data_dir: Path
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    children: list[Child] = field(default_factory=list)

    def spawn(self, name: str, args: list[str]) -> Child:
        """Start `args` with its output in `<data_dir>/logs/<name>.log`."""
        logs = self.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log = logs / f"{name}.log"
        handle = log.open("ab")
        proc = subprocess.Popen(args, env=self.env, stdout=handle, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        handle.close()
        child = Child(name, proc, log)
        self.children.append(child)
        return child

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM every child (newest first), wait, then SIGKILL what is left."""
        for child in reversed(self.children):
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while child.proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            if child.proc.poll() is None:
                os.killpg(child.proc.pid, signal.SIGKILL)
                child.proc.wait()


def _wait_for(check: Callable[[], bool], what: str, child: Child | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if child is not None and child.proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {child.proc.returncode}; see {child.log}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} was not ready after {timeout:.0f}s")
        time.sleep(0.1)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _redis_up(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def start_platform(settings: LeptonSettings, platform: Platform) -> None:
    """Start broker, Redis and the services, each after its dependency is ready."""
    if not settings.kafka_bootstrap:
        path = settings.default_bootstrap_file()
        path.unlink(missing_ok=True)
        child = platform.spawn("broker", [sys.executable, "-m", "lepton", "broker",
                                          "--bootstrap-file", str(path)])
        _wait_for(path.exists, "the embedded broker", child, 30)
        platform.env["LEPTON_KAFKA_BOOTSTRAP"] = path.read_text().strip()
    if not _redis_up(settings.redis_url):
        server = shutil.which("redis-server")
        if server is None:
            raise RuntimeError(f"Redis at {settings.redis_url} is down and redis-server is "
                               "not installed (run scripts/install.sh)")
        port = _free_port()
        redis_dir = platform.data_dir / "redis"
        redis_dir.mkdir(parents=True, exist_ok=True)
        child = platform.spawn("redis", [server, "--bind", "127.0.0.1", "--port", str(port),
                                         "--dir", str(redis_dir), "--appendonly", "yes"])
        url = f"redis://127.0.0.1:{port}/0"
        _wait_for(lambda: _redis_up(url), "redis-server", child, 15)
        platform.env["LEPTON_REDIS_URL"] = url
    for name in SERVICES:
        if importlib.util.find_spec(f"services.{name}.__main__") is not None:
            platform.spawn(name, [sys.executable, "-m", f"services.{name}"])


def _dashboard(settings: LeptonSettings, platform: Platform, started: float) -> Group:
    from confluent_kafka import Consumer, TopicPartition

    table = Table(title="Lepton Stream", expand=False)
    table.add_column("topic")
    table.add_column("records", justify="right")
    consumer = Consumer({"bootstrap.servers": platform.env["LEPTON_KAFKA_BOOTSTRAP"],
                         "group.id": "lepton-up-dashboard", "log_level": 3})
    try:
        topics = Topics(settings.topic_prefix)
        for topic in (Topic.RAW, Topic.CLEAN, Topic.REJECTED, Topic.GOVERNED,
                      Topic.AUDIT_LOG, Topic.MODELS, Topic.PREDICT_RESULTS):
            name = topics.name(topic)
            total = 0
            for partition in range(4):
                _, high = consumer.get_watermark_offsets(TopicPartition(name, partition),
                                                         timeout=1, cached=False)
                total += max(high, 0)
            table.add_row(name, f"{total:,}")
    finally:
        consumer.close()
    procs = Table(title=f"processes (up {time.monotonic() - started:.0f}s)")
    procs.add_column("name")
    procs.add_column("pid", justify="right")
    procs.add_column("state")
    procs.add_column("log")
    for child in platform.children:
        code = child.proc.poll()
        procs.add_row(child.name, str(child.proc.pid),
                      "running" if code is None else f"exited {code}", str(child.log))
    return Group(table, procs)


def up(
    demo: Annotated[bool, typer.Option(help="Also run a producer of demo transactions.")]
    = False,
    rate: Annotated[float, typer.Option(min=1, help="Demo events a second.")] = 200.0,
    count: Annotated[int, typer.Option(min=1, help="Demo events in all.")] = 100_000,
) -> None:
    """Run broker, Redis and every service (and a demo producer) until Ctrl-C."""
    from lepton.signals import stop_event
    from shared.config import load_settings

    settings = load_settings(LeptonSettings)
    stop = stop_event()
    platform = Platform(data_dir=settings.data_dir)
    started = time.monotonic()
    try:
        start_platform(settings, platform)
        if demo:
            platform.spawn("producer", [sys.executable, "-m", "lepton", "produce",
                                        "--count", str(count), "--rate", str(rate), "--quiet"])
        with Live(_dashboard(settings, platform, started), refresh_per_second=1,
                  transient=False) as live:
            while not stop.wait(1.0):
                live.update(_dashboard(settings, platform, started))
    except RuntimeError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    finally:
        typer.echo("stopping…", err=True)
        platform.stop()


def register(app: typer.Typer) -> None:
    """Add `lepton up` to the command line."""
    app.command("up")(up)
