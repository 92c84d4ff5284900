"""`lepton up`: run the whole platform on one machine.

Starts the embedded broker (unless LEPTON_KAFKA_BOOTSTRAP is set), Redis (the configured URL,
or a private `redis-server` with an append-only file, started again when it exits), the five
services as separate processes, each waited for until it reports ready, and with `--demo` a
producer and a demo app (`lepton demo-app`: predictions over gRPC, HTTP and Kafka); shows a
live dashboard; Ctrl-C stops everything in reverse order, leaving no process behind.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit, urlunsplit

import typer

from lepton.children import Child, Platform, exit_line, newly_exited, restart_exited
from lepton.dashboard import ProcessRow
from shared.config import LeptonSettings
from shared.readiness import ready_path

SERVICES = ("ingest", "governance", "trainer", "serving", "monitor")
READY_TIMEOUT_S = 120.0
DEMO_APP_RATE = 10.0
# a demo version lives one trainer cycle (≈ 30 s, ≈ 300 demo predictions): windows that fill
DEMO_MONITOR = {"LEPTON_MONITOR_WINDOW": "200", "LEPTON_MONITOR_STEP": "100"}
BROKER_GONE = ("the embedded broker has stopped, and its topics were in memory: this run cannot "
               "go on, so everything stops (`lepton up` starts a fresh run)")


def _wait_for(check: Callable[[], bool], what: str, child: Child | None, timeout: float,
              stop: threading.Event) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if child is not None and child.proc.poll() is not None:
            raise RuntimeError(exit_line(child, what))
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} was not ready after {timeout:.0f}s")
        if stop.wait(0.1):
            raise KeyboardInterrupt


def _no_password(url: str) -> str:
    """`url` with any password replaced by ***, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


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


def start_platform(settings: LeptonSettings, platform: Platform,
                   stop: threading.Event) -> str | None:
    """Start broker and Redis, then the services, each waited for until ready; the URL of
    the private redis-server it started, if it did."""
    if not settings.kafka_bootstrap:
        path = settings.default_bootstrap_file()
        path.unlink(missing_ok=True)
        child = platform.spawn("broker", [sys.executable, "-m", "lepton", "broker",
                                          "--bootstrap-file", str(path)])
        _wait_for(path.exists, "the embedded broker", child, 30, stop)
        platform.env["LEPTON_KAFKA_BOOTSTRAP"] = path.read_text().strip()
    private = None
    if not _redis_up(settings.redis_url):
        server = shutil.which("redis-server")
        if server is None:
            raise RuntimeError(f"Redis at {_no_password(settings.redis_url)} is down and "
                               "redis-server is "
                               "not installed (run scripts/install.sh)")
        port = _free_port()
        redis_dir = platform.data_dir / "redis"
        redis_dir.mkdir(parents=True, exist_ok=True)
        child = platform.spawn(
            "redis", [server, "--bind", "127.0.0.1", "--port", str(port), "--dir",
                      str(redis_dir), "--appendonly", "yes"],
            restart_note="redis-server started again on the same port; its append-only file "
                         "gives back what it held, and the services reconnect")
        private = f"redis://127.0.0.1:{port}/0"
        _wait_for(lambda: _redis_up(private), "redis-server", child, 15, stop)
        platform.env["LEPTON_REDIS_URL"] = private
    started = []
    for name in SERVICES:
        ready_path(settings, name).unlink(missing_ok=True)
        started.append(platform.spawn(name, [sys.executable, "-m", f"services.{name}"],
                                      metrics_port=_free_port()))
    for child in started:
        marker = ready_path(settings, child.name)
        _wait_for(marker.exists, child.name, child, READY_TIMEOUT_S, stop)
    return private


def _process_rows(platform: Platform) -> list[ProcessRow]:
    rows = []
    for child in platform.children:
        code = child.proc.poll()
        rows.append(ProcessRow(child.name, child.proc.pid,
                               "running" if code is None else f"exited {code}",
                               child.metrics_port, str(child.log)))
    return rows


def _watch(settings: LeptonSettings, platform: Platform, stop: threading.Event,
           started: float) -> None:
    from rich.console import Console, RenderableType
    from rich.live import Live

    from lepton.dashboard import Dashboard, plain_line, render

    ports = {c.name: c.metrics_port for c in platform.children if c.metrics_port is not None}
    dashboard = Dashboard(settings, platform.env["LEPTON_KAFKA_BOOTSTRAP"], ports)
    console = Console()
    reported: set[str] = set()
    try:
        def view() -> RenderableType:
            for line in newly_exited(platform, reported):  # above the live view in a terminal
                print(f"lepton up: {line}", flush=True)
            if "broker" in reported:
                raise RuntimeError(BROKER_GONE)
            for note in restart_exited(platform, reported):
                print(f"lepton up: {note}", flush=True)
            snap = dashboard.snapshot()
            if not console.is_terminal:
                print(plain_line(snap), flush=True)
            return render(snap, _process_rows(platform), time.monotonic() - started)

        if console.is_terminal:
            with Live(view(), console=console, refresh_per_second=1) as live:
                while not stop.wait(1.0):
                    live.update(view())
        else:
            while not stop.wait(5.0):
                view()
    finally:
        dashboard.close()


def scope_run(settings: LeptonSettings) -> LeptonSettings:
    """Settings for one run on a fresh embedded broker: its own data directory and Redis
    prefix, since offsets, dedup marks and resume points from another broker's run would not
    match this one's topics."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return settings.model_copy(update={
        "data_dir": settings.data_dir / "runs" / stamp,
        "redis_prefix": f"{settings.redis_prefix}run-{stamp}:",
        "bootstrap_file": settings.default_bootstrap_file(),
    })


def write_current(path: Path, env: dict[str, str]) -> None:
    """`<data_dir>/current.env`: what other shells' commands need to reach a scoped run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{name}={value}\n" for name, value in env.items()))


def run_env(settings: LeptonSettings) -> dict[str, str]:
    """The LEPTON_* variables that point a process at this run's state."""
    env = {"LEPTON_DATA_DIR": str(settings.data_dir.resolve()),
           "LEPTON_REDIS_PREFIX": settings.redis_prefix}
    if settings.bootstrap_file is not None:
        env["LEPTON_BOOTSTRAP_FILE"] = str(settings.bootstrap_file.resolve())
    return env


def listen_env(env: dict[str, str], host: str) -> dict[str, str]:
    """Serving's gRPC and HTTP addresses and the metrics endpoints' host on `host`, for each the
    environment leaves unset (the broker and a private Redis always listen on loopback)."""
    from services.serving.config import ServingSettings

    where = f"[{host}]" if ":" in host else host
    wanted = {"LEPTON_METRICS_HOST": host}
    for field in ("serving_addr", "serving_http_addr"):  # serving's own default ports
        port = str(ServingSettings.model_fields[field].default).rpartition(":")[2]
        wanted[f"LEPTON_{field.upper()}"] = f"{where}:{port}"
    return {name: value for name, value in wanted.items() if name not in env}


def serving_tokens(env: dict[str, str], data_dir: Path) -> dict[str, str]:
    """Fresh predict and admin tokens for serving where the environment sets none (and auth is
    not explicitly off), also written to `<data_dir>/serving-tokens.env` (0600) for other
    shells."""
    if env.get("LEPTON_SERVING_AUTH") == "none":
        return {}
    made = {name: secrets.token_urlsafe(24) for name in
            ("LEPTON_SERVING_AUTH_TOKEN", "LEPTON_SERVING_ADMIN_TOKEN") if not env.get(name)}
    if made:
        data_dir.mkdir(parents=True, exist_ok=True)
        path = data_dir / "serving-tokens.env"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write("".join(f"{k}={v}\n" for k, v in made.items()))
    return made


def up(
    demo: Annotated[bool, typer.Option(
        help="Also run a producer of demo transactions and a demo app calling serving.")]
    = False,
    rate: Annotated[float, typer.Option(min=1, help="Demo events a second.")] = 200.0,
    count: Annotated[int, typer.Option(min=1, help="Demo events in all.")] = 100_000,
    host: Annotated[str, typer.Option(
        help="Listen address of serving (gRPC, HTTP) and the metrics endpoints, where "
             "LEPTON_SERVING_ADDR, LEPTON_SERVING_HTTP_ADDR or LEPTON_METRICS_HOST leave it "
             "open; 0.0.0.0 reaches them from other machines.")] = "127.0.0.1",
) -> None:
    """Run broker, Redis and every service (and a demo producer) until Ctrl-C."""
    from shared.config import load_settings
    from shared.signals import stop_event

    settings = load_settings(LeptonSettings)
    stop = stop_event(grace_s=25.0)  # services, then broker and Redis: 9 s each
    current = None
    if not settings.kafka_bootstrap:
        current = settings.data_dir / "current.env"
        settings = scope_run(settings)
    platform = Platform(data_dir=settings.data_dir)
    platform.env.update(run_env(settings))
    platform.env.update(listen_env(platform.env, host))
    serving = {name: platform.env[name] for name in
               ("LEPTON_SERVING_ADDR", "LEPTON_SERVING_HTTP_ADDR") if platform.env.get(name)}
    platform.env.update(serving_tokens(platform.env, settings.data_dir))
    if demo:
        for name, value in DEMO_MONITOR.items():
            platform.env.setdefault(name, value)
    started = time.monotonic()
    try:
        private_redis = start_platform(settings, platform, stop)
        if current is not None:
            redis_url = {"LEPTON_REDIS_URL": private_redis} if private_redis else {}
            write_current(current, {**run_env(settings), **redis_url, **serving})
        redis_note = f", private redis {private_redis}" if private_redis else ""
        listening = "".join(f", serving {label} {serving[name]}" for label, name in (
            ("gRPC", "LEPTON_SERVING_ADDR"), ("HTTP", "LEPTON_SERVING_HTTP_ADDR"))
            if name in serving)
        typer.echo(f"lepton up: ready in {time.monotonic() - started:.1f}s "
                   f"(kafka {platform.env['LEPTON_KAFKA_BOOTSTRAP']}{redis_note}{listening}, "
                   f"data and logs in {settings.data_dir}); Ctrl-C stops everything", err=True)
        if demo:
            seed = str(secrets.randbelow(2**31))  # the app scores the producer's events
            platform.spawn("producer", [sys.executable, "-m", "lepton", "produce", "--count",
                                        str(count), "--rate", str(rate), "--seed", seed,
                                        "--quiet"])
            platform.spawn("demo-app", [sys.executable, "-m", "lepton", "demo-app", "--rate",
                                        str(DEMO_APP_RATE), "--seed", seed, "--stream-count",
                                        str(count)])
        _watch(settings, platform, stop, started)
    except RuntimeError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        pass
    finally:
        typer.echo("lepton up: stopping…", err=True)
        platform.stop()
        typer.echo("lepton up: stopped", err=True)


def register(app: typer.Typer) -> None:
    """Add `lepton up` to the command line."""
    app.command("up")(up)
