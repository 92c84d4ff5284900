"""OIP v2 over gRPC on the serving port, driven by tritonclient (no project stubs on the
client side): health, metadata, 100-row infer equal to the lepton API, version pin, errors."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from services.serving.client import auth_metadata, predict_request
from services.serving.gen import serving_pb2 as pb
from shared.config import LeptonSettings
from shared.models.attribution import BASELINE
from shared.models.registry import Registry
from tests.unit.serving.support import (
    MODEL,
    TOKEN,
    record,
    running,
    save_model,
    serving_settings,
    stub,
)

HEADERS = {"authorization": f"Bearer {TOKEN}"}
NUMPY = {"FP64": np.float64, "INT64": np.int64, "BOOL": np.bool_, "BYTES": np.object_}


def full_records(n: int) -> list[dict[str, Any]]:
    """Records whose every feature is present (v2 tensors have no nulls)."""
    out, i = [], 0
    while len(out) < n:
        rec = record(i)
        i += 1
        if all(v is not None for v in rec.values()):
            out.append(rec)
    return out


def v2_inputs(records: list[dict[str, Any]], metadata: dict[str, Any]) -> list[Any]:
    """One tritonclient InferInput per metadata input, columnar over `records`."""
    inputs = []
    for spec in metadata["inputs"]:
        name, datatype = spec["name"], spec["datatype"]
        column = [r[name] for r in records]
        if datatype == "BYTES":
            array = np.array([str(v).encode() for v in column], dtype=np.object_)
        else:
            array = np.array(column, dtype=NUMPY[datatype])
        item = triton.InferInput(name, [len(records)], datatype)
        item.set_data_from_numpy(array)
        inputs.append(item)
    return inputs


@pytest.fixture
def served(lepton_env: LeptonSettings) -> Any:
    """A server with two versions (v2 live) and auth on; yields (server, v1 card, v2 card)."""
    settings = serving_settings(serving_auth_token=TOKEN)
    first = save_model(settings, seed=1)
    second = save_model(settings, seed=2)
    Registry(settings).set_live(MODEL, second.version)
    with running(settings) as server:
        yield server, first, second


def test_tritonclient_grpc_health_metadata_and_100_rows_match_the_lepton_api(served: Any) -> None:
    server, _, live = served
    client = triton.InferenceServerClient(server.addr)
    assert client.is_server_live(headers=HEADERS)
    assert client.is_server_ready(headers=HEADERS)
    assert client.is_model_ready(MODEL, headers=HEADERS)
    assert not client.is_model_ready("nope", headers=HEADERS)
    meta = client.get_model_metadata(MODEL, headers=HEADERS, as_json=True)
    assert meta["name"] == MODEL and str(live.version) in meta["versions"]
    assert all(i["shape"] == ["-1"] for i in meta["inputs"])
    kinds = {i["name"]: i["datatype"] for i in meta["inputs"]}
    assert kinds["amount"] == "FP64" and kinds["hour"] == "INT64"
    assert kinds["card_present"] == "BOOL" and kinds["region"] == "BYTES"
    assert [(o["name"], o["datatype"]) for o in meta["outputs"]][:2] == \
        [("score", "FP64"), ("label", "BOOL")]

    records = full_records(100)
    result = client.infer(MODEL, v2_inputs(records, meta), request_id="batch-1", headers=HEADERS)
    scores = result.as_numpy("score")
    labels = result.as_numpy("label")
    response = result.get_response(as_json=True)
    assert response["model_version"] == str(live.version)
    assert response["id"] == "batch-1"
    assert response["parameters"]["lepton_version"]["int64_param"] == str(live.version)
    assert scores.shape == (100,) and labels.dtype == np.bool_

    channel, lepton = stub(server.addr)
    try:
        inputs = [{k: v for k, v in r.items() if k in kinds} for r in records]
        batch = lepton.PredictBatch(pb.PredictBatchRequest(
            requests=[predict_request(r) for r in inputs]), metadata=auth_metadata(TOKEN),
            timeout=10)
    finally:
        channel.close()
    expected = np.array([r.score for r in batch.responses])
    assert np.max(np.abs(scores - expected)) <= 1e-6
    assert [r.label for r in batch.responses] == labels.tolist()


def test_model_version_pins_and_errors_map_to_v2_codes(served: Any) -> None:
    server, old, _ = served
    client = triton.InferenceServerClient(server.addr)
    meta = client.get_model_metadata(MODEL, headers=HEADERS, as_json=True)
    records = full_records(3)
    pinned = client.infer(MODEL, v2_inputs(records, meta), model_version=str(old.version),
                          headers=HEADERS)
    assert pinned.get_response().model_version == str(old.version)
    assert client.is_model_ready(MODEL, str(old.version), headers=HEADERS)

    def status(call: Any) -> str | None:
        with pytest.raises(InferenceServerException) as info:
            call()
        return info.value.status()

    assert status(lambda: client.infer("nope", v2_inputs(records, meta), headers=HEADERS)) \
        == "StatusCode.NOT_FOUND"
    assert status(lambda: client.infer(MODEL, v2_inputs(records, meta), model_version="99",
                                       headers=HEADERS)) == "StatusCode.NOT_FOUND"
    bad = v2_inputs(records, meta)
    bad[0] = triton.InferInput(bad[0].name(), [2], "FP64")
    bad[0].set_data_from_numpy(np.array([1.0, 2.0]))
    assert status(lambda: client.infer(MODEL, bad, headers=HEADERS)) \
        == "StatusCode.INVALID_ARGUMENT"
    wrong_type = v2_inputs(records, meta)
    wrong_type[0] = triton.InferInput(wrong_type[0].name(), [3], "BYTES")
    wrong_type[0].set_data_from_numpy(np.array([b"x", b"y", b"z"], dtype=np.object_))
    assert status(lambda: client.infer(MODEL, wrong_type, headers=HEADERS)) \
        == "StatusCode.INVALID_ARGUMENT"
    matrix = v2_inputs(records, meta)
    matrix[0] = triton.InferInput(matrix[0].name(), [3, 2], "FP64")
    matrix[0].set_data_from_numpy(np.ones((3, 2)))
    assert status(lambda: client.infer(MODEL, matrix, headers=HEADERS)) \
        == "StatusCode.INVALID_ARGUMENT"
    assert status(lambda: client.infer(MODEL, v2_inputs(records, meta))) \
        == "StatusCode.UNAUTHENTICATED"
    assert status(lambda: client.get_model_metadata("nope", headers=HEADERS)) \
        == "StatusCode.NOT_FOUND"


def test_explain_parameter_adds_attributions_that_add_up(served: Any) -> None:
    server, old, live = served
    client = triton.InferenceServerClient(server.addr)
    meta = client.get_model_metadata(MODEL, headers=HEADERS, as_json=True)
    records = full_records(8)
    plain = client.infer(MODEL, v2_inputs(records, meta), headers=HEADERS)
    assert plain.as_numpy("attributions") is None
    for version in ("", str(old.version)):
        result = client.infer(MODEL, v2_inputs(records, meta), model_version=version,
                              parameters={"explain": True}, headers=HEADERS)
        response = result.get_response(as_json=True)
        params = response["parameters"]
        assert params["explain_method"]["string_param"] == "integrated-gradients"
        assert params["explain_baseline"]["string_param"] == BASELINE
        assert response["model_version"] == str(old.version if version else live.version)
        features = params["explain_features"]["string_param"].split(",")
        attributions = result.as_numpy("attributions")
        assert attributions.shape == (8, len(features))
        scores = result.as_numpy("score")
        baseline = params["baseline_logit"]["double_param"]
        logits = np.log(scores / (1 - scores))
        assert np.max(np.abs(attributions.sum(axis=1) - (logits - baseline))) <= 1e-4
