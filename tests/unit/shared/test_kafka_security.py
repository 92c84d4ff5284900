"""Every LEPTON_KAFKA_* connection setting reaches the config of every client factory:
confluent-kafka producers, consumers and other clients, aiokafka producers and consumers, and
faust; the SASL password never appears in a repr or a log line."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import ssl
from pathlib import Path

import faust
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shared.config import ConfigError, LeptonSettings
from shared.kafka import (
    aiokafka_consumer_settings,
    aiokafka_producer_settings,
    client_config,
    consumer_config,
    faust_settings,
    make_producer,
    producer_config,
)

PASSWORD = "s3cret-never-logged"


@pytest.fixture
def pem(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate and its key, usable as CA and as client identity."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lepton-test")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "client.pem", tmp_path / "client.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture
def secured(pem: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> LeptonSettings:
    cert, key = pem
    env = {
        "LEPTON_KAFKA_BOOTSTRAP": "broker-1:9093,broker-2:9093",
        "LEPTON_KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
        "LEPTON_KAFKA_SASL_MECHANISM": "scram-sha-512",
        "LEPTON_KAFKA_SASL_USERNAME": "lepton-ingest",
        "LEPTON_KAFKA_SASL_PASSWORD": PASSWORD,
        "LEPTON_KAFKA_SSL_CA_LOCATION": str(cert),
        "LEPTON_KAFKA_SSL_CERT_LOCATION": str(cert),
        "LEPTON_KAFKA_SSL_KEY_LOCATION": str(key),
        "LEPTON_KAFKA_EXTRA": '{"client.id": "lepton-x", "socket.keepalive.enable": true}',
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return LeptonSettings()


def test_every_setting_reaches_every_librdkafka_config(
    secured: LeptonSettings, pem: tuple[Path, Path]
) -> None:
    cert, key = pem
    expected = {
        "bootstrap.servers": "broker-1:9093,broker-2:9093",
        "security.protocol": "sasl_ssl",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "lepton-ingest",
        "sasl.password": PASSWORD,
        "ssl.ca.location": str(cert),
        "ssl.certificate.location": str(cert),
        "ssl.key.location": str(key),
        "client.id": "lepton-x",
        "socket.keepalive.enable": True,
    }
    configs = {
        "producer": producer_config(secured),
        "transactional producer": producer_config(secured, transactional_id="t"),
        "consumer": consumer_config(secured, "g"),
        "client": client_config(secured),
    }
    for name, config in configs.items():
        assert {k: config.get(k) for k in expected} == expected, name
    # the factories' own defaults survive (security does not replace reliability)
    assert configs["producer"]["acks"] == "all"
    assert configs["consumer"]["isolation.level"] == "read_committed"


def test_every_setting_reaches_aiokafka_and_faust(secured: LeptonSettings,
                                                  pem: tuple[Path, Path]) -> None:
    for kwargs in (aiokafka_producer_settings(secured),
                   aiokafka_consumer_settings(secured, "g")):
        assert kwargs["bootstrap_servers"] == "broker-1:9093,broker-2:9093"
        assert kwargs["security_protocol"] == "SASL_SSL"
        assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
        assert kwargs["sasl_plain_username"] == "lepton-ingest"
        assert kwargs["sasl_plain_password"] == PASSWORD
        assert kwargs["client_id"] == "lepton-x"  # LEPTON_KAFKA_EXTRA, renamed
        context = kwargs["ssl_context"]
        assert isinstance(context, ssl.SSLContext)
        assert context.verify_mode == ssl.CERT_REQUIRED
        assert [c["subject"] for c in context.get_ca_certs()] == [
            ((("commonName", "lepton-test"),),)]
    # the kwargs are accepted by the real client classes
    async def build() -> None:
        producer = AIOKafkaProducer(**aiokafka_producer_settings(secured))
        consumer = AIOKafkaConsumer(**aiokafka_consumer_settings(secured, "g"))
        assert producer.client._security_protocol == "SASL_SSL"
        assert consumer._client._sasl_plain_password == PASSWORD

    asyncio.run(build())
    credentials = faust_settings(secured, "app")["broker_credentials"]
    assert isinstance(credentials, faust.SASLCredentials)
    assert (credentials.username, credentials.password) == ("lepton-ingest", PASSWORD)
    assert str(credentials.mechanism.value) == "SCRAM-SHA-512"
    assert isinstance(credentials.ssl_context, ssl.SSLContext)


def test_plaintext_defaults_add_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = LeptonSettings(kafka_bootstrap="k:9092")
    config = producer_config(settings)
    assert config["security.protocol"] == "plaintext"
    assert not {k for k in config if k.startswith(("sasl.", "ssl."))}
    assert "broker_credentials" not in faust_settings(settings, "app")
    assert "ssl_context" not in aiokafka_producer_settings(settings)


def test_password_is_never_shown(secured: LeptonSettings, caplog: pytest.LogCaptureFixture
                                 ) -> None:
    assert PASSWORD not in repr(secured) and PASSWORD not in str(secured.model_dump())
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("test").info("settings %s", secured)
    assert PASSWORD not in caplog.text


def test_invalid_settings_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEPTON_KAFKA_SECURITY_PROTOCOL", "TLS")
    with pytest.raises(ValueError, match="must be one of PLAINTEXT, SSL"):
        LeptonSettings()
    monkeypatch.setenv("LEPTON_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    settings = LeptonSettings(kafka_bootstrap="k:9092", kafka_sasl_mechanism="PLAIN")
    with pytest.raises(ConfigError, match="LEPTON_KAFKA_SASL_USERNAME, LEPTON_KAFKA_SASL_PASS"):
        make_producer(settings)
    settings = LeptonSettings(kafka_bootstrap="k:9092", kafka_extra={"no.such.property": 1})
    with pytest.raises(ConfigError, match="LEPTON_KAFKA_EXTRA"):
        make_producer(settings)
