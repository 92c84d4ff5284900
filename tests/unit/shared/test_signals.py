"""shared.signals: a stop signal is seen at once even while the main thread is blocked in a
librdkafka call, a process that cannot finish exits with status 1 after its grace period, and
a second signal exits at once."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import pytest

from shared.lifecycle import parent_death

BLOCKED = textwrap.dedent("""
    import sys, time
    from confluent_kafka import Producer
    from shared.signals import stop_event
    stop = stop_event(grace_s={grace})
    producer = Producer({{"bootstrap.servers": "127.0.0.1:1", "message.timeout.ms": 120000,
                         "log_level": 0}})
    producer.produce("t", b"x")
    print("ready", flush=True)
    producer.flush(120)  # blocked in librdkafka: nothing can be delivered
    print("flush returned", flush=True)
""")

COOPERATIVE = textwrap.dedent("""
    import sys
    from shared.signals import stop_event
    stop = stop_event(grace_s=5.0)
    print("ready", flush=True)
    stop.wait()
    print("stopping cleanly", flush=True)
    sys.exit(0)
""")


def _start(code: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=parent_death())
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_cooperative_loop_stops_cleanly(sig: signal.Signals) -> None:
    proc = _start(COOPERATIVE)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=5)
    assert proc.returncode == 0
    assert "stopping cleanly" in out


def test_blocked_main_thread_exits_after_grace_with_status_1() -> None:
    proc = _start(BLOCKED.format(grace=1.5))
    began = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=10)
    took = time.monotonic() - began
    assert proc.returncode == 1, err
    assert 1.4 <= took < 5.0, took
    assert "flush returned" not in out
    assert "exiting without finishing" in err


def test_second_signal_exits_at_once() -> None:
    proc = _start(BLOCKED.format(grace=60))
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    began = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 128 + signal.SIGINT
    assert time.monotonic() - began < 2.0
    assert "second signal SIGINT" in err
