"""docker-compose.yml and the deploy/ configs match the code: parsed and cross-checked without
a Docker engine (scripts/compose-smoke.sh runs the stack where one exists)."""

from __future__ import annotations

import functools
import importlib
import json
import re
import shutil
import subprocess
import sys
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
        assert {"kafka", "redis", "topics"} <= set(service["depends_on"])
        assert service["depends_on"]["topics"] == {"condition": "service_completed_successfully"}
        # healthchecks ask the live process (no ready file on a volume can outlive it)
        probe = service["healthcheck"]["test"]
        assert probe[:3] == ["CMD", "lepton", "probe"] and "probe" in commands
        if name == "serving":
            port = env["LEPTON_SERVING_ADDR"].rsplit(":", 1)[1]
            assert probe[3:] == ["grpc", f"127.0.0.1:{port}"]
        else:
            assert probe[3:] == ["http", f"http://127.0.0.1:{env['LEPTON_METRICS_PORT']}/metrics"]
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


def test_each_service_gets_only_its_own_principal_key_and_the_public_keys_read_only() -> None:
    compose = _compose()
    secrets = compose["secrets"]
    extra = {"governance": ["governed-mac-key"], "trainer": ["governed-mac-key"],
             "serving": ["serving-predict-token", "serving-admin-token"]}
    for name in SERVICES:
        service = compose["services"][name]
        assert service["secrets"] == [f"{name}-principal", *extra.get(name, [])], name
        assert secrets[f"{name}-principal"]["file"] == f"./secrets/principals/{name}.key"
        env = service["environment"]
        assert env["LEPTON_PRINCIPAL_KEY_FILE"] == f"/run/secrets/{name}-principal"
        assert env["LEPTON_PRINCIPALS_PUBLIC_DIR"] == "/principals"
        assert "./secrets/principals/public:/principals:ro" in service["volumes"]
    assert "operator-principal" not in secrets


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


def test_alert_rules_are_valid_and_cover_the_operational_signals() -> None:
    path = ROOT / "deploy/prometheus/alerts.yml"
    promtool = shutil.which("promtool")
    if promtool:
        result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                                text=True, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
    rules = yaml.safe_load(path.read_text())
    seen = set()
    for group in rules["groups"]:
        assert set(group) <= {"name", "rules", "interval"} and group["rules"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
            assert rule["alert"] and rule["expr"].strip()
            assert rule["labels"]["severity"] in ("warning", "critical")
            assert rule["annotations"]["summary"]
            assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]
            seen |= _metric_names(rule["expr"])
    assert _exported_metrics() >= seen, seen - _exported_metrics()
    for needed in ("lepton_ingest_consumer_lag", "lepton_ingest_events_rejected_total",
                   "lepton_ingest_quality_index", "lepton_ingest_quality_min_index",
                   "lepton_governance_budget_remaining", "lepton_serving_models_refused_total",
                   "lepton_serving_request_duration_seconds_bucket",
                   "lepton_serving_request_duration_seconds_count"):
        assert needed in seen, needed


def test_grafana_dashboard_queries_metrics_that_exist() -> None:
    provisioning = ROOT / "deploy/grafana/provisioning"
    datasource = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((provisioning / "dashboards/lepton.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/lepton.json").read_text())
    names: set[str] = set()
    titles = []
    for panel in dashboard["panels"]:
        titles.append(panel["title"])
        assert panel["datasource"]["uid"] == uid
        for target in panel["targets"]:
            found = _metric_names(target["expr"])
            assert found, target["expr"]
            names |= found
    assert _exported_metrics() >= names, names - _exported_metrics()
    for topic in ("Stages", "lag", "Dead letters", "Privacy budget", "Models", "Serving latency"):
        assert any(topic in title for title in titles), topic


def _metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\blepton_[a-z0-9_]+", expr))


EXPORT_PROBE = """
import json, socket
from prometheus_client import REGISTRY
from shared.tracing import setup_telemetry
sock = socket.socket(); sock.bind(("127.0.0.1", 0)); port = sock.getsockname()[1]; sock.close()
setup_telemetry("probe", metrics_port=port)
from opentelemetry.metrics import Counter, Histogram
from services.ingest.telemetry import IngestMetrics
from services.governance.telemetry import GovernanceMetrics
from services.trainer.telemetry import TrainerMetrics
import services.serving.predictor, services.serving.control, services.serving.prediction_log
import services.serving.request_metrics
from shared.stage.metrics import StageMetrics
stages = [StageMetrics(name) for name in ("ingest", "governance", "serving")]
for stage in stages:
    stage.lag[("topic", 0)] = 1
objects = [IngestMetrics(), GovernanceMetrics(), TrainerMetrics(), *stages]
objects[1].set_budget("d", 1.0, 2.0)
objects[0].latest = {"d": {"quality_index": 0.99, "sum_error_rate": 0.16, "min_index": 0.95}}
for module in (services.serving.predictor, services.serving.control,
               services.serving.prediction_log, services.serving.request_metrics):
    objects.append(module)
for obj in objects:
    for value in vars(obj).values():
        if isinstance(value, Counter):
            value.add(1)
        elif isinstance(value, Histogram):
            value.record(0.01)
names = {s.name for m in REGISTRY.collect() for s in m.samples if s.name.startswith("lepton_")}
print(json.dumps(sorted(names)))
"""


@functools.cache
def _exported_metrics() -> set[str]:
    """Every Prometheus sample name the services' instruments produce (from the real SDK)."""
    result = subprocess.run([sys.executable, "-c", EXPORT_PROBE], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    names: set[str] = set(json.loads(result.stdout.splitlines()[-1]))
    return names


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
