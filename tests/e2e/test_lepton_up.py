"""`lepton up` end to end: the whole platform as real processes, one trace per event through
every hop, a promoted model answering over gRPC, a verifiable audit log, and Ctrl-C that
leaves no process behind."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import psutil
import pytest

from lepton.generators import transactions
from services.serving.client import ServingClient
from shared.config import LeptonSettings
from shared.lifecycle import parent_death
from shared.models.registry import Registry
from tests.conftest import REDIS_URL
from tests.helpers import lepton
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan

TOKEN = "e2e-token"
EVENTS = 2000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(check: object, what: str, timeout: float, proc: subprocess.Popen[bytes],
          log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert proc.poll() is None, f"lepton up exited early:\n{log.read_text()[-4000:]}"
        assert time.monotonic() < deadline, f"{what} not within {timeout}s:\n" + \
            log.read_text()[-4000:]
        time.sleep(0.5)


@dataclass
class Running:
    """A running `lepton up` and how to reach it."""

    proc: subprocess.Popen[bytes]
    env: dict[str, str]
    settings: LeptonSettings
    addr: str
    log: Path
    receiver: OtlpReceiver
    descendants: set[int]


@pytest.fixture
def platform(tmp_path: Path, redis_prefix: str) -> Iterator[Running]:
    """`lepton up` with its own embedded broker, exporting traces to a real OTLP receiver."""
    receiver = OtlpReceiver().start()
    addr = f"127.0.0.1:{_free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEPTON_")}
    env.update({
        "LEPTON_DATA_DIR": str(tmp_path / "data"),
        "LEPTON_TOPIC_PREFIX": f"e2e{uuid.uuid4().hex[:8]}.",
        "LEPTON_REDIS_URL": REDIS_URL,
        "LEPTON_REDIS_PREFIX": redis_prefix,
        "LEPTON_SERVING_ADDR": addr,
        "LEPTON_SERVING_HTTP_ADDR": f"127.0.0.1:{_free_port()}",
        "LEPTON_SERVING_AUTH_TOKEN": TOKEN,
        "LEPTON_TRAINER_CYCLE_S": "6",
        # 2k events leave ~14 held-out frauds over five age bands: too few for a meaningful
        # fairness bound, which the trainer's own tests exercise.
        "LEPTON_TRAINER_MAX_DP_DIFF": "1.0",
        "LEPTON_TRAINER_MAX_EO_DIFF": "1.0",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "500",
    })
    log = tmp_path / "up.log"
    with log.open("wb") as handle:
        proc = subprocess.Popen([sys.executable, "-m", "lepton", "up"], env=env,
                                stdout=handle, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=parent_death())
    running = Running(proc, env, LeptonSettings(), addr, log, receiver, set())
    try:
        _wait(lambda: b"lepton up: ready" in log.read_bytes(), "readiness", 240, proc, log)
        # this run's state is scoped under the data dir and the Redis prefix (current.env)
        run = dict(line.split("=", 1) for line in
                   (tmp_path / "data" / "current.env").read_text().splitlines())
        assert run["LEPTON_REDIS_PREFIX"].startswith(redis_prefix)
        env.update(run)
        running.settings = LeptonSettings(
            data_dir=Path(run["LEPTON_DATA_DIR"]), redis_url=REDIS_URL,
            redis_prefix=run["LEPTON_REDIS_PREFIX"], topic_prefix=env["LEPTON_TOPIC_PREFIX"])
        running.descendants = {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
        yield running
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for pid in running.descendants:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        receiver.stop()


def _named(spans: list[ReceivedSpan], name: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.name == name]


def _assert_traces(spans: list[ReceivedSpan], prefix: str) -> None:
    by_id = {s.span_id: s for s in spans}
    produced = {s.span_id: s for s in _named(spans, f"send {prefix}events.raw")}
    ingested = [s for s in _named(spans, f"process {prefix}events.raw")
                if s.parent_id in produced]
    assert ingested, "no ingest span continues a producer span"
    ingest_ids = {s.span_id for s in ingested}
    governed = [s for s in _named(spans, f"process {prefix}events.clean")
                if s.parent_id in ingest_ids]
    assert governed, "no governance span continues an ingest span"
    event_trace = {s.trace_id for s in governed}
    assert all(produced[by_id[g.parent_id].parent_id].trace_id == g.trace_id for g in governed)

    batches = [s for s in _named(spans, f"process {prefix}events.governed")
               if any(trace in event_trace for trace, _ in s.links)]
    assert batches, "no trainer batch span links to an event's trace"
    batch_ids = {s.span_id for s in batches}
    cycles = [s for s in _named(spans, "trainer cycle")
              if any(span_id in batch_ids for _, span_id in s.links)]
    assert cycles, "no trainer cycle span links its batch spans"
    cycle_traces = {s.trace_id for s in cycles}
    announced = [s for s in _named(spans, f"send {prefix}models.updates")
                 if s.trace_id in cycle_traces]
    assert announced, "the model announcement is not in the training cycle's trace"
    announced_ids = {s.span_id for s in announced}
    received = [s for s in _named(spans, f"process {prefix}models.updates")
                if s.parent_id in announced_ids and s.service == "serving"]
    assert received, "serving did not continue the announcement's trace"
    swaps = [s for s in _named(spans, "serving swap")
             if s.parent_id in {r.span_id for r in received}]
    assert swaps, "no serving swap span under the announcement"
    swap_ids = {s.span_id for s in swaps}
    predictions = [s for s in spans if s.name.endswith("/Predict")
                   and any(span_id in swap_ids for _, span_id in s.links)]
    assert predictions, "no prediction links to the swap of the model that answered"


def _assert_prometheus(platform: Running) -> None:
    """Every service serves its OpenTelemetry metrics on the port `lepton up` gave it."""
    checked = set()
    for child in psutil.Process(platform.proc.pid).children():
        cmdline = child.cmdline()
        if len(cmdline) < 3 or not cmdline[2].startswith("services."):
            continue
        service = cmdline[2].removeprefix("services.")
        port = child.environ()["LEPTON_METRICS_PORT"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            body = reply.read().decode()
        assert f"lepton_{service}_" in body, f"{service} exports no lepton metrics on :{port}"
        assert f"lepton_{service}_energy_joules_total" in body, f"{service} meters no energy"
        checked.add(service)
    assert checked == {"ingest", "governance", "trainer", "serving", "monitor"}


def _loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)  # gRPC's dual-stack ::ffff:127.0.0.1
    return bool((mapped or address).is_loopback)


def _assert_loopback_only(platform: Running) -> None:
    """Every socket the platform listens on (metrics, serving, broker) takes only local
    connections: `lepton up` binds loopback unless told otherwise."""
    listening = [(child.name(), conn.laddr)
                 for child in psutil.Process(platform.proc.pid).children(recursive=True)
                 for conn in child.net_connections(kind="tcp")
                 if conn.status == psutil.CONN_LISTEN]
    assert len(listening) >= 7, listening  # five metrics endpoints, gRPC, HTTP (and the broker)
    exposed = [(name, addr) for name, addr in listening if not _loopback(addr.ip)]
    assert not exposed, f"listening beyond this machine: {exposed}"


def test_lepton_up_runs_the_platform_end_to_end(platform: Running) -> None:
    prefix = platform.env["LEPTON_TOPIC_PREFIX"]
    lepton("produce", "--dataset", "transactions", "--count", str(EVENTS), "--quiet",
           env=platform.env)

    registry = Registry(platform.settings)
    _wait(lambda: registry.live("transactions") is not None, "a promoted model", 240,
          platform.proc, platform.log)
    live = registry.live("transactions")
    assert registry.card("transactions", live or 0).status == "promoted"

    record = dict(next(transactions(1, seed=99)).payload)
    client = ServingClient(platform.addr, token=TOKEN)
    answers: list[dict[str, object]] = []

    def answered_by_live() -> bool:
        try:
            answers.append(client.predict([record], model="transactions")[0])
        except grpc.RpcError as error:  # serving may not have loaded the announcement yet
            if error.code() not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE):
                raise
            return False
        return answers[-1]["version"] == registry.live("transactions")

    try:
        _wait(answered_by_live, "a prediction by the live model", 60, platform.proc,
              platform.log)
    finally:
        client.close()
    assert answers[-1]["version"] == live

    verify = lepton("audit", "verify", env=platform.env, check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr

    deadline = time.monotonic() + 30
    while True:
        try:
            _assert_traces(platform.receiver.spans, prefix)
            break
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)

    _assert_prometheus(platform)
    _assert_loopback_only(platform)
    _wait(lambda: b"lepton up: produced=" in platform.log.read_bytes(), "a dashboard line", 30,
          platform.proc, platform.log)

    platform.proc.send_signal(signal.SIGINT)
    assert platform.proc.wait(60) == 0, platform.log.read_text()[-3000:]
    time.sleep(0.5)
    left = [pid for pid in platform.descendants if psutil.pid_exists(pid)
            and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert not left, f"processes left behind: {left}"
    assert b"lepton up: stopped" in platform.log.read_bytes()
    # the dashboard (a line every 5 s) never shows a stage ahead of its input
    lines = [dict(f.split("=", 1) for f in line.split()[2:] if "=" in f)
             for line in platform.log.read_text().splitlines()
             if line.startswith("lepton up: produced=")]
    assert lines and all(int(x["ingested"]) <= int(x["produced"]) for x in lines), lines
