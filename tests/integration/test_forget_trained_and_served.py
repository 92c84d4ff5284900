"""Forgetting reaches what the trainer and serving made of a subject, with every service a real
process (logs at DEBUG to files), the embedded broker and a PRIVATE redis-server with AOF on:
a subject's events, some invalid, go through ingest → governance → a DP-SGD trainer cycle that
releases a charged, promoted model; serving (prediction log on) answers gRPC and HTTP requests
carrying the subject's PII, and refuses an invalid one; `lepton forget` lists the model and
marks it `contains_forgotten: true`. Then every byte of events.clean/governed/rejected,
predictions.log, the Redis AOF/RDB, the data directory (keys, governance, registry) and the four
services' logs holds none of the subject's PII values nor its raw id, the subject's wrapped and
raw data key are in none of them, and none of its ciphertexts or dead letters opens with any
key the platform still holds."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import orjson
import pytest

from lepton.generators import transactions
from services.governance.config import GovernanceSettings
from services.governance.verify import find_subject
from services.ingest.ciphers import is_ciphertext
from services.ingest.keystore import KeyStore
from services.serving.client import auth_metadata, predict_request
from services.serving.gen import serving_pb2_grpc
from shared.config import LeptonSettings
from shared.crypto import CryptoError
from shared.dlq import DeadLetterOpener
from shared.events import Envelope
from shared.kafka import make_producer
from shared.lifecycle import parent_death
from shared.models.registry import Registry
from shared.topics import Topics
from tests.helpers import PrivateRedisServer, TopicCollector, lepton

VICTIM = "subject-ada-okafor-7731"
PII = {"email": "ada.okafor.7731@example.com", "name": "Ada Okafor", "card_number":
       "4111111111111111"}
MODEL = "transactions"
TOKEN, ADMIN = "predict-token-forget", "admin-token-forget"
EVENTS = 1200


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Processes:
    """Services as `python -m services.<name>` in their own sessions, stdout+stderr to files."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        logs.mkdir()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start service `name` with the test environment (plus `env`)."""
        with (self.logs / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", f"services.{name}"],
                                    env={**os.environ, **(env or {})}, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    preexec_fn=parent_death())
        self.procs[name] = proc
        return proc

    def stop(self, name: str) -> int:
        """SIGTERM `name`; its exit status."""
        proc = self.procs[name]
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        return proc.wait(30)

    def alive(self, *names: str) -> None:
        """Fail with the log of a service that exited."""
        for name in names:
            if self.procs[name].poll() is not None:
                raise AssertionError(f"{name} exited {self.procs[name].returncode}:\n"
                                     + (self.logs / f"{name}.log").read_text()[-3000:])

    def tails(self) -> str:
        """The last lines above DEBUG of every service's log (for a failure message)."""
        out = []
        for path in sorted(self.logs.iterdir()):
            lines = [line for line in path.read_text(errors="replace").splitlines()
                     if '"level": "DEBUG"' not in line]
            out += [f"--- {path.name}", *lines[-12:]]
        return "\n".join(out)

    def close(self) -> None:
        """SIGKILL whatever still runs."""
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(15)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path / "logs")
    try:
        yield procs
    finally:
        procs.close()


@pytest.fixture
def aof_redis(tmp_path: Path, lepton_env: LeptonSettings, monkeypatch: pytest.MonkeyPatch
              ) -> Iterator[PrivateRedisServer]:
    (tmp_path / "redis").mkdir()
    server = PrivateRedisServer(str(tmp_path / "redis")).start()
    for name, value in {
            "LEPTON_REDIS_URL": server.url, "LEPTON_LOG_LEVEL": "DEBUG",
            "LEPTON_INGEST_INSTANCE": "forget", "LEPTON_GOVERNANCE_CHECKPOINT_SECONDS": "1",
            "LEPTON_GOVERNANCE_FSYNC": "false", "LEPTON_TRAINER_DATASET": MODEL,
            "LEPTON_TRAINER_EXIT_WHEN_IDLE_S": "3", "LEPTON_TRAINER_MAX_WAIT_S": "0.5",
            "LEPTON_TRAINER_BATCH_SIZE": "2000",
            # a few hundred rows: per-age-band rates are too coarse for the default bounds
            "LEPTON_TRAINER_MAX_DP_DIFF": "1", "LEPTON_TRAINER_MAX_EO_DIFF": "1"}.items():
        monkeypatch.setenv(name, value)
    yield server
    server.stop()


def _victim_docs() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The victim's valid events and invalid ones (subject known: sealed under its key)."""
    mine = [orjson.loads(e.model_dump_json()) for e in transactions(5, seed=77)]
    for i, doc in enumerate(mine):
        doc["event_id"] = f"victim-{i}"
        doc["subject_id"] = doc["payload"]["customer_id"] = VICTIM
        doc["payload"].update(PII)
    valid, invalid = mine[:3], mine[3:]
    invalid[0]["payload"]["hour"] = 24                 # out_of_range
    invalid[1]["payload"]["amount"] = "twelve dollars"  # wrong_type
    return valid, invalid


def _record(doc: dict[str, Any]) -> dict[str, Any]:
    record = dict(doc["payload"])
    record.pop("is_fraud")
    return record


def test_forget_reaches_the_trainer_and_serving(
        aof_redis: PrivateRedisServer, lepton_env: LeptonSettings, processes: Processes,
        tmp_path: Path) -> None:
    settings = GovernanceSettings()
    topics = Topics(settings.topic_prefix)
    docs = [orjson.loads(e.model_dump_json())
            for e in transactions(EVENTS, seed=5, customers=EVENTS)]
    valid, invalid = _victim_docs()
    collector = TopicCollector(lepton_env, [topics.clean, topics.governed, topics.rejected,
                                            topics.prediction_log])
    try:
        processes.start("ingest")
        processes.start("governance")
        producer = make_producer(settings)
        for doc in [*valid, *invalid, *docs]:
            producer.produce(topics.raw, key=str(doc["subject_id"]).encode(),
                             value=orjson.dumps(doc))
        assert producer.flush(30) == 0
        store = KeyStore(settings)
        pv = store.pseudonyms.of(VICTIM)
        _wait("every event decided", lambda: len(_decided(settings)) >= EVENTS + 3,
              processes, 120)
        # one of the subject's events is released (the spec's bound: one per release)
        kinds = Counter(r["kind"] for _, _, r in find_subject(settings.audit_dir(), pv))
        assert (kinds["event_released"], kinds["event_withheld"]) == (1, 2)

        trainer = processes.start("trainer")
        grpc_port, http_port = _free_port(), _free_port()
        processes.start("serving", {  # before any model: it takes the trainer's announcement
            "LEPTON_SERVING_ADDR": f"127.0.0.1:{grpc_port}",
            "LEPTON_SERVING_HTTP_ADDR": f"127.0.0.1:{http_port}",
            "LEPTON_SERVING_MODELS": MODEL, "LEPTON_SERVING_AUTH_TOKEN": TOKEN,
            "LEPTON_SERVING_ADMIN_TOKEN": ADMIN, "LEPTON_SERVING_KAFKA": "false",
            "LEPTON_SERVING_LOG_SAMPLE": "1", "LEPTON_SERVING_WARMUP_ROWS": "4"})
        _wait("the trainer's release", lambda: trainer.poll() is not None, processes, 240,
              ("ingest", "governance", "serving"))
        assert trainer.returncode == 0, (tmp_path / "logs" / "trainer.log").read_text()[-3000:]
        registry = Registry(settings)
        version = registry.live(MODEL)
        assert version is not None
        card = registry.card(MODEL, version)
        assert card.status == "promoted" and card.privacy["ledger"]["status"] == "charged"

        channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        service = serving_pb2_grpc.PredictionServiceStub(channel)
        meta = auth_metadata(TOKEN)
        _wait("serving to answer", lambda: _answers(service, _record(valid[0]), meta),
              processes, 90, ("serving",))
        answered = 1
        for doc in valid[1:]:
            reply = service.Predict(predict_request(_record(doc), request_id=f"g-{answered}"),
                                    timeout=10, metadata=meta)
            assert reply.version == version
            answered += 1
        bad = _record(invalid[0])
        with pytest.raises(grpc.RpcError) as refused:
            service.Predict(predict_request(bad), timeout=10, metadata=meta)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        channel.close()
        with httpx.Client(base_url=f"http://127.0.0.1:{http_port}",
                          headers={"authorization": f"Bearer {TOKEN}"}) as http:
            ok = http.post(f"/v1/models/{MODEL}:predict", json=[_record(d) for d in valid])
            assert ok.status_code == 200, ok.text
            answered += len(valid)
            assert http.post(f"/v1/models/{MODEL}:predict", json=bad).status_code == 400
        logged = collector.wait_for(topics.prediction_log, answered, 30)
        assert len(logged) == answered

        wrapped = store.redis.get(store.key_prefix + store.data_key_id(VICTIM))
        assert wrapped is not None
        raw_key = store.unwrap(store.data_key_id(VICTIM), wrapped)
        out = lepton("forget", VICTIM).stdout
        assert f"model {MODEL} v{version}: trained on the subject's data" in out
        assert registry.flags(MODEL, version)["contains_forgotten"] is True
        _wait("the forget sealed", lambda: "subject_forgotten" in {
            r["kind"] for _, _, r in find_subject(settings.audit_dir(), pv)}, processes, 60)
        for name in ("serving", "ingest", "governance"):
            assert processes.stop(name) == 0, name
        # every record the services wrote is in the collector before it stops
        collector.wait_for(topics.clean, EVENTS + 3, 30)
        collector.wait_for(topics.governed, card.lineage["rows"]["consumed"], 30)
        assert collector.count(topics.clean) == EVENTS + 3
        assert collector.count(topics.governed) == card.lineage["rows"]["consumed"]
        assert collector.count(topics.rejected) == len(invalid)
    finally:
        collector.stop()

    secrets = {v.encode() for v in PII.values()} | {VICTIM.encode()}
    hidden = [wrapped, wrapped.split(b".", 1)[1], raw_key, base64.b64encode(raw_key),
              base64.urlsafe_b64encode(raw_key).rstrip(b"="), raw_key.hex().encode()]
    records = [r for rs in collector.records.values() for r in rs]
    blob = b"\n".join(r.value + (r.key or b"") + b"".join(r.headers.values()) for r in records)
    files = [p for root in (settings.data_dir, Path(aof_redis.directory), tmp_path / "logs")
             for p in root.rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in files)
    assert {p.name for p in (tmp_path / "logs").iterdir()} == {
        "ingest.log", "governance.log", "trainer.log", "serving.log"}
    blob += b"\n".join(p.read_bytes() for p in files)
    assert [s for s in secrets if s in blob] == []
    assert [h for h in hidden if h in blob] == []

    # nothing the platform still holds opens the subject's ciphertexts or dead letters
    fresh = KeyStore(LeptonSettings())
    assert fresh.data_keys([VICTIM], create=False) == ({}, {VICTIM: "forgotten"})
    opener = DeadLetterOpener.load(settings, fresh.open_bytes)
    victim_records = [r for r in records if r.key == pv.encode()]
    assert {r.topic for r in victim_records} == {topics.clean, topics.governed, topics.rejected}
    for record in victim_records:
        if record.topic == topics.rejected:
            with pytest.raises(CryptoError):
                opener.open(record.value)
            continue
        env = Envelope.model_validate_json(record.value)
        protected = [(k, v) for k, v in env.payload.items() if is_ciphertext(v)]
        assert protected
        for name, value in protected:
            with pytest.raises(CryptoError):
                fresh.decrypt_field(env.event_id, name, str(value))
    # the prediction log carries no PII field and no subject id at all, not even protected
    for record in collector.records[topics.prediction_log]:
        inputs = orjson.loads(record.value)["inputs"]
        assert not {"email", "name", "card_number", "customer_id"} & set(inputs)


def _answers(service: Any, record: dict[str, Any], meta: Any) -> bool:
    try:
        service.Predict(predict_request(record, request_id="g-0"), timeout=5, metadata=meta)
    except grpc.RpcError as error:
        if error.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND):
            raise
        return False
    return True


def _wait(what: str, check: Any, processes: Processes, timeout: float,
          alive: tuple[str, ...] = ("ingest", "governance")) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        processes.alive(*alive)
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{processes.tails()}"
        time.sleep(0.2)


def _decided(settings: GovernanceSettings) -> set[str]:
    """Event ids governance has decided (released or withheld)."""
    out: set[str] = set()
    for seg in settings.audit_dir().glob("p*/segments/*.seg"):
        for line in seg.read_bytes().splitlines():
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:  # a line governance is still writing
                continue
            if record["identity"].startswith("event:"):
                out.add(record["event_id"])
    return out
