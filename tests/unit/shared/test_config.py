"""Settings fail fast with one readable line naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.config import ConfigError, LeptonSettings, load_settings
from shared.lifecycle import parent_death
from shared.topics import Topic, Topics


def test_invalid_value_exits_with_the_variable_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LEPTON_REDIS_URL", "http://nope")
    with pytest.raises(SystemExit) as info:
        load_settings(LeptonSettings)
    assert info.value.code == 78
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "LEPTON_REDIS_URL" in err
    assert "redis://" in err


def test_cli_reports_bad_setting_in_one_line() -> None:
    env = {**os.environ, "LEPTON_TOPIC_PREFIX": "bad prefix!"}
    result = subprocess.run(
        [sys.executable, "-m", "lepton", "produce", "--count", "1"],
        env=env, capture_output=True, text=True, timeout=60,
        preexec_fn=parent_death(),
    )
    assert result.returncode == 78
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [lines[0]]
    assert "LEPTON_TOPIC_PREFIX" in lines[0]


def test_missing_bootstrap_names_the_variable(tmp_path: Path) -> None:
    settings = LeptonSettings(data_dir=tmp_path)
    with pytest.raises(ConfigError, match="LEPTON_KAFKA_BOOTSTRAP"):
        settings.bootstrap_servers()
    (tmp_path / "broker.bootstrap").write_text("127.0.0.1:1234\n")
    assert settings.bootstrap_servers() == "127.0.0.1:1234"


def test_settings_are_frozen() -> None:
    settings = LeptonSettings()
    with pytest.raises(ValueError, match="frozen"):
        settings.topic_prefix = "x."  # type: ignore[misc]


def test_topic_registry_applies_prefix_to_every_topic() -> None:
    topics = Topics("acme.")
    assert topics.raw == "acme.events.raw"
    assert topics.audit_log == "acme.audit.log"
    assert len(set(topics.all())) == len(Topic)
    assert all(name.startswith("acme.") for name in topics.all())
