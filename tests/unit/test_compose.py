"""docker-compose.yml and the deploy/ configs match the code: parsed and cross-checked without
a Docker engine (scripts/compose-smoke.sh runs the stack where one exists); the alert rules and
the dashboard: test_compose_metrics.py; the Kafka ACL example: test_compose_acls.py."""

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
SERVICES = ("ingest", "governance", "trainer", "serving", "monitor")


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
        assert {"kafka", "redis", "topics"} <= set(service["depends_on"])
        assert service["depends_on"]["topics"] == {"condition": "service_completed_successfully"}
        # healthchecks ask the live process (no ready file on a volume can outlive it)
        probe = service["healthcheck"]["test"]
        assert probe[:3] == ["CMD", "lepton", "probe"] and "probe" in commands
        if name == "serving":
            port = env["LEPTON_SERVING_ADDR"].rsplit(":", 1)[1]
            assert probe[3:] == ["grpc", f"127.0.0.1:{port}"]
        else:
            # the metrics endpoint and the main loop's heartbeat (a hung loop reads unhealthy),
            # which may pause while the input positions are read on an assignment (70 s)
            assert probe[3:6] == ["http", f"http://127.0.0.1:{env['LEPTON_METRICS_PORT']}/metrics",
                                  "--stale-after"]
            assert 70 < float(probe[6]) <= 900, probe
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
    # the GPU is opt-in: the default trainer reserves none, the gpu profile's trainer does
    assert "deploy" not in compose["trainer"]
    gpu = compose["trainer-gpu"]
    assert gpu["profiles"] == ["gpu"] and gpu["command"] == ["trainer"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert "cu" in gpu["build"]["args"]["TORCH_INDEX"].rsplit("/", 1)[-1]
    assert any(v.startswith("lepton-registry:") for v in compose["serving"]["volumes"])
    assert compose["serving"]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == \
        "http://otel-collector:4317"
    kafka = compose["kafka"]["environment"]
    assert kafka["KAFKA_LOG_DIRS"] == "/var/lib/kafka/data"
    assert "kafka-data:/var/lib/kafka/data" in compose["kafka"]["volumes"]
    assert "HOST://localhost:29092" in kafka["KAFKA_ADVERTISED_LISTENERS"]
    assert "29092:29092" in compose["kafka"]["ports"]
    assert kafka["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


# every secret, who may hold it, and the setting that names its file
SECRET_HOLDERS: dict[str, tuple[set[str], str | None]] = {
    **{f"{name}-principal": ({name}, "LEPTON_PRINCIPAL_KEY_FILE")
       for name in (*SERVICES, "operator")},
    "governed-mac-key": ({"governance", "trainer"}, "LEPTON_GOVERNED_MAC_KEY_FILE"),
    "platform-key": ({"ingest", "governance", "operator"}, "LEPTON_TOKEN_KEY_FILE"),
    "model-signing-key": ({"trainer"}, "LEPTON_MODEL_SIGNING_KEY_FILE"),
    "audit-signing-key": ({"governance"}, "LEPTON_GOVERNANCE_AUDIT_KEY_FILE"),
    "dlq-key": ({"operator"}, "LEPTON_DLQ_KEY_FILE"),
    "serving-predict-token": ({"serving"}, "LEPTON_SERVING_AUTH_TOKEN_FILE"),
    "serving-admin-token": ({"serving"}, "LEPTON_SERVING_ADMIN_TOKEN_FILE"),
}
HOLDERS = (*SERVICES, "operator")


def _holder(name: str) -> str:
    return "trainer" if name == "trainer-gpu" else name  # the same principal, built for CUDA


def test_each_secret_goes_only_to_the_services_that_use_it() -> None:
    compose = _compose()
    assert set(compose["secrets"]) == set(SECRET_HOLDERS)
    for secret, (allowed, variable) in SECRET_HOLDERS.items():
        holders = {_holder(n) for n, s in compose["services"].items()
                   if secret in s.get("secrets", [])}
        assert holders == allowed, secret
        for name in allowed:
            assert compose["services"][name]["environment"][variable] == \
                f"/run/secrets/{secret}", (name, secret)
    for name in HOLDERS:
        service = compose["services"][name]
        assert service["environment"]["LEPTON_PRINCIPALS_PUBLIC_DIR"] == "/principals"
        assert "./secrets/principals/public:/principals:ro" in service["volumes"]
    assert compose["services"]["operator"]["profiles"] == ["operator"]  # never started by `up`


def test_the_master_keyring_and_platform_key_stay_out_of_serving_and_the_trainer() -> None:
    compose = _compose()
    keyring = {n for n, s in compose["services"].items()
               if any(v.split(":")[0] == "lepton-keys" for v in s.get("volumes", []))}
    assert keyring == {"ingest", "operator"}  # master-keys.json and the wrapped data keys
    for name in ("serving", "trainer", "trainer-gpu", "governance"):
        service = compose["services"][name]
        assert not [v for v in service["volumes"] if "keys" in v.split(":")[0]], name
        assert not {"LEPTON_MASTER_KEYS", "LEPTON_TOKEN_KEY", "LEPTON_DLQ_KEY_FILE"} & set(
            service["environment"]), name
    for name in ("serving", "trainer", "trainer-gpu"):
        assert "platform-key" not in compose["services"][name]["secrets"], name


def test_the_key_set_command_makes_every_secret_file_and_public_key(tmp_path: Path) -> None:
    from lepton.keyset import make_key_set

    compose = _compose()
    make_key_set(tmp_path / "principals")
    for secret in compose["secrets"].values():
        path = Path(secret["file"].replace("./secrets", str(tmp_path)))
        if "principals" in secret["file"]:
            assert path.is_file() and path.stat().st_mode & 0o077 == 0, path
    public = {p.name for p in (tmp_path / "principals/public").iterdir()}
    # every principal's, the federation coordinator's too (it runs outside this compose file)
    assert public == {*(f"{n}.pub" for n in (*HOLDERS, "federation")), "model-signing.pub",
                      "audit-signing.pub", "dlq.pub"}
    assert not [p for p in public if not p.endswith(".pub")]


def test_compose_v1_compatible_pinned_images_and_one_shot_topics() -> None:
    compose = _compose()
    assert "name" not in compose  # docker-compose 1.29 rejects a top-level name
    for name, service in compose["services"].items():
        image = service.get("image", "")
        assert image and ":" in image and not image.endswith(":latest"), name
    topics = compose["services"]["topics"]
    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    assert topics["command"][:2] == ["topics", "create"] and "topics" in commands
    assert topics["restart"] == "no"
    # the one-shot reaches Kafka exactly as the services do (SASL/SSL settings included)
    for name in SERVICES:
        kafka = {k: v for k, v in compose["services"][name]["environment"].items()
                 if k.startswith("LEPTON_KAFKA_") or k == "LEPTON_TOPIC_PREFIX"}
        assert kafka.items() <= topics["environment"].items(), name


def test_image_build_is_layered_and_owns_its_volumes() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=python:3.11-slim" in dockerfile
    assert "FROM ${BASE_IMAGE}" in dockerfile
    assert "--index-url \"$TORCH_INDEX\"" in dockerfile and "--extra-index-url" not in dockerfile
    # dependencies are installed before any source is copied
    assert dockerfile.index("pip install -r /tmp/deps.txt") < dockerfile.index("COPY shared")
    assert "chown 10001:10001 /data /keys /registry" in dockerfile
    assert "RUN --mount" not in dockerfile  # the legacy builder (no BuildKit) must build it
    ignored = [line for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line and not line.startswith("#")]
    assert ignored[0] == "**"  # everything is excluded unless re-included
    included = [line[1:] for line in ignored if line.startswith("!")]
    assert not [p for p in included if p.startswith((".lepton", ".venv", "secrets"))]
    assert {"**/.lepton", "**/*.key", "**/*.pem"} <= set(ignored)


def test_collector_sends_traces_to_jaeger_and_metrics_to_prometheus() -> None:
    compose = _compose()["services"]
    collector = yaml.safe_load((ROOT / "deploy/otel-collector.yaml").read_text())
    assert "./deploy/otel-collector.yaml:/etc/otelcol/config.yaml:ro" in \
        compose["otel-collector"]["volumes"]
    grpc_endpoint = collector["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    assert grpc_endpoint.endswith(":4317")
    pipelines = collector["service"]["pipelines"]
    assert pipelines["traces"]["receivers"] == ["otlp"]
    assert pipelines["traces"]["exporters"] == ["otlp/jaeger"]
    assert collector["exporters"]["otlp/jaeger"]["endpoint"] == "jaeger:4317"
    assert pipelines["metrics"]["exporters"] == ["prometheus"]
    port = collector["exporters"]["prometheus"]["endpoint"].rsplit(":", 1)[1]
    prometheus = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = [t for job in prometheus["scrape_configs"]
               for c in job["static_configs"] for t in c["targets"]]
    assert f"otel-collector:{port}" in targets
    assert prometheus["rule_files"] == ["/etc/prometheus/alerts.yml"]
    assert "./deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in \
        compose["prometheus"]["volumes"]


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
