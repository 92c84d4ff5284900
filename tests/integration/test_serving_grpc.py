"""Serving over real gRPC on a loopback socket: health transitions, auth, bad input, limits,
deadlines, reflection, metadata, streams, pinned versions and TLS."""

from __future__ import annotations

import datetime
import threading
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.serving.client import auth_metadata, predict_request
from services.serving.gen import serving_pb2 as pb
from services.serving.gen import serving_pb2_grpc
from shared.config import LeptonSettings
from shared.models.registry import Registry
from tests.unit.serving.support import (
    MODEL,
    TOKEN,
    ServerThread,
    announce,
    call_predict,
    record,
    running,
    save_model,
    serving_settings,
    stub,
    wait_for,
)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def live_server(lepton_env: LeptonSettings) -> Any:
    """A server with v1 live (registry index) and auth on."""
    settings = serving_settings(serving_auth_token=TOKEN)
    card = save_model(settings)
    Registry(settings).set_live(MODEL, card.version)
    with running(settings) as server:
        channel, service = stub(server.addr)
        yield server, service
        channel.close()


def _code(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


def test_health_not_serving_until_first_model_then_serving_then_shutdown(
    lepton_env: LeptonSettings,
) -> None:
    settings = serving_settings(serving_auth_token=TOKEN)
    server = ServerThread(settings).start()
    seen: list[int] = []
    channel = grpc.insecure_channel(server.addr)
    health = health_pb2_grpc.HealthStub(channel)
    watch = health.Watch(health_pb2.HealthCheckRequest(service=""))

    def follow() -> None:
        try:
            for reply in watch:
                seen.append(reply.status)
        except grpc.RpcError:
            pass

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    try:
        wait_for(lambda: seen, what="first health status")
        check = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert check.status == NOT_SERVING
        assert seen == [NOT_SERVING]
        _, service = stub(server.addr)
        assert _code(lambda: call_predict(service, record())) == grpc.StatusCode.UNAVAILABLE

        announce(settings, save_model(settings))
        wait_for(lambda: SERVING in seen, what="SERVING after the first model")
        named = health.Check(health_pb2.HealthCheckRequest(
            service="lepton.serving.v1.PredictionService"), timeout=5)
        assert named.status == SERVING
        assert call_predict(service, record()).version == 1
    finally:
        server.stop()
    follower.join(10)
    channel.close()
    assert seen[:2] == [NOT_SERVING, SERVING]
    assert seen[-1] == NOT_SERVING


def test_auth_token_required_on_every_method_but_health(live_server: Any) -> None:
    server, service = live_server
    unauthenticated = grpc.StatusCode.UNAUTHENTICATED
    assert _code(lambda: call_predict(service, record(), token=None)) == unauthenticated
    assert _code(lambda: call_predict(service, record(), token="wrong")) == unauthenticated
    assert _code(lambda: service.ListModels(pb.ListModelsRequest(), timeout=5)) == \
        unauthenticated
    stream = service.PredictStream(iter([predict_request(record())]), timeout=5)
    assert _code(lambda: list(stream)) == unauthenticated
    assert call_predict(service, record()).version == 1
    channel = grpc.insecure_channel(server.addr)
    health = health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == SERVING
    channel.close()


@pytest.mark.parametrize(("change", "message"), [
    ({"shoe_size": 42}, "not a field"),
    ({"amount": "lots"}, "must be a number"),
    ({"amount": -5.0}, "below its minimum"),
    ({"hour": 7.5}, "integer"),
    ({"merchant_category": "spaceships"}, "must be one of"),
    ({"card_present": "yes"}, "true or false"),
    ({"amount": None, "hour": None}, "is required"),
])
def test_bad_input_is_invalid_argument_with_a_clear_message(
    live_server: Any, change: dict[str, Any], message: str,
) -> None:
    _, service = live_server
    rec = {**record(), **change}
    with pytest.raises(grpc.RpcError) as info:
        call_predict(service, rec)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in info.value.details()
    assert "lots" not in info.value.details()


def test_bad_input_in_batches_streams_and_structs(live_server: Any) -> None:
    _, service = live_server
    nested = predict_request(record())
    nested.features["amount"].CopyFrom(struct_pb2.Value(list_value=struct_pb2.ListValue()))
    meta = auth_metadata(TOKEN)
    assert _code(lambda: service.Predict(nested, timeout=5, metadata=meta)) == \
        grpc.StatusCode.INVALID_ARGUMENT
    batch = pb.PredictBatchRequest(requests=[predict_request(record(0)),
                                             predict_request({**record(1), "amount": "x"})])
    with pytest.raises(grpc.RpcError) as info:
        service.PredictBatch(batch, timeout=5, metadata=meta)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("requests[1]:")
    replies = service.PredictStream(iter([predict_request(record(0)),
                                          predict_request({"nope": 1})]),
                                    timeout=5, metadata=meta)
    got: list[Any] = []
    with pytest.raises(grpc.RpcError) as info:
        got.extend(replies)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(got) == 1
    assert got[0].version == 1


def test_message_size_limit(lepton_env: LeptonSettings) -> None:
    settings = serving_settings(serving_max_message_bytes=64 * 1024)
    card = save_model(settings)
    Registry(settings).set_live(MODEL, card.version)
    with running(settings) as server:
        channel, service = stub(server.addr)
        huge = pb.PredictBatchRequest(requests=[predict_request(record(i)) for i in range(400)])
        assert huge.ByteSize() > 64 * 1024
        assert _code(lambda: service.PredictBatch(huge, timeout=10)) == \
            grpc.StatusCode.RESOURCE_EXHAUSTED
        assert call_predict(service, record(), token=None).version == card.version
        channel.close()


def test_deadline_exceeded_while_waiting_in_a_batch(lepton_env: LeptonSettings) -> None:
    settings = serving_settings(serving_batching=True, serving_batch_max_size=1000,
                                serving_batch_max_wait_ms=500)
    card = save_model(settings)
    Registry(settings).set_live(MODEL, card.version)
    with running(settings) as server:
        channel, service = stub(server.addr)
        assert _code(lambda: call_predict(service, record(), token=None, timeout=0.1)) == \
            grpc.StatusCode.DEADLINE_EXCEEDED
        assert call_predict(service, record(), token=None, timeout=5).version == card.version
        channel.close()
        assert server.app.predictor.batcher is not None
        assert server.app.predictor.batcher.rows == 1


def test_reflection_lists_the_services(live_server: Any) -> None:
    server, _ = live_server
    channel = grpc.insecure_channel(server.addr)
    reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = reflect.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    names = {s.name for r in replies for s in r.list_services_response.service}
    channel.close()
    assert {"lepton.serving.v1.PredictionService", "grpc.health.v1.Health"} <= names


def test_metadata_list_stream_and_pinned_versions(live_server: Any) -> None:
    server, service = live_server
    meta = auth_metadata(TOKEN)
    settings = server.settings
    v2 = save_model(settings, seed=2)
    server.app.fleet.apply("promote", MODEL, v2.version)

    info = service.GetModelMetadata(pb.GetModelMetadataRequest(model=MODEL), timeout=5,
                                    metadata=meta)
    assert (info.version, info.sha256, info.dataset) == (2, v2.sha256, "transactions")
    assert "amount" in info.feature_names
    assert info.feature_dim > 0
    status = service.ListModels(pb.ListModelsRequest(), timeout=5, metadata=meta).models[0]
    assert (status.live_version, status.previous_version) == (2, 1)

    replies = list(service.PredictStream(
        iter([predict_request(record(i), request_id=f"s{i}") for i in range(50)]),
        timeout=10, metadata=meta))
    assert [r.request_id for r in replies] == [f"s{i}" for i in range(50)]
    assert {r.version for r in replies} == {2}

    pinned = call_predict(service, record(), version=1)
    assert (pinned.version, pinned.route) == (1, pb.ROUTE_PINNED)
    assert call_predict(service, record()).version == 2
    assert _code(lambda: call_predict(service, record(), version=99)) == \
        grpc.StatusCode.NOT_FOUND


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "tls.crt", tmp / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_tls(lepton_env: LeptonSettings, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    settings = serving_settings(serving_tls_cert=cert, serving_tls_key=key,
                                serving_auth_token=TOKEN)
    card = save_model(settings)
    Registry(settings).set_live(MODEL, card.version)
    with running(settings) as server:
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        channel = grpc.secure_channel(f"localhost:{server.port}", credentials)
        service = serving_pb2_grpc.PredictionServiceStub(channel)
        assert call_predict(service, record()).version == card.version
        channel.close()
        plain, insecure = stub(server.addr)
        assert _code(lambda: call_predict(insecure, record(), timeout=3)) == \
            grpc.StatusCode.UNAVAILABLE
        plain.close()


def test_served_scores_equal_the_trainers_transform_and_network(live_server: Any) -> None:
    import torch

    from shared.datasets import load_spec
    from shared.models.features import FeatureTransform
    from shared.models.nets import build_model

    server, service = live_server
    card, weights = Registry(server.settings).load(MODEL, 1)
    net = build_model(card.architecture)
    net.load_state_dict(weights)
    transform = FeatureTransform.from_dict(card.feature_transform)
    spec = load_spec("transactions")
    bounds = {f.name: (f.clip_min, f.clip_max) for f in spec.fields if f.is_numeric}
    checked = 0
    for i in range(40):
        rec = record(i)
        if any(rec.get(name) is not None and ((low is not None and rec[name] < low) or
                                              (high is not None and rec[name] > high))
               for name, (low, high) in bounds.items()):
            continue
        with torch.inference_mode():
            expected = torch.sigmoid(net(torch.from_numpy(transform.transform([rec])))).item()
        reply = call_predict(service, rec)
        assert abs(reply.score - expected) < 1e-5
        checked += 1
    assert checked >= 20


def test_predict_span_continues_the_callers_trace(live_server: Any) -> None:
    from tests.unit.serving.support import span_exporter

    exporter = span_exporter()
    _, service = live_server
    trace_id = "5bf92f3577b34da6a3ce929d0e0e4736"
    meta = [*auth_metadata(TOKEN), ("traceparent", f"00-{trace_id}-00f067aa0ba902b7-01")]
    reply = service.Predict(predict_request(record(), request_id="traced"), timeout=5,
                            metadata=meta)
    spans = [s for s in exporter.get_finished_spans()
             if s.name == "lepton.serving.v1.PredictionService/Predict"
             and f"{s.context.trace_id:032x}" == trace_id]
    assert len(spans) == 1
    assert spans[0].parent is not None
    assert spans[0].parent.span_id == 0x00F067AA0BA902B7
    assert spans[0].attributes is not None
    assert spans[0].attributes["lepton.model.version"] == reply.version
