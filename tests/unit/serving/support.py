"""Helpers for serving tests: real signed models in the registry, an in-process server on a
free port (its own event loop thread), gRPC stubs, sample records, in-memory spans."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

import grpc
import torch
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from lepton.generators import generate
from services.serving.client import auth_metadata, predict_request
from services.serving.config import ServingSettings
from services.serving.gen import serving_pb2_grpc
from services.serving.server import ServingApp
from shared.datasets import load_spec
from shared.events import Scalar
from shared.models.features import FeatureTransform
from shared.models.nets import architecture, build_model
from shared.models.registry import ModelCard, Registry
from shared.principals import PrincipalName

MODEL = "fraud"
TOKEN = "s3cret-test-token"
ADMIN_TOKEN = "s3cret-admin-token"


@cache
def payloads(count: int = 300) -> list[dict[str, Scalar]]:
    """Raw transaction payloads from the seeded generator."""
    return [dict(e.payload) for e in generate("transactions", count, 11)]


@cache
def fitted_transform() -> FeatureTransform:
    """A FeatureTransform fitted on generated transactions."""
    return FeatureTransform.fit(load_spec("transactions"), payloads())


def record(i: int = 0) -> dict[str, Scalar]:
    """A valid raw record (label dropped, PII included)."""
    rec = dict(payloads()[i % len(payloads())])
    rec.pop("is_fraud", None)
    return rec


NON_PRIVATE = {"mode": "non-private", "non_private": True}
CHARGED = {"mode": "model", "epsilon": 1.0, "delta": 1e-5, "ledger": {"status": "charged"}}
UNCHARGED = {"mode": "model", "epsilon": 1.0, "delta": 1e-5,
             "ledger": {"status": "refused", "reason": "subject_budget_exhausted"}}


def save_model(settings: Any, *, model: str = MODEL, seed: int = 0,
               kind: str = "mlp", status: str = "promoted",
               privacy: dict[str, Any] | None = None) -> ModelCard:
    """Save a signed model with random weights (non-private unless `privacy` says otherwise);
    returns its card."""
    transform = fitted_transform()
    arch = architecture(kind, transform.dim, (8,))
    torch.manual_seed(seed)
    net = build_model(arch)
    card = ModelCard(model=model, dataset="transactions",
                     spec_hash=load_spec("transactions").spec_hash(), architecture=arch,
                     feature_transform=transform.to_dict(), metrics={"auc": 0.5 + seed / 1000},
                     status=status, privacy=NON_PRIVATE if privacy is None else privacy)
    return Registry(settings).save(card, net.state_dict())


def serving_settings(**overrides: Any) -> ServingSettings:
    """ServingSettings from the (test) environment, on a free loopback port, no Kafka path;
    with a predict token the admin token is ADMIN_TOKEN, without one auth is explicitly off."""
    values: dict[str, Any] = {"serving_addr": "127.0.0.1:0", "serving_kafka": False,
                              "serving_http_addr": "127.0.0.1:0",
                              "serving_warmup_rows": 4, "serving_drain_timeout_s": 5.0}
    values.update(overrides)
    if values.get("serving_auth_token"):
        values.setdefault("serving_admin_token", ADMIN_TOKEN)
    else:
        values.setdefault("serving_auth", "none")
    return ServingSettings(**values)


class ServerThread:
    """A ServingApp on its own event loop in a background thread."""

    def __init__(self, settings: ServingSettings, *, kafka: bool | None = None) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.app = ServingApp(settings, kafka=kafka)
        self.port = 0

    def start(self) -> ServerThread:
        """Start serving; returns self once the port is bound and the watcher positioned."""
        self.thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self.app.start(), self.loop).result(60)
        return self

    def stop(self) -> None:
        """Stop the server and its loop."""
        try:
            asyncio.run_coroutine_threadsafe(self.app.stop(1.0), self.loop).result(60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()

    @property
    def addr(self) -> str:
        """Dialable address."""
        return f"127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        """Base URL of the HTTP API."""
        return f"http://127.0.0.1:{self.app.http_port}"


@contextmanager
def running(settings: ServingSettings, *, kafka: bool | None = None) -> Iterator[ServerThread]:
    """A started ServerThread, always stopped afterwards."""
    server = ServerThread(settings, kafka=kafka).start()
    try:
        yield server
    finally:
        server.stop()


def stub(addr: str) -> tuple[grpc.Channel, Any]:
    """A channel and PredictionService stub."""
    channel = grpc.insecure_channel(addr)
    return channel, serving_pb2_grpc.PredictionServiceStub(channel)


def call_predict(stub_: Any, rec: dict[str, Scalar], *, token: str | None = TOKEN,
                 version: int = 0, request_id: str = "", timeout: float = 10.0) -> Any:
    """A Predict call with the bearer token."""
    return stub_.Predict(predict_request(rec, version=version, request_id=request_id),
                         timeout=timeout, metadata=auth_metadata(token))


_EXPORTER = InMemorySpanExporter()


def span_exporter() -> InMemorySpanExporter:
    """The in-memory exporter attached to the global SDK tracer provider (installed once)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    if not getattr(provider, "_serving_test_exporter", False):
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        provider._serving_test_exporter = True  # type: ignore[attr-defined]
    return _EXPORTER


def signed_announcement(settings: Any, card: ModelCard, action: str = "promote",
                        share: float | None = None, *, signer: PrincipalName = "trainer",
                        sequence: int | None = None, override: bool = False) -> bytes:
    """`card`'s announcement signed as `signer` with the model's next sequence (or `sequence`),
    as the trainer or `lepton models` would send it."""
    from shared.announcements import next_sequence, sign_announcement
    from shared.events import encode
    from shared.principals import Principal

    registry = Registry(settings)
    seq = sequence if sequence is not None else next_sequence(registry.redis, settings,
                                                              card.model)
    message = card.announcement(action, share).model_copy(update={"override": override})
    return encode(sign_announcement(Principal.load(settings, signer), message, seq))


def publish_announcement(settings: Any, value: bytes, key: str = MODEL, *,
                         traceparent: str | None = None, producer: Any = None) -> None:
    """Put `value` on models.updates as is, delivered before returning. Pass the test's own
    `producer` when publishing many; without one, a producer of this call alone is used (a
    module-level cache outlived the session broker and kept reconnecting to it)."""
    from shared.events import CONTENT_TYPE_JSON, Header
    from shared.kafka import make_producer
    from shared.topics import Topics

    headers: list[tuple[str, str | bytes | None]] = [(Header.CONTENT_TYPE, CONTENT_TYPE_JSON)]
    if traceparent:
        headers.append(("traceparent", traceparent.encode()))
    producer = producer or make_producer(settings, **{"linger.ms": 0})
    producer.produce(Topics(settings.topic_prefix).models, key=key.encode(), value=value,
                     headers=headers)
    assert producer.flush(10) == 0


def announce(settings: Any, card: ModelCard, action: str = "promote",
             share: float | None = None, *, traceparent: str | None = None,
             signer: PrincipalName = "trainer", override: bool = False) -> None:
    """Publish a signed ModelAnnouncement for `card` on models.updates."""
    publish_announcement(settings, signed_announcement(settings, card, action, share,
                                                       signer=signer, override=override),
                         card.model, traceparent=traceparent)


def wait_for(check: Any, timeout: float = 30.0, what: str = "condition") -> None:
    """Poll `check()` until true or fail after `timeout` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
