"""setup_telemetry honours the standard OTEL_* variables (protocol, endpoint, sampler,
exporters off), histograms in seconds get sub-second buckets, and messaging spans carry the
current semantic-convention names and attributes. Each case runs in its own process, since the
global providers can be installed only once."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import orjson
import pytest

from shared.lifecycle import parent_death

ROOT = Path(__file__).resolve().parents[3]

SCRIPT = """
import sys, time, orjson
from shared.tracing import (SECONDS_BUCKETS, get_tracer, note_kafka_server, process_span,
                            publish_span, setup_telemetry, shutdown_telemetry)
from opentelemetry import metrics, trace
from prometheus_client import REGISTRY
provider = setup_telemetry("probe", metrics_port=int(sys.argv[1]))
note_kafka_server("kafka-1:9093,kafka-2:9093")
tracer = get_tracer("probe")
headers = []
with publish_span(tracer, "lepton.events.raw", headers, key="k") as sent:
    pass
with process_span(tracer, "lepton.events.raw", headers, partition=2, offset=7) as got:
    pass
meter = metrics.get_meter("probe")
meter.create_histogram("lepton.probe.duration", unit="s").record(0.003)
buckets = {s.labels["le"]: s.value for m in REGISTRY.collect() for s in m.samples
           if s.name == "lepton_probe_duration_seconds_bucket"}
out = {"sampled": sent.get_span_context().trace_flags.sampled,
       "names": [getattr(sent, "name", None), getattr(got, "name", None)],
       "send": dict(getattr(sent, "attributes", {})),
       "process": dict(getattr(got, "attributes", {})),
       "buckets": buckets, "processors": len(provider._active_span_processor._span_processors)}
shutdown_telemetry()
print(orjson.dumps(out).decode())
"""


class _Collector(http.server.BaseHTTPRequestHandler):
    paths: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        _Collector.paths.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def http_collector() -> Iterator[str]:
    """A real HTTP server standing in for an OTLP/HTTP collector; records the paths posted."""
    _Collector.paths = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _probe(env: dict[str, str]) -> dict[str, object]:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(port)], cwd=ROOT,
                            env={**clean, **env}, capture_output=True, text=True, timeout=60,
                            preexec_fn=parent_death())
    assert result.returncode == 0, result.stderr[-3000:]
    data: dict[str, object] = orjson.loads(result.stdout.splitlines()[-1])
    return data


def test_span_names_attributes_and_buckets() -> None:
    out = _probe({})
    assert out["names"] == ["send lepton.events.raw", "process lepton.events.raw"]
    send, process = out["send"], out["process"]
    assert isinstance(send, dict) and isinstance(process, dict)
    for attrs, operation in ((send, "send"), (process, "process")):
        assert attrs["messaging.system"] == "kafka"
        assert attrs["messaging.operation.type"] == operation
        assert attrs["messaging.destination.name"] == "lepton.events.raw"
        assert (attrs["server.address"], attrs["server.port"]) == ("kafka-1", 9093)
    assert process["messaging.destination.partition.id"] == "2"
    buckets = out["buckets"]
    assert isinstance(buckets, dict)
    # 3 ms lands in the 5 ms bucket, not in a first bucket of 5 s
    assert (buckets["0.001"], buckets["0.0025"], buckets["0.005"]) == (0.0, 0.0, 1.0)
    assert out["processors"] == 0  # no endpoint: no exporter


def test_sampler_variables_are_honoured() -> None:
    assert _probe({})["sampled"] is True  # the SDK default, parentbased_always_on
    assert _probe({"OTEL_TRACES_SAMPLER": "always_off"})["sampled"] is False
    # the ratio itself is read: 0.0 drops a root span that the default ratio (1.0) would keep
    assert _probe({"OTEL_TRACES_SAMPLER": "traceidratio",
                   "OTEL_TRACES_SAMPLER_ARG": "0.0"})["sampled"] is False
    assert _probe({"OTEL_TRACES_SAMPLER": "traceidratio",
                   "OTEL_TRACES_SAMPLER_ARG": "1.0"})["sampled"] is True


def test_http_protobuf_protocol_posts_traces_and_metrics(http_collector: str) -> None:
    out = _probe({"OTEL_EXPORTER_OTLP_ENDPOINT": http_collector,
                  "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"})
    assert out["processors"] == 1
    assert set(_Collector.paths) == {"/v1/traces", "/v1/metrics"}


def test_exporters_can_be_turned_off(http_collector: str) -> None:
    out = _probe({"OTEL_EXPORTER_OTLP_ENDPOINT": http_collector,
                  "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                  "OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none"})
    assert out["processors"] == 0
    assert _Collector.paths == []
