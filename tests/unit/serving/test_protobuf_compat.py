"""Our committed stubs and a standard v2 client (tritonclient) load in one environment."""

from __future__ import annotations

import importlib
import re
from importlib import metadata

import pytest
from google.protobuf import __version__ as protobuf_version

from services.serving import gen_stubs


def _gencode(module: str) -> tuple[int, ...]:
    source = (gen_stubs.GEN_DIR / f"{module}.py").read_text()
    found = re.search(r"# Protobuf Python Version: (\d+)\.(\d+)\.(\d+)", source)
    assert found, module
    return tuple(int(part) for part in found.groups())


def test_serving_stubs_and_tritonclient_import_together() -> None:
    ours = importlib.import_module("services.serving.gen.serving_pb2_grpc")
    v2 = importlib.import_module("services.serving.gen.grpc_service_pb2")
    triton = importlib.import_module("tritonclient.grpc")
    triton_pb2 = importlib.import_module("tritonclient.grpc.service_pb2")
    assert ours.PredictionServiceStub is not None
    assert triton.InferenceServerClient is not None
    # same wire messages, separate descriptor pools: both encode and decode each other's bytes
    theirs = triton_pb2.ModelInferRequest(model_name="fraud", model_version="3", id="r1")
    mine = v2.ModelInferRequest.FromString(theirs.SerializeToString())
    assert (mine.model_name, mine.model_version, mine.id) == ("fraud", "3", "r1")


@pytest.mark.parametrize("module", ["serving_pb2", "grpc_service_pb2"])
def test_gencode_is_old_enough_for_tritonclient(module: str) -> None:
    assert _gencode(module) <= (6, 30, 99), "tritonclient needs protobuf < 7: gencode <= 6.30"


def test_declared_protobuf_bound_admits_the_stubs_and_the_runtime() -> None:
    requires = metadata.requires("lepton-stream") or []
    bound = next(r for r in requires if r.startswith("protobuf"))
    low = tuple(int(p) for p in re.search(r">=(\d+)\.(\d+)\.(\d+)", bound).groups())  # type: ignore[union-attr]
    assert low >= _gencode("serving_pb2"), "runtime lower bound must be >= the stubs' gencode"
    runtime = tuple(int(p) for p in protobuf_version.split(".")[:3])
    assert runtime >= low
