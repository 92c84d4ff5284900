"""Any `lepton` command that meets an unreachable broker or Redis exits 69 with one line
naming what it could not reach, never a traceback (the commands that check for themselves,
such as `lepton produce`, say more: test_produce_unreachable.py); one that acted but could not
record its decision says so, and exits 69 too."""

from __future__ import annotations

from pathlib import Path

import redis

from lepton.dashboard import Dashboard
from shared.config import LeptonSettings
from shared.pseudonym import load_pseudonymizer
from shared.state import forgotten_key
from tests.helpers import free_port, lepton


def test_an_unreachable_broker_is_named_not_a_traceback(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    result = lepton("dlq", "show", env={"LEPTON_KAFKA_BOOTSTRAP": address,
                                        "LEPTON_DATA_DIR": str(tmp_path)}, check=False)
    assert result.returncode == 69, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == (
        "error: cannot reach the Kafka broker (Failed to get metadata: Local: Broker transport "
        f"failure); is it running at {address}?")


def test_an_unreachable_redis_is_named_not_a_traceback(tmp_path: Path) -> None:
    port = free_port()
    result = lepton("monitor", "report", env={
        "LEPTON_REDIS_URL": f"redis://:secret-password@127.0.0.1:{port}/0",
        "LEPTON_DATA_DIR": str(tmp_path)}, check=False)
    assert result.returncode == 69, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "secret-password" not in result.stderr
    assert result.stderr.splitlines()[-1].startswith(
        f"error: cannot reach Redis (Error 111 connecting to 127.0.0.1:{port}.")
    assert result.stderr.endswith("is it running at LEPTON_REDIS_URL?\n")


def test_forget_without_a_broker_is_done_and_says_its_record_is_missing(
        lepton_env: LeptonSettings, redis_client: redis.Redis) -> None:
    address = f"127.0.0.1:{free_port()}"
    result = lepton("forget", "cust-000009", env={"LEPTON_KAFKA_BOOTSTRAP": address},
                    check=False, timeout=90)
    assert result.returncode == 69, result.stderr[-2000:]
    assert "error: done, but the subject_forgotten decision was NOT recorded on " \
           "audit.requests (DeliveryTimeout: " in result.stderr
    assert "run it again once the broker is up (forgetting is idempotent)" in result.stderr
    pseudonym = load_pseudonymizer(lepton_env).of("cust-000009")
    assert redis_client.sismember(forgotten_key(lepton_env), pseudonym)


def test_the_dashboard_waits_out_an_unreachable_broker(lepton_env: LeptonSettings) -> None:
    """`lepton up` against an external broker that went away keeps running, as its services do."""
    dashboard = Dashboard(lepton_env, f"127.0.0.1:{free_port()}", {})
    try:
        snap = dashboard.snapshot()
    finally:
        dashboard.close()
    assert snap.last_trace.startswith("(broker unreachable: "), snap.last_trace
    assert "produced" not in snap.records
