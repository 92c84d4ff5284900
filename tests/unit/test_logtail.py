"""`lepton up` names why a service failed from the end of its log, when it could not start
and when it exits later."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import orjson

from lepton.children import Platform, newly_exited
from lepton.logtail import last_error
from lepton.up import _no_password


def test_the_last_error_records_exception_is_the_reason(tmp_path: Path) -> None:
    log = tmp_path / "serving.log"
    records = [{"level": "ERROR", "message": "an earlier error"},
               {"level": "ERROR", "message": "serving failed",
                "exc_info": "Traceback (most recent call last):\n  File ...\n"
                            "OSError: cannot listen on 0.0.0.0:8080 for HTTP"},
               {"level": "INFO", "message": "stopped"}]
    log.write_bytes(b"\n".join(orjson.dumps(r) for r in records) + b"\n")
    assert last_error(log) == "OSError: cannot listen on 0.0.0.0:8080 for HTTP"


def test_an_error_without_a_traceback_gives_its_message(tmp_path: Path) -> None:
    log = tmp_path / "ingest.log"
    log.write_bytes(orjson.dumps({"level": "CRITICAL", "message": "keyring unreadable"}) + b"\n")
    assert last_error(log) == "keyring unreadable"


def test_a_plain_log_gives_its_last_line_and_a_missing_one_nothing(tmp_path: Path) -> None:
    log = tmp_path / "broker.log"
    log.write_text("starting\nModuleNotFoundError: No module named 'x'\n\n")
    assert last_error(log) == "ModuleNotFoundError: No module named 'x'"
    assert last_error(tmp_path / "absent.log") is None
    quiet = tmp_path / "trainer.log"
    quiet.write_bytes(orjson.dumps({"level": "INFO", "message": "stopping"}) + b"\n")
    assert last_error(quiet) is None  # no reason better than the log itself


def test_a_redis_url_in_a_message_hides_its_password() -> None:
    assert _no_password("redis://:s3cret@cache:6379/0") == "redis://:***@cache:6379/0"
    assert _no_password("redis://app:s3cret@cache:6379/0") == "redis://app:***@cache:6379/0"
    assert _no_password("redis://cache:6379/0") == "redis://cache:6379/0"


def test_a_service_that_exits_after_start_is_reported_once_with_its_reason(
        tmp_path: Path) -> None:
    platform = Platform(data_dir=tmp_path)
    platform.spawn("monitor", [sys.executable, "-c",
                               "import sys; print('RuntimeError: window store gone'); sys.exit(3)"])
    platform.spawn("trainer", [sys.executable, "-c", "import time; time.sleep(60)"])
    reported: set[str] = set()
    try:
        deadline = time.monotonic() + 30
        while platform.children[0].proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert newly_exited(platform, reported) == [
            f"monitor exited with 3: RuntimeError: window store gone; see "
            f"{tmp_path / 'logs' / 'monitor.log'}"]
        assert newly_exited(platform, reported) == []  # said once; the trainer still runs
        platform.children[1].proc.kill()
        platform.children[1].proc.wait(10)
        assert newly_exited(platform, reported) == [
            f"trainer was killed by SIGKILL; see {tmp_path / 'logs' / 'trainer.log'}"]
    finally:
        platform.stop(timeout=5)
