"""Bytes that are not a valid PredictRequest get INVALID_ARGUMENT (not UNKNOWN), over a real
gRPC channel; valid bytes on the same raw method still score."""

from __future__ import annotations

import grpc
import pytest

from services.serving.client import auth_metadata, predict_request
from services.serving.gen import serving_pb2 as pb
from shared.config import LeptonSettings
from shared.models.registry import Registry
from tests.unit.serving.support import MODEL, TOKEN, record, running, save_model, serving_settings


def test_undecodable_request_is_invalid_argument(lepton_env: LeptonSettings) -> None:
    settings = serving_settings(serving_auth_token=TOKEN)
    Registry(settings).set_live(MODEL, save_model(settings).version)
    with running(settings) as server:
        channel = grpc.insecure_channel(server.addr)
        raw = channel.unary_unary("/lepton.serving.v1.PredictionService/Predict")
        for junk in (b"\xff\xff\xff", b"\x0a\x05ab", b"\x12\x80"):
            with pytest.raises(grpc.RpcError) as info:
                raw(junk, timeout=10, metadata=auth_metadata(TOKEN))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        reply = pb.PredictResponse.FromString(raw(
            predict_request(record()).SerializeToString(), timeout=10,
            metadata=auth_metadata(TOKEN)))
        assert reply.version == 1
        stream = channel.stream_stream("/lepton.serving.v1.PredictionService/PredictStream")
        with pytest.raises(grpc.RpcError) as info:
            list(stream(iter([b"\xff\xff"]), timeout=10, metadata=auth_metadata(TOKEN)))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        channel.close()
