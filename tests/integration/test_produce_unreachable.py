"""`lepton produce` against a broker that is not there: exit 69 with a line that names the
address, and the client's connection errors, repeated on every reconnect, logged once each in
the process's log format (no raw librdkafka lines on stderr)."""

from __future__ import annotations

import socket

from tests.helpers import lepton


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # closed again: connections to it are refused


def test_produce_to_an_unreachable_broker_fails_clearly_and_logs_each_error_once() -> None:
    address = f"127.0.0.1:{_closed_port()}"
    result = lepton("produce", "--count", "3", "--quiet", "--timeout", "4",
                    env={"LEPTON_KAFKA_BOOTSTRAP": address, "LEPTON_BOOTSTRAP_FILE": ""},
                    check=False, timeout=60)
    assert result.returncode == 69, result.stderr[-2000:]
    err = result.stderr
    assert (f"error: 3 events failed: 3 not delivered within 4 s (is the broker at {address} "
            "reachable?)") in err
    assert "%3|" not in err  # librdkafka's own lines go through logging
    lines = err.splitlines()
    # in 4 s the client reconnects several times; each kind of error is logged once
    assert sum("_TRANSPORT" in line for line in lines) == 1, err
    assert sum("_ALL_BROKERS_DOWN" in line for line in lines) <= 1, err
    refused = [line for line in lines if '"logger": "librdkafka"' in line and "FAIL" in line]
    assert len(refused) == 1, err
