"""Serving as a real process: gRPC load through 20 hot swaps and one corrupt model (zero failed
requests); hostile gRPC input (fuzzed protobuf bytes on a raw method, oversize messages, no
token) gets clear statuses with bounded memory; and poisoned artifacts (a pickle payload, a
truncated safetensors file, a wrong signature) are refused without the payload ever running."""

from __future__ import annotations

import os
import pickle
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import orjson
import psutil
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.serving.client import auth_metadata, predict_request
from services.serving.gen import serving_pb2 as pb
from services.serving.gen import serving_pb2_grpc
from shared.models.registry import CARD_FILE, WEIGHTS_FILE, ModelCard, Registry
from shared.signing import load_or_create_private_key, sign
from tests.faults.conftest import FaultReport, Pipeline, ScenarioLine, free_port, wait_until
from tests.helpers import read_topic
from tests.unit.serving.support import ADMIN_TOKEN, MODEL, TOKEN, announce, record, save_model

PREDICT = "/lepton.serving.v1.PredictionService/Predict"
SWAPS = 20


@dataclass
class Serving:
    """A serving process and a channel to it."""

    pipeline: Pipeline
    addr: str
    pid: int
    channel: grpc.Channel
    stub: serving_pb2_grpc.PredictionServiceStub

    def predict(self, i: int = 0, token: str | None = TOKEN) -> pb.PredictResponse:
        """One authenticated Predict."""
        return self.stub.Predict(predict_request(record(i)), timeout=10,
                                 metadata=auth_metadata(token))

    def live(self) -> int:
        """The version answering unpinned requests now."""
        return int(self.predict().version)


@pytest.fixture
def serving(broker: str, make_pipeline: Callable[..., Pipeline]) -> Iterator[Serving]:
    """`python -m services.serving` on a free port with v1 of MODEL live."""
    pipeline = make_pipeline(broker)
    first = save_model(pipeline.settings)
    Registry(pipeline.settings).set_live(MODEL, first.version)
    addr = f"127.0.0.1:{free_port()}"
    env = {**pipeline.env, "LEPTON_SERVING_ADDR": addr, "LEPTON_SERVING_AUTH_TOKEN": TOKEN,
           "LEPTON_SERVING_ADMIN_TOKEN": ADMIN_TOKEN,
           "LEPTON_SERVING_MODELS": MODEL, "LEPTON_SERVING_KAFKA": "false",
           "LEPTON_SERVING_MAX_MESSAGE_BYTES": str(1 << 20),
           "LEPTON_SERVING_WARMUP_ROWS": "4", "LEPTON_SERVING_DRAIN_TIMEOUT_S": "5"}
    proc = pipeline.processes.start("serving", [sys.executable, "-m", "services.serving"], env)
    channel = grpc.insecure_channel(addr)
    server = Serving(pipeline, addr, proc.pid, channel,
                     serving_pb2_grpc.PredictionServiceStub(channel))

    def up() -> bool:
        try:
            return server.live() == first.version
        except grpc.RpcError:
            return False
    wait_until(up, "serving to answer", 60, lambda: pipeline.processes.check_alive("serving"))
    try:
        yield server
    finally:
        channel.close()


def _refusals(pipeline: Pipeline, expect: int) -> list[dict[str, object]]:
    records = read_topic(pipeline.settings, pipeline.topics.audit_requests, expect=expect,
                         timeout=30)
    return [d for d in (orjson.loads(r.value) for r in records) if d["kind"] == "model_refused"]


def _corrupt(registry: Registry, card: ModelCard) -> None:
    path = registry.version_dir(MODEL, card.version) / WEIGHTS_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_swaps_and_a_corrupt_model_under_grpc_load(
        serving: Serving, fault_report: FaultReport) -> None:
    settings = serving.pipeline.settings
    registry = Registry(settings)
    cards = [save_model(settings, seed=s) for s in range(1, SWAPS + 1)]
    corrupt = save_model(settings, seed=99)
    _corrupt(registry, corrupt)
    stop = threading.Event()
    failures: list[str] = []
    sent = Counter[str]()
    versions: Counter[int] = Counter()

    def client(n: int) -> None:
        channel = grpc.insecure_channel(serving.addr)
        stub = serving_pb2_grpc.PredictionServiceStub(channel)
        i = 0
        while not stop.is_set():
            i += 1
            try:
                if n == 0:
                    reply = stub.PredictBatch(pb.PredictBatchRequest(
                        requests=[predict_request(record(i + k)) for k in range(16)]),
                        timeout=10, metadata=auth_metadata(TOKEN))
                    got = [r.version for r in reply.responses]
                    sent["requests"] += 16
                else:
                    got = [stub.Predict(predict_request(record(i)), timeout=10,
                                        metadata=auth_metadata(TOKEN)).version]
                    sent["requests"] += 1
            except grpc.RpcError as error:
                failures.append(f"{error.code()}: {error.details()}")
                continue
            versions.update(got)
        channel.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    try:
        for card in cards:
            announce(settings, card)
            wait_until(lambda v=card.version: serving.live() == v, f"v{card.version} live", 30)
        announce(settings, corrupt)
        refused = _refusals(serving.pipeline, 1)
        time.sleep(1.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    live = serving.live()
    fault_report.add(ScenarioLine("serving 20 swaps", sent["requests"], sum(versions.values()),
                                  0, 0, len(failures),
                                  f"{len(set(versions))} versions answered"))
    assert failures == [], failures[:5]
    assert sum(versions.values()) == sent["requests"]
    assert [d["detail"]["version"] for d in refused] == [corrupt.version]  # type: ignore[index]
    assert live == cards[-1].version
    assert len(set(versions)) > SWAPS // 2


def _rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


def test_hostile_grpc_input_gets_clear_statuses(
        serving: Serving, fault_report: FaultReport) -> None:
    rng = random.Random(5)
    raw = serving.channel.unary_unary(PREDICT)  # bytes in, bytes out: no (de)serialisers
    valid = predict_request(record(0)).SerializeToString()
    for i in range(200):  # warm the process up before measuring
        serving.predict(i)
    before = _rss(serving.pid)
    codes: Counter[str] = Counter()
    ok_codes = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL,
                grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED,
                grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.FAILED_PRECONDITION}
    unclear: list[str] = []
    inputs = 0

    def call(payload: bytes, token: str | None = TOKEN) -> None:
        nonlocal inputs
        inputs += 1
        try:
            raw(payload, timeout=10, metadata=auth_metadata(token))
            codes["OK"] += 1
        except grpc.RpcError as error:
            codes[error.code().name] += 1
            if error.code() not in ok_codes:
                unclear.append(f"{error.code()}: {error.details()}")

    for _ in range(3000):
        kind = rng.randrange(3)
        if kind == 0:
            payload = rng.randbytes(rng.randrange(1, 200))
        elif kind == 1:
            data = bytearray(valid)
            for _ in range(rng.randrange(1, 8)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            payload = bytes(data)
        else:
            payload = valid[: rng.randrange(1, len(valid))]
        call(payload)
    for size in (2 << 20, 8 << 20):
        call(b"\x0a" + rng.randbytes(size))
    for _ in range(50):
        call(valid, token=None)
        call(valid, token="wrong-token")
    assert codes["UNAUTHENTICATED"] >= 100
    assert codes["RESOURCE_EXHAUSTED"] >= 2
    serving.pipeline.processes.check_alive("serving")
    assert serving.predict().version >= 1
    after = _rss(serving.pid)
    fault_report.add(ScenarioLine("bad input (gRPC)", inputs, codes["OK"], 0, 0, len(unclear),
                                  f"statuses {dict(codes)}; RSS {before >> 20}→{after >> 20} MB"))
    assert unclear == [], unclear[:5]
    assert after < before + (200 << 20), (before, after)


class _Payload:
    """Unpickling this creates the marker file: proof that a loader ran pickled code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, ...]]:
        return (os.system, (f"touch {self.marker}",))


def _resign(registry: Registry, card: ModelCard, weights: bytes,
            key: Ed25519PrivateKey | None = None) -> None:
    """Write `weights` and a card carrying their sha256, signed (by `key`, default the real
    signing key) — so only the artifact's format or signature can make it refused."""
    import hashlib

    folder = registry.version_dir(MODEL, card.version)
    (folder / WEIGHTS_FILE).write_bytes(weights)
    real = load_or_create_private_key(registry.signing_key_path())
    fixed = card.model_copy(update={"sha256": hashlib.sha256(weights).hexdigest(),
                                    "signature": ""})
    fixed = fixed.model_copy(update={"signature": sign(key or real, fixed.signed_bytes())})
    (folder / CARD_FILE).write_bytes(orjson.dumps(fixed.model_dump(mode="json")))


def test_poisoned_artifacts_are_refused_and_never_run(
        serving: Serving, fault_report: FaultReport, tmp_path: Path) -> None:
    settings = serving.pipeline.settings
    registry = Registry(settings)
    marker = tmp_path / "payload-ran"
    pickled, truncated, forged, good = (save_model(settings, seed=s) for s in (2, 3, 4, 5))
    _resign(registry, pickled, pickle.dumps({"weight": _Payload(marker)}))
    weights = (registry.version_dir(MODEL, truncated.version) / WEIGHTS_FILE).read_bytes()
    _resign(registry, truncated, weights[: len(weights) // 2])
    _resign(registry, forged, weights, key=Ed25519PrivateKey.generate())
    # a pickle also sits beside a valid artifact, where a careless loader might look
    (registry.version_dir(MODEL, good.version) / "model.pt").write_bytes(
        pickle.dumps(_Payload(marker)))

    bad = [pickled, truncated, forged]
    for card in bad:
        with pytest.raises(Exception, match=r"safetensors|signature|header|sha256"):
            registry.load(MODEL, card.version)
        announce(settings, Registry(settings).card(MODEL, card.version))
    refused = _refusals(serving.pipeline, len(bad))
    assert sorted(d["detail"]["version"] for d in refused) == [  # type: ignore[index]
        c.version for c in bad]
    assert serving.live() == 1
    announce(settings, good)
    wait_until(lambda: serving.live() == good.version, "the good version live", 30)
    serving.pipeline.processes.check_alive("serving")
    fault_report.add(ScenarioLine("model safety", len(bad) + 1, 1, 0, 0, 0,
                                  f"{len(refused)} refused; payload ran: {marker.exists()}"))
    assert not marker.exists(), "a pickle payload was executed"
    reasons = " | ".join(str(d["detail"]["reason"]) for d in refused)  # type: ignore[index]
    assert "signature" in reasons
