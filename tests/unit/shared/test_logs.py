"""Logging through the real service entry (`run_service` in a subprocess): LEPTON_LOG_LEVEL is
honoured (DEBUG lines appear at DEBUG, nothing under WARNING at WARNING), LEPTON_LOG_FORMAT=json
writes one JSON object a line, and a line logged inside a span carries that span's trace_id and
span_id (none outside a span)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.lifecycle import parent_death

ROOT = Path(__file__).resolve().parents[3]

SERVICE = """
import logging, threading
from shared.config import LeptonSettings
from shared.stage import run_service
import shared.tracing

log = logging.getLogger("lepton.logtest")

def run(settings: LeptonSettings, stop: threading.Event) -> int:
    log.debug("debug outside")
    log.info("info outside")
    with shared.tracing.get_tracer("logtest").start_as_current_span("work") as span:
        ids = span.get_span_context()
        print(f"{ids.trace_id:032x} {ids.span_id:016x}", flush=True)
        log.debug("debug inside")
        log.warning("warning inside")
    return 0

run_service("logtest", LeptonSettings, run)
"""


def _run(level: str, fmt: str) -> tuple[list[str], list[str]]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LEPTON_", "OTEL_"))}
    env.update({"LEPTON_LOG_LEVEL": level, "LEPTON_LOG_FORMAT": fmt,
                "LEPTON_KAFKA_BOOTSTRAP": "127.0.0.1:9", "PYTHONPATH": str(ROOT)})
    result = subprocess.run([sys.executable, "-c", SERVICE], env=env, capture_output=True,
                            text=True, timeout=60, preexec_fn=parent_death())
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.split(), result.stderr.splitlines()


def test_json_lines_carry_the_current_span_and_debug_is_honoured() -> None:
    (trace_id, span_id), lines = _run("DEBUG", "json")
    records = {r["message"]: r for r in map(json.loads, lines)
               if r.get("logger") == "lepton.logtest"}
    assert set(records) == {"debug outside", "info outside", "debug inside", "warning inside"}
    for message in ("debug inside", "warning inside"):
        assert (records[message]["trace_id"], records[message]["span_id"]) == (trace_id, span_id)
        assert records[message]["service"] == "logtest"
    assert records["debug inside"]["level"] == "DEBUG"
    assert "trace_id" not in records["debug outside"]


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_warning_level_drops_debug_and_info(fmt: str) -> None:
    _, lines = _run("WARNING", fmt)
    ours = [line for line in lines if "outside" in line or "inside" in line]
    assert len(ours) == 1 and "warning inside" in ours[0], lines
    if fmt == "text":
        assert ours[0].split()[2:5] == ["WARNING", "lepton.logtest:", "warning"]
