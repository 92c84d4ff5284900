"""`lepton serving` as a real process and `lepton predict` as its client: readiness through
grpc.health.v1, a prediction printed as JSON with the model version, exit codes for bad input
and a wrong token, JSON logs at DEBUG whose lines inside a span carry the trace of the record
that caused them, and a clean exit on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shared.config import LeptonSettings
from shared.kafka import make_producer
from shared.lifecycle import parent_death
from shared.models.registry import Registry
from shared.topics import Topics
from tests.helpers import lepton
from tests.unit.serving.support import (
    ADMIN_TOKEN,
    MODEL,
    TOKEN,
    record,
    save_model,
    serving_settings,
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_serving(addr: str, proc: subprocess.Popen[bytes], log: Path,
                  timeout: float = 60) -> None:
    channel = grpc.insecure_channel(addr)
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                status = health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
        raise AssertionError("lepton serving did not become SERVING")
    finally:
        channel.close()


def test_lepton_serving_and_predict(lepton_env: LeptonSettings, tmp_path: Path) -> None:
    card = save_model(serving_settings())
    Registry(lepton_env).set_live(MODEL, card.version)
    addr = f"127.0.0.1:{_free_port()}"
    metrics_port, http_port = _free_port(), _free_port()
    env = {"LEPTON_SERVING_ADDR": addr, "LEPTON_SERVING_AUTH_TOKEN": TOKEN,
           "LEPTON_SERVING_HTTP_ADDR": f"127.0.0.1:{http_port}",
           "LEPTON_SERVING_ADMIN_TOKEN": ADMIN_TOKEN,
           "LEPTON_SERVING_KAFKA": "false", "LEPTON_LOG_LEVEL": "DEBUG",
           "LEPTON_LOG_FORMAT": "json"}
    pii = [str(record(3)[f]) for f in ("card_number", "email", "name")]
    log_path = tmp_path / "serving.log"
    with log_path.open("wb") as handle:
        proc = subprocess.Popen([sys.executable, "-m", "lepton", "serving"],
                                env={**os.environ, **env,
                                     "LEPTON_METRICS_PORT": str(metrics_port)},
                                stdout=subprocess.DEVNULL, stderr=handle,
                                preexec_fn=parent_death())
    try:
        _wait_serving(addr, proc, log_path)
        # a junk announcement carrying a known trace: serving logs its refusal inside the
        # `process` span that continues that trace
        trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
        producer = make_producer(lepton_env)
        producer.produce(Topics(lepton_env.topic_prefix).models, key=MODEL.encode(),
                         value=b"not an announcement",
                         headers=[("traceparent", f"00-{trace_id}-{parent_id}-01".encode())])
        assert producer.flush(10) == 0
        rec = record(3)
        out = lepton("predict", json.dumps(rec), "--request-id", "cli-1", env=env)
        result = json.loads(out.stdout)
        assert (result["request_id"], result["model"], result["version"]) == \
            ("cli-1", MODEL, card.version)
        assert 0.0 <= result["score"] <= 1.0

        batch = tmp_path / "records.jsonl"
        batch.write_text("\n".join(json.dumps(record(i)) for i in range(3)))
        lines = lepton("predict", str(batch), env=env).stdout.splitlines()
        assert [json.loads(line)["version"] for line in lines] == [card.version] * 3

        explained = lepton("predict", json.dumps(rec), "--explain", env=env)
        reason = json.loads(explained.stdout)["explanation"]
        assert reason["version"] == card.version and reason["method"] == "integrated-gradients"
        assert list(reason) == ["model", "version", "method", "baseline", "logit",
                                "baseline_logit", "attributions"]  # as over HTTP
        assert reason["model"] == MODEL
        assert abs(sum(reason["attributions"].values())
                   - (reason["logit"] - reason["baseline_logit"])) <= 1e-4
        assert "top reasons" in explained.stderr

        bad = lepton("predict", json.dumps({**rec, "amount": "x"}), env=env, check=False)
        assert bad.returncode == 2
        assert "INVALID_ARGUMENT" in bad.stderr
        assert "amount" in bad.stderr
        denied = lepton("predict", json.dumps(rec), env={**env, "LEPTON_SERVING_AUTH_TOKEN": "no"},
                        check=False)
        assert denied.returncode == 3
        assert "UNAUTHENTICATED" in denied.stderr
        # HTTP requests are timed in the same histogram, by route template and gRPC code
        with httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=10) as http:
            route = f"/v1/models/{MODEL}:predict"
            answered = http.post(route, json=rec, headers={"authorization": f"Bearer {TOKEN}"})
            assert answered.status_code == 200, answered.text
            assert http.post(route, json=rec).status_code == 401
            assert http.post(route, json={**rec, "amount": "x"},
                             headers={"authorization": f"Bearer {TOKEN}"}).status_code == 400
        # one request-duration histogram, by method and status, with sub-second buckets
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics",
                                    timeout=10) as reply:
            scraped = reply.read().decode()
        counts = {}
        for line in scraped.splitlines():
            if line.startswith("lepton_serving_request_duration_seconds_count{"):
                labels, value = line.split("} ")
                kept = [kv for kv in labels.split("{", 1)[1].split(",")
                        if kv.startswith("rpc_")]
                counts[",".join(kept)] = float(value)
        ok = 'rpc_grpc_status_code="OK",rpc_method="Predict"'
        assert counts[ok] >= 2
        assert counts['rpc_grpc_status_code="INVALID_ARGUMENT",rpc_method="Predict"'] >= 1
        assert counts['rpc_grpc_status_code="UNAUTHENTICATED",rpc_method="Predict"'] >= 1
        http_route = 'rpc_method="POST /v1/models/{name}:predict"'
        assert counts[f'rpc_grpc_status_code="OK",{http_route}'] == 1
        assert counts[f'rpc_grpc_status_code="UNAUTHENTICATED",{http_route}'] == 1
        assert counts[f'rpc_grpc_status_code="INVALID_ARGUMENT",{http_route}'] == 1
        assert not any(MODEL in key for key in counts)  # templates, never the raw path
        assert any(line.startswith("lepton_serving_request_duration_seconds_bucket{")
                   and 'le="0.005"' in line for line in scraped.splitlines())
        scored = sum(float(line.rsplit(" ", 1)[1]) for line in scraped.splitlines()
                     if line.startswith("lepton_serving_predictions_total{")
                     and f'model="{MODEL}"' in line and 'route="live"' in line)
        assert scored == 6  # cli-1, the file's three, the explained one, one over HTTP
        unreadable = lepton("predict", "no-such-file.json", env=env, check=False)
        assert unreadable.returncode == 2

        status = json.loads(lepton("serving", "status", env=env).stdout)
        assert (status["model"], status["live_version"]) == (MODEL, card.version)
    finally:
        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        try:
            code = proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
    assert code == 0  # finished its shutdown before the stop watchdog's 8 s
    assert time.monotonic() - signalled < 10
    log = log_path.read_text()
    assert not [value for value in pii if value in log]
    lines = [json.loads(line) for line in log.splitlines()]  # every line is JSON
    assert any(line["message"].startswith("serving gRPC on") for line in lines)
    assert any(line["level"] == "DEBUG" for line in lines)  # LEPTON_LOG_LEVEL=DEBUG holds
    [refused] = [line for line in lines
                 if line["message"].startswith("ignoring a bad announcement")]
    assert refused["level"] == "WARNING" and refused["service"] == "serving"
    assert refused["trace_id"] == trace_id
    assert len(refused["span_id"]) == 16 and refused["span_id"] != parent_id
