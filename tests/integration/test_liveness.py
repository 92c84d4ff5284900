"""Liveness catches a hung loop: a real process on the shared stage runtime (hung_stage.py,
run_service with its metrics endpoint) whose `process` blocks forever. Its metrics endpoint
keeps answering 200 (the metrics library serves it from its own thread), so a plain HTTP probe
reads healthy; `lepton probe http --stale-after` reads the loop heartbeat and fails."""

from __future__ import annotations

import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import ClassVar

from shared.config import LeptonSettings
from shared.kafka import ensure_topics, make_producer
from shared.lifecycle import parent_death
from tests.helpers import lepton

SCRIPT = str(Path(__file__).with_name("hung_stage.py"))
STALE_AFTER_S = 2.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _probe(url: str) -> subprocess.CompletedProcess[str]:
    return lepton("probe", "http", url, "--stale-after", str(STALE_AFTER_S), check=False,
                  timeout=60)


def test_probe_fails_when_the_loop_hangs_while_the_metrics_endpoint_still_answers(
        lepton_env: LeptonSettings) -> None:
    prefix = lepton_env.topic_prefix
    ensure_topics(lepton_env, [f"{prefix}hang.in", f"{prefix}hang.out", f"{prefix}hang.positions"])
    port = _free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    proc = subprocess.Popen([sys.executable, SCRIPT], env={
        **os.environ, "LEPTON_METRICS_PORT": str(port), "LEPTON_LOG_FORMAT": "text",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        preexec_fn=parent_death(signal.SIGKILL))
    try:
        deadline = time.monotonic() + 60
        while (probe := _probe(url)).returncode != 0:
            assert proc.poll() is None and time.monotonic() < deadline, probe.stderr
            time.sleep(0.5)
        producer = make_producer(lepton_env)
        producer.produce(f"{prefix}hang.in", key=b"k", value=b"hang")
        assert producer.flush(10) == 0
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "hung"  # blocked inside process()
        time.sleep(STALE_AFTER_S + 1)
        with urllib.request.urlopen(url, timeout=5) as reply:
            assert reply.status == 200  # what the old probe read as healthy
        stale = _probe(url)
        assert stale.returncode == 1
        assert "hung" in stale.stderr and "lepton_hangs_loop_heartbeat_seconds" in stale.stderr
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait(10)


class _Metrics(http.server.BaseHTTPRequestHandler):
    """Serves `body`, then a heartbeat gauge per name in `ages`, that many seconds old when
    read (the probe is a process that may take seconds to start on a loaded machine)."""

    body: ClassVar[str] = ""
    ages: ClassVar[dict[str, float]] = {}

    def do_GET(self) -> None:
        now = time.time()
        body = (_Metrics.body + "".join(
            f"# TYPE lepton_{name}_loop_heartbeat_seconds gauge\n"
            f"lepton_{name}_loop_heartbeat_seconds {now - age}\n"
            for name, age in _Metrics.ages.items())).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return


def test_probe_reads_every_heartbeat_and_wants_at_least_one() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
    try:
        _Metrics.body = "# TYPE lepton_x_total counter\nlepton_x_total 3.0\n"
        assert lepton("probe", "http", url, check=False).returncode == 0  # no --stale-after
        none = _probe(url)
        assert none.returncode == 1 and "no main-loop heartbeat" in none.stderr
        _Metrics.body = ""
        _Metrics.ages = {"a": 0.0, "b": 0.0}
        assert _probe(url).returncode == 0
        _Metrics.ages = {"a": 0.0, "b": 60.0}
        stale = _probe(url)
        assert stale.returncode == 1 and "lepton_b_loop_heartbeat_seconds is 6" in stale.stderr
    finally:
        _Metrics.ages = {}
        server.shutdown()
