"""Derive the smoke test's compose file from docker-compose.yml, swapping only what cannot be
had without a registry: Kafka becomes `lepton broker` on kafka:9092 (the project image),
Redis the locally built Debian redis-server, the OpenTelemetry Collector an OTLP receiver
(scripts/smoke/otlp_sink.py in the project image); Jaeger, Prometheus, Grafana and the GPU
trainer are left out. Everything else (healthchecks, secrets, volumes, depends_on) is kept.
Relative paths become absolute. Usage: derive.py REPO OUT.yml SECRETS_DIR"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

IMAGE = "lepton-stream:0.1.0"
DROPPED = ("jaeger", "prometheus", "grafana", "trainer-gpu")


def _absolute(volume: str, repo: Path) -> str:
    return str(repo / volume[2:]) if volume.startswith("./") else volume


def derive(repo: Path, secrets: Path) -> dict[str, Any]:
    """The smoke compose document."""
    compose: dict[str, Any] = yaml.safe_load((repo / "docker-compose.yml").read_text())
    services = compose["services"]
    for name in DROPPED:
        services.pop(name)
    services["kafka"] = {
        "image": IMAGE, "entrypoint": ["lepton"],
        "command": ["broker", "--host", "0.0.0.0", "--port", "9092", "--advertise", "kafka"],
        "environment": {"LEPTON_TOPIC_PREFIX": "lepton.", "LEPTON_DATA_DIR": "/tmp"},
        "healthcheck": {"test": ["CMD", "python", "-c",
                                 "import socket; socket.create_connection(('127.0.0.1', 9092), 2)"],
                        "interval": "2s", "retries": 30},
    }
    # the embedded broker has no CreateTopics: the one-shot step verifies instead of creating
    services["topics"]["command"] = ["topics", "check"]
    # Debian's redis-server enables protected mode (the official image's entrypoint turns it
    # off; the network is private to the stack)
    services["redis"]["image"] = "local/redis:7"
    services["redis"]["command"] = [*services["redis"]["command"], "--protected-mode", "no"]
    services["otel-collector"] = {
        "image": IMAGE, "entrypoint": ["python", "/smoke/otlp_sink.py"],
        "volumes": [f"{repo / 'scripts/smoke'}:/smoke:ro"],
    }
    for name, service in services.items():
        service.pop("build", None)
        if "volumes" in service:
            service["volumes"] = [_absolute(v, repo) for v in service["volumes"]]
        if name in ("ingest", "governance", "trainer", "serving", "monitor", "operator"):
            service["volumes"] = [v.replace(str(repo / "secrets"), str(secrets))
                                  for v in service["volumes"]]
    # metrics every 2 s (the SDK default is 60 s): the check reads them a minute after start
    for name in ("ingest", "governance", "trainer", "serving", "monitor"):
        services[name]["environment"]["OTEL_METRIC_EXPORT_INTERVAL"] = "2000"
    # a quick demo cycle: 2k events leave too few held-out frauds per age band for a
    # meaningful fairness bound (the trainer's own tests exercise the gate)
    services["trainer"]["environment"].update({
        "LEPTON_TRAINER_CYCLE_S": "6", "LEPTON_TRAINER_MAX_DP_DIFF": "1.0",
        "LEPTON_TRAINER_MAX_EO_DIFF": "1.0"})
    compose["secrets"] = {k: {"file": str(secrets / v["file"].removeprefix("./secrets/"))}
                          for k, v in compose["secrets"].items()}
    return {k: v for k, v in compose.items() if not k.startswith("x-")}


def main() -> None:
    """Write the derived file."""
    repo, out, secrets = Path(sys.argv[1]).resolve(), Path(sys.argv[2]), Path(sys.argv[3])
    out.write_text(yaml.safe_dump(derive(repo, secrets.resolve()), sort_keys=False))


if __name__ == "__main__":
    main()
