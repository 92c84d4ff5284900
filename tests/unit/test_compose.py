"""docker-compose.yml matches the code: no Docker engine here, so parse and cross-check it."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import typer.main
import yaml
from pydantic_settings import BaseSettings

from lepton.cli import app
from shared.config import LeptonSettings

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("ingest", "governance", "trainer", "serving")


def _compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def _known_env_vars() -> set[str]:
    classes: list[type[BaseSettings]] = [LeptonSettings]
    for name in SERVICES:
        module = importlib.import_module(f"services.{name}.config")
        classes += [
            obj for obj in vars(module).values()
            if isinstance(obj, type) and issubclass(obj, BaseSettings)
        ]
    names = set()
    for cls in classes:
        prefix = str(cls.model_config.get("env_prefix", ""))
        names |= {f"{prefix}{field}".upper() for field in cls.model_fields}
    return names


def test_every_service_runs_a_real_lepton_command_with_known_settings() -> None:
    compose = _compose()["services"]
    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    known = _known_env_vars()
    for name in SERVICES:
        service = compose[name]
        command = service["command"]
        assert command[0] == name and command[0] in commands, name
        env = service["environment"]
        unknown = {k for k in env if k.startswith("LEPTON_") and k not in known}
        assert not unknown, f"{name}: {unknown} match no settings field"
        assert {"kafka", "redis"} <= set(service["depends_on"])
        assert service["healthcheck"]["test"][-1] == f"/data/run/{name}.ready"
        assert f"{name}-data:/data" in service["volumes"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["lepton"]' in dockerfile


def test_infrastructure_is_production_shaped() -> None:
    compose = _compose()["services"]
    assert compose["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "--appendonly" in compose["redis"]["command"]
    assert compose["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"
    for name in ("kafka", "redis"):
        assert "healthcheck" in compose[name]
    devices = compose["trainer"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert any(v.startswith("lepton-registry:") for v in compose["serving"]["volumes"])
    assert compose["serving"]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"].endswith(":4317")


def test_each_service_gets_only_its_own_principal_key_and_the_public_keys_read_only() -> None:
    compose = _compose()
    secrets = compose["secrets"]
    for name in SERVICES:
        service = compose["services"][name]
        assert [x for x in service["secrets"] if x.endswith("-principal")] == [
            f"{name}-principal"], name
        assert secrets[f"{name}-principal"]["file"] == f"./secrets/principals/{name}.key"
        env = service["environment"]
        assert env["LEPTON_PRINCIPAL_KEY_FILE"] == f"/run/secrets/{name}-principal"
        assert env["LEPTON_PRINCIPALS_PUBLIC_DIR"] == "/principals"
        assert "./secrets/principals/public:/principals:ro" in service["volumes"]
    assert "operator-principal" not in secrets


def test_serving_gets_distinct_predict_and_admin_tokens_from_secrets() -> None:
    compose = _compose()
    serving = compose["services"]["serving"]
    assert {"serving-predict-token", "serving-admin-token"} <= set(serving["secrets"])
    env = serving["environment"]
    assert env["LEPTON_SERVING_AUTH_TOKEN_FILE"] == "/run/secrets/serving-predict-token"
    assert env["LEPTON_SERVING_ADMIN_TOKEN_FILE"] == "/run/secrets/serving-admin-token"
    files = {compose["secrets"][n]["file"] for n in ("serving-predict-token",
                                                       "serving-admin-token")}
    assert len(files) == 2
    assert "LEPTON_SERVING_AUTH" not in env
    for name in SERVICES:
        if name != "serving":
            assert not {"serving-predict-token", "serving-admin-token"} & set(
                compose["services"][name]["secrets"])


def test_only_governance_and_the_trainer_hold_the_governed_mac_key() -> None:
    compose = _compose()
    holders = {name for name in SERVICES
               if "governed-mac-key" in compose["services"][name]["secrets"]}
    assert holders == {"governance", "trainer"}
    for name in holders:
        env = compose["services"][name]["environment"]
        assert env["LEPTON_GOVERNED_MAC_KEY_FILE"] == "/run/secrets/governed-mac-key"
