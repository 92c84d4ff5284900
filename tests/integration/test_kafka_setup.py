"""Kafka connection settings and topics against the real embedded broker: a SASL_SSL setting
fails fast naming the setting (no hang), auto-create off fails fast naming the missing topic,
`lepton broker --host/--port` binds a known address, and `lepton topics` says what the
embedded broker cannot do."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import SecretStr

from shared.config import ConfigError, LeptonSettings
from shared.kafka import TopicMissing, ensure_topics, make_producer
from shared.lifecycle import parent_death
from shared.topics import Topics
from tests.helpers import lepton, read_topic

SERVICES = ("ingest", "governance", "trainer", "serving")


def _service(name: str, env: dict[str, str], timeout: float = 60
             ) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", f"services.{name}"], capture_output=True,
                            text=True, timeout=timeout, env={**os.environ, **env},
                            preexec_fn=parent_death())
    return result, time.monotonic() - started


def test_sasl_ssl_against_a_plaintext_broker_fails_fast_naming_the_setting(
    lepton_env: LeptonSettings,
) -> None:
    settings = lepton_env.model_copy(update={
        "kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "PLAIN",
        "kafka_sasl_username": "u", "kafka_sasl_password": SecretStr("pw-secret")})
    started = time.monotonic()
    with pytest.raises(ConfigError, match="LEPTON_KAFKA_SECURITY_PROTOCOL=SASL_SSL") as error:
        ensure_topics(settings, [Topics(settings.topic_prefix).raw])
    assert time.monotonic() - started < 10
    assert "SSL handshake" in str(error.value) or "SSL" in str(error.value)
    assert "pw-secret" not in str(error.value)


@pytest.mark.parametrize("service", SERVICES)
def test_every_service_exits_with_the_setting_named_not_a_hang(
    lepton_env: LeptonSettings, service: str
) -> None:
    result, seconds = _service(service, {
        "LEPTON_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "LEPTON_KAFKA_SASL_MECHANISM": "PLAIN",
        "LEPTON_KAFKA_SASL_USERNAME": "u", "LEPTON_KAFKA_SASL_PASSWORD": "hunter2-secret"})
    assert result.returncode == 78, result.stderr[-2000:]
    assert "LEPTON_KAFKA_SECURITY_PROTOCOL=SASL_SSL" in result.stderr
    assert "hunter2-secret" not in result.stderr + result.stdout
    assert seconds < 30


def test_missing_topic_with_auto_create_off_fails_fast(lepton_env: LeptonSettings) -> None:
    off = lepton_env.model_copy(update={"kafka_auto_create": False})
    topics = Topics(off.topic_prefix)
    assert ensure_topics(off, [topics.raw]) == {topics.raw: 4}  # created by the fixture
    missing = f"{off.topic_prefix}never-created"
    with pytest.raises(TopicMissing, match=f"topic {missing} does not exist and "
                                           "LEPTON_KAFKA_AUTO_CREATE=false"):
        ensure_topics(off, [missing])
    # and it was not created as a side effect of asking
    with pytest.raises(TopicMissing):
        ensure_topics(off, [missing])


@pytest.mark.parametrize("service", SERVICES)
def test_services_fail_fast_on_a_missing_topic(lepton_env: LeptonSettings, service: str) -> None:
    prefix = f"{lepton_env.topic_prefix}fresh."
    result, seconds = _service(service, {"LEPTON_KAFKA_AUTO_CREATE": "false",
                                         "LEPTON_TOPIC_PREFIX": prefix})
    assert result.returncode == 78, result.stderr[-2000:]
    assert "LEPTON_KAFKA_AUTO_CREATE=false" in result.stderr
    assert f"topic {prefix}" in result.stderr and "lepton topics create" in result.stderr
    assert seconds < 30


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_broker_on_a_fixed_address_and_topics_commands(tmp_path: Path) -> None:
    port = _free_port()
    path = tmp_path / "bootstrap"
    proc = subprocess.Popen(
        [sys.executable, "-m", "lepton", "broker", "--host", "127.0.0.1", "--port", str(port),
         "--bootstrap-file", str(path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=parent_death(),
        env={**os.environ, "LEPTON_TOPIC_PREFIX": "fixed."})
    try:
        deadline = time.monotonic() + 30
        while not path.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        bootstrap = f"127.0.0.1:{port}"
        assert path.read_text().strip() == bootstrap
        env = {"LEPTON_KAFKA_BOOTSTRAP": bootstrap, "LEPTON_TOPIC_PREFIX": "fixed."}
        lepton("produce", "--count", "50", "--quiet", env=env)
        settings = LeptonSettings(kafka_bootstrap=bootstrap, topic_prefix="fixed.")
        assert len(read_topic(settings, "fixed.events.raw", expect=50)) == 50
        # the metadata advertises the fixed address, not the mock cluster's random port
        producer = make_producer(settings)
        brokers = producer.list_topics(timeout=10).brokers.values()
        assert [f"{b.host}:{b.port}" for b in brokers] == [bootstrap]

        dry = lepton("topics", "create", "--dry-run", "--partitions", "6", "--replication",
                     "3", env=env)
        assert "would create fixed.ingest.offsets: partitions=6 replication=3 " \
               "cleanup.policy=compact" in dry.stdout
        assert "would create fixed.audit.log: partitions=6 replication=3 " \
               "cleanup.policy=delete, retention.ms=-1" in dry.stdout
        # the real request (tests/unit/test_topics_cli.py inspects it) meets a broker without
        # CreateTopics: a clear refusal within the admin request timeout, not a hang
        created = lepton("topics", "create", env=env, check=False, timeout=60)
        assert created.returncode == 2
        assert "the embedded broker (`lepton broker`) cannot create" in created.stderr
        assert "use `lepton topics check`" in created.stderr
        checked = lepton("topics", "check", env=env, check=False)
        assert checked.returncode == 0, checked.stderr
        assert "ok fixed.governance.offsets: partitions=4 replicas=1" in checked.stdout
        assert "configs not verified" in checked.stderr
        missing = lepton("topics", "check", env={**env, "LEPTON_TOPIC_PREFIX": "absent."},
                         check=False)
        assert missing.returncode == 1
        assert "error: absent.events.raw: missing" in missing.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    assert not path.exists()
