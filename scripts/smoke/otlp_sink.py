"""Stand-in for the OpenTelemetry Collector in the container smoke test: an OTLP/gRPC receiver
on :4317 for traces and metrics that counts spans and metric points per service.name and
writes the counts to /tmp/otlp-counts.json (read with `docker exec`)."""

from __future__ import annotations

import json
import threading
import time
from concurrent import futures
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

COUNTS: dict[str, dict[str, int]] = {"spans": {}, "metrics": {}}
LOCK = threading.Lock()


def _service(resource: Any) -> str:
    return next((a.value.string_value for a in resource.attributes
                 if a.key == "service.name"), "?")


class Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def Export(self, request: Any, context: Any) -> Any:  # noqa: N802
        with LOCK:
            for rs in request.resource_spans:
                n = sum(len(s.spans) for s in rs.scope_spans)
                name = _service(rs.resource)
                COUNTS["spans"][name] = COUNTS["spans"].get(name, 0) + n
        return trace_service_pb2.ExportTraceServiceResponse()


class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
    def Export(self, request: Any, context: Any) -> Any:  # noqa: N802
        with LOCK:
            for rm in request.resource_metrics:
                n = sum(len(s.metrics) for s in rm.scope_metrics)
                name = _service(rm.resource)
                COUNTS["metrics"][name] = COUNTS["metrics"].get(name, 0) + n
        return metrics_service_pb2.ExportMetricsServiceResponse()


def main() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(), server)
    server.add_insecure_port("0.0.0.0:4317")
    server.start()
    print("otlp sink listening on :4317", flush=True)
    while True:
        time.sleep(2)
        with LOCK:
            text = json.dumps(COUNTS)
        with open("/tmp/otlp-counts.json.tmp", "w") as handle:
            handle.write(text)
        import os

        os.replace("/tmp/otlp-counts.json.tmp", "/tmp/otlp-counts.json")


if __name__ == "__main__":
    main()
