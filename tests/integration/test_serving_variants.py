"""Serving a compressed variant: a transactions MLP released with its int8 and fp16 variants
(the trainer's compress + registry path); a server with LEPTON_SERVING_VARIANT=int8 answers
with the int8 arithmetic (scores within the error the signed card states against the full
model's) and says so in ModelMetadata over the lepton API, OIP v2 gRPC and HTTP; `full` answers
with the full model; a changed variant byte refuses the version."""

from __future__ import annotations

from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import torch
import tritonclient.grpc as triton
from scipy.special import expit

from services.serving.client import auth_metadata, predict_request
from services.serving.errors import Refused
from services.serving.gen import grpc_service_pb2 as v2pb
from services.serving.gen import serving_pb2 as pb
from services.serving.gen.grpc_service_pb2_grpc import GRPCInferenceServiceStub
from services.serving.model import ModelLoader
from services.trainer.compress import compress_release
from services.trainer.evaluate import quality, tune_threshold
from shared.config import LeptonSettings
from shared.datasets import load_spec
from shared.models.nets import build_model
from shared.models.registry import ModelCard, Registry, variant_file
from shared.models.variants import int8_forward
from tests.integration.test_serving_oip_grpc import full_records, v2_inputs
from tests.unit.serving.support import (
    MODEL,
    NON_PRIVATE,
    TOKEN,
    running,
    serving_settings,
    stub,
)
from tests.unit.trainer.trained import trained_mlp

ROWS = 200
HEADERS = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def released(lepton_env: LeptonSettings) -> tuple[ModelCard, list[dict[str, Any]], np.ndarray]:
    """The MLP saved with its accepted variants and live; (card, held-out records without the
    label, full-model scores of those records)."""
    arch, state, transform, _, held = trained_mlp()
    spec = load_spec("transactions")
    net = build_model(arch)
    net.load_state_dict(state)
    net.eval()
    x = transform.transform(held)
    labels = transform.labels(held).astype(np.float64)
    with torch.inference_mode():
        probs = torch.sigmoid(net(torch.from_numpy(x))).numpy().astype(np.float64)
    threshold = tune_threshold(probs, labels)
    metrics = quality(probs, labels, threshold)
    entries, accepted = compress_release(spec.compression, arch, state, net, x, labels,
                                         threshold, metrics)
    assert set(accepted) == {"int8", "fp16"}
    registry = Registry(lepton_env)
    card = registry.save(ModelCard(
        model=MODEL, dataset="transactions", spec_hash=spec.spec_hash(), architecture=arch,
        feature_transform=transform.to_dict(), metrics=metrics, status="promoted",
        privacy=NON_PRIVATE, variants=entries), state, accepted)
    registry.set_live(MODEL, card.version)
    records = [{k: v for k, v in p.items() if k != "is_fraud"} for p in held[:ROWS]]
    return card, records, probs[:ROWS]


def _scores(addr: str, records: list[dict[str, Any]]) -> tuple[np.ndarray, Any]:
    channel, lepton = stub(addr)
    try:
        batch = lepton.PredictBatch(pb.PredictBatchRequest(
            requests=[predict_request(r) for r in records]), metadata=auth_metadata(TOKEN),
            timeout=20)
        meta = lepton.GetModelMetadata(pb.GetModelMetadataRequest(model=MODEL),
                                       metadata=auth_metadata(TOKEN), timeout=10)
    finally:
        channel.close()
    return np.array([r.score for r in batch.responses]), meta


def test_serving_answers_from_int8_within_the_stated_error(
        released: tuple[ModelCard, list[dict[str, Any]], np.ndarray]) -> None:
    card, records, full = released
    arch, _, transform, _, held = trained_mlp()
    _, tensors = Registry(serving_settings()).load_variant(MODEL, card.version, "int8")
    expected = expit(int8_forward(arch, tensors)(transform.transform(held[:ROWS]))
                     .astype(np.float64))
    stated = card.variants["int8"]["score_diff"]["max"]
    with running(serving_settings(serving_auth_token=TOKEN, serving_variant="int8")) as server:
        scores, meta = _scores(server.addr, records)
        assert meta.variant == "int8" and meta.version == card.version
        # OIP v2: metadata `parameters` (our field 6 over gRPC: tritonclient's own proto skips
        # it, so read it with ours), and every infer response's parameters
        channel = grpc.insecure_channel(server.addr)
        v2 = GRPCInferenceServiceStub(channel).ModelMetadata(
            v2pb.ModelMetadataRequest(name=MODEL), metadata=auth_metadata(TOKEN), timeout=10)
        channel.close()
        assert v2.parameters["lepton_variant"].string_param == "int8"
        http = httpx.get(f"{server.http_url}/v2/models/{MODEL}", headers=HEADERS).json()
        assert http["parameters"] == {"lepton_variant": "int8"}
        client = triton.InferenceServerClient(server.addr)
        meta = client.get_model_metadata(MODEL, headers=HEADERS, as_json=True)
        rows = full_records(8)
        answer = client.infer(MODEL, v2_inputs(rows, meta), headers=HEADERS).get_response(
            as_json=True)
        assert answer["parameters"]["lepton_variant"]["string_param"] == "int8"
    # the int8 arithmetic the gate scored, row by row, whatever the batch
    assert np.allclose(scores, expected, rtol=0, atol=1e-6)
    assert not np.allclose(scores, full, rtol=0, atol=1e-6)
    gap = float(np.abs(scores - full).max())
    print(f"\nint8 vs full on {ROWS} held-out rows: max |Δscore| {gap:.2e} "
          f"(card states {stated:.2e} on {card.variants['int8']['score_diff']['rows']})")
    assert gap <= stated + 1e-6

    with running(serving_settings(serving_auth_token=TOKEN, serving_variant="full")) as server:
        scores, meta = _scores(server.addr, records)
    assert meta.variant == "full"
    assert np.allclose(scores, full, rtol=0, atol=1e-5)


def test_fp16_on_cpu_and_a_missing_variant_fall_back_cleanly(
        released: tuple[ModelCard, list[dict[str, Any]], np.ndarray]) -> None:
    card, records, full = released
    registry = Registry(serving_settings())
    fp16 = ModelLoader(registry, warmup_rows=4, variant="fp16").load(MODEL, card.version)
    assert fp16.variant == "fp16" and fp16.fast is not None
    got = fp16.score([fp16.schema.clean(r) for r in records])
    assert np.abs(got - full).max() <= card.variants["fp16"]["score_diff"]["max"] + 1e-6
    # `auto` on a CPU: int8 when it is not slower than the full model's NumPy path here
    auto = ModelLoader(registry, warmup_rows=4, variant="auto").load(MODEL, card.version)
    assert auto.variant in ("int8", "full")
    # a version whose card has no variants: int8 asked, full served (logged)
    registry.save(card.model_copy(update={"version": 0, "variants": {}}),
                  build_model(card.architecture).state_dict())
    plain = ModelLoader(registry, warmup_rows=4, variant="int8").load(MODEL, card.version + 1)
    assert plain.variant == "full"


def test_a_changed_variant_byte_refuses_the_version(
        released: tuple[ModelCard, list[dict[str, Any]], np.ndarray]) -> None:
    card, _, _ = released
    registry = Registry(serving_settings())
    path = registry.version_dir(MODEL, card.version) / variant_file("int8")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(Refused, match="sha256 does not match"):
        ModelLoader(registry, warmup_rows=4, variant="int8").load(MODEL, card.version)
    assert ModelLoader(registry, warmup_rows=4, variant="full").load(
        MODEL, card.version).variant == "full"
