"""Assemble and run the serving process: a grpc.aio server (auth interceptor, message-size
limits, optional TLS) with PredictionService and the OIP v2 `inference.GRPCInferenceService`
on one port, standard grpc.health.v1 health (NOT_SERVING until the first model is ready) and
server reflection; the HTTP/REST API (FastAPI on uvicorn, same loop); the hot-swap watcher on
`models.updates`; and the Kafka prediction path."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from services.serving.auth import Credentials, TokenAuth
from services.serving.batching import Batcher
from services.serving.config import ServingSettings
from services.serving.control import RolloutControl
from services.serving.decoding import DecodeGuard
from services.serving.fleet import Fleet
from services.serving.gen import grpc_service_pb2_grpc, serving_pb2, serving_pb2_grpc
from services.serving.grpc_api import SERVICE, PredictionService
from services.serving.hot_swap import AnnouncementWatcher
from services.serving.http_api import build_app
from services.serving.http_server import HttpServer
from services.serving.kafka_path import KafkaPredictions
from services.serving.model import ModelLoader
from services.serving.oip_grpc import InferenceService
from services.serving.prediction_log import PredictionLog
from services.serving.predictor import Predictor
from services.serving.request_metrics import RequestMetrics
from shared.readiness import clear_ready, mark_ready

log = logging.getLogger(__name__)
STOP_BUDGET_S = 6.5  # the whole shutdown, within the stop watchdog's 8 s
CALL_GRACE_S = 3.0  # in-flight gRPC/HTTP calls
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def server_options(settings: ServingSettings) -> list[tuple[str, Any]]:
    """grpc channel arguments for the server (message limits, no port sharing)."""
    size = settings.serving_max_message_bytes
    return [("grpc.max_receive_message_length", size), ("grpc.max_send_message_length", size),
            ("grpc.so_reuseport", 0)]


def server_credentials(settings: ServingSettings) -> grpc.ServerCredentials | None:
    """TLS credentials when a certificate is configured (mTLS when a client CA is too)."""
    if settings.serving_tls_cert is None or settings.serving_tls_key is None:
        return None
    pair = (settings.serving_tls_key.read_bytes(), settings.serving_tls_cert.read_bytes())
    ca = settings.serving_tls_client_ca.read_bytes() if settings.serving_tls_client_ca else None
    return grpc.ssl_server_credentials([pair], root_certificates=ca,
                                       require_client_auth=ca is not None)


def listen(server: grpc.aio.Server, address: str,
           credentials: grpc.ServerCredentials | None) -> int:
    """Bind `server` to `address`; its port, or OSError naming the address and the setting."""
    try:
        port = int(server.add_secure_port(address, credentials) if credentials
                   else server.add_insecure_port(address))
    except RuntimeError:  # grpc says only "Failed to bind to address"
        port = 0
    if port == 0:
        raise OSError(f"cannot listen on {address} for gRPC: the port is taken or the host is "
                      "not this machine's (LEPTON_SERVING_ADDR)")
    return port


class ServingApp:
    """Every part of the serving process, started and stopped together."""

    def __init__(self, settings: ServingSettings, *, kafka: bool | None = None) -> None:
        from shared.models.registry import Registry

        self.settings = settings
        self.credentials = Credentials.from_settings(settings)
        self.stop_event = threading.Event()
        self.health = health_aio.HealthServicer()
        self._loop: asyncio.AbstractEventLoop | None = None
        loader = ModelLoader(Registry(settings),
                             warmup_rows=settings.serving_warmup_rows,
                             numpy_forward=settings.serving_numpy_forward,
                             variant=settings.serving_variant)
        self.fleet = Fleet(loader, names=settings.model_names(),
                           canary_share=settings.serving_canary_share,
                           pinned_cache=settings.serving_pinned_cache,
                           drain_timeout_s=settings.serving_drain_timeout_s,
                           pinned_loads_per_min=settings.serving_pinned_loads_per_min,
                           on_ready=self._on_ready)
        batcher = Batcher(settings.serving_batch_max_size,
                          settings.serving_batch_max_wait_ms / 1000.0) \
            if settings.serving_batching else None
        self.prediction_log = PredictionLog(settings) if settings.serving_log_sample > 0 \
            else None
        self.predictor = Predictor(self.fleet, settings.serving_threshold, batcher,
                                   self.prediction_log)
        self.control = RolloutControl(settings, self.fleet)
        self.watcher = AnnouncementWatcher(settings, self.fleet, self.control, self.stop_event)
        use_kafka = settings.serving_kafka if kafka is None else kafka
        self.kafka = KafkaPredictions(settings, self.predictor, self.stop_event) \
            if use_kafka else None
        self.server: grpc.aio.Server | None = None
        self.http: HttpServer | None = None
        self._health_status: Any = None
        self.port = 0
        self.http_port = 0

    def _build_server(self) -> grpc.aio.Server:
        auth = [TokenAuth(self.credentials)] if self.credentials.enabled else []
        interceptors = [RequestMetrics(), DecodeGuard(), *auth]
        server = grpc.aio.server(interceptors=interceptors,
                                 options=server_options(self.settings))
        serving_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionService(self.predictor, self.fleet, self.control,
                              self.settings.serving_max_batch_items), server)
        grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceService(self.predictor, self.fleet), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        names = (serving_pb2.DESCRIPTOR.services_by_name["PredictionService"].full_name,
                 health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                 reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, server)
        return server

    def _on_ready(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            asyncio.run_coroutine_threadsafe(self._set_health(SERVING), loop)

    async def _set_health(self, status: Any) -> None:
        if status == self._health_status:
            return
        self._health_status = status
        for service in ("", SERVICE):
            await self.health.set(service, status)
        log.info("health: %s", health_pb2.HealthCheckResponse.ServingStatus.Name(status))

    async def start(self) -> int:
        """Bind, start serving (NOT_SERVING until a model is ready) and start the watchers."""
        self._loop = asyncio.get_running_loop()
        await self._set_health(NOT_SERVING)
        self.server = server = self._build_server()
        credentials = server_credentials(self.settings)
        address = self.settings.serving_addr
        self.port = listen(server, address, credentials)
        await server.start()
        if self.prediction_log is not None:
            self.prediction_log.start()
        if self.settings.serving_http_addr:
            self.http = HttpServer(build_app(
                self.predictor, self.fleet, credentials=self.credentials,
                max_body_bytes=self.settings.serving_max_message_bytes), self.settings)
            self.http_port = await self.http.start()
        self.watcher.start()
        if self.kafka is not None:
            self.kafka.start()
        await asyncio.to_thread(self.watcher.initial_loaded.wait, 120)
        if self.fleet.ready:
            await self._set_health(SERVING)
        mark_ready(self.settings, "serving")
        log.info("serving gRPC on %s (port %d, %s)", address, self.port,
                 "TLS" if credentials else "plaintext")
        return self.port

    async def stop(self, budget: float = STOP_BUDGET_S) -> None:
        """NOT_SERVING, finish in-flight calls, stop the watchers and publish what is queued,
        all within `budget` seconds (inside the 8 s the stop watchdog allows)."""
        deadline = time.monotonic() + budget

        def left(most: float = budget) -> float:
            return max(0.1, min(most, deadline - time.monotonic()))

        clear_ready(self.settings, "serving")
        await self.health.enter_graceful_shutdown()
        self.stop_event.set()
        calls = [] if self.server is None else [self.server.stop(left(CALL_GRACE_S))]
        if self.http is not None:
            calls.append(self.http.stop())
        await asyncio.gather(*calls)  # gRPC and HTTP drain their in-flight calls together
        await asyncio.to_thread(self.watcher.join, left())
        if self.kafka is not None:
            await asyncio.to_thread(self.kafka.join, left())
        await asyncio.to_thread(self.control.close)
        if self.prediction_log is not None:
            await asyncio.to_thread(self.prediction_log.close, left())

    async def run(self, stop: threading.Event) -> None:
        """Serve until `stop` is set (SIGINT/SIGTERM), then shut down gracefully."""
        await self.start()
        try:
            await asyncio.to_thread(stop.wait)
        finally:
            await self.stop()
