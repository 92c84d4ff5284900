"""Forged control plane: while events stream through ingest → governance → trainer and clients
predict from a real serving process, 1,000 hostile decisions (the poison record and fuzzed,
forged, out-of-bounds ones) go to `audit.requests` and 1,000 hostile announcements (unsigned,
replayed, wrongly signed, junk names, refused-status) to `models.updates`. Every event is still
governed, trained on and audited exactly once, the ledger equals its charges, the audit log
verifies, every refused decision is on the DLQ, serving answers every request with the live
version (0 failed, 0 wrong), and a signed rollback afterwards works."""

from __future__ import annotations

import threading
from collections import Counter

import grpc

from services.serving.client import auth_metadata, predict_request
from services.serving.gen import serving_pb2_grpc
from shared.events import Header, encode
from shared.models.registry import Registry
from shared.principals import Principal
from tests.faults.conftest import FaultReport, assert_exactly_once, wait_until
from tests.faults.test_serving import Serving, serving  # noqa: F401 (fixture)
from tests.helpers import read_topic
from tests.hostile import hostile_decisions
from tests.unit.serving.support import (
    MODEL,
    TOKEN,
    announce,
    publish_announcement,
    record,
    save_model,
    signed_announcement,
)

EVENTS = 4000
RATE = 800.0
HOSTILE = 1000


class Clients:
    """Predicting clients counting answers by version and failures."""

    def __init__(self, addr: str, n: int = 3) -> None:
        self.versions: Counter[int] = Counter()
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(addr, i)) for i in range(n)]
        for thread in self.threads:
            thread.start()

    def _run(self, addr: str, n: int) -> None:
        channel = grpc.insecure_channel(addr)
        stub = serving_pb2_grpc.PredictionServiceStub(channel)
        i = 0
        while not self.stop.is_set():
            i += 1
            try:
                reply = stub.Predict(predict_request(record(i), request_id=f"c{n}-{i}"),
                                     timeout=10, metadata=auth_metadata(TOKEN))
                self.versions[reply.version] += 1
            except grpc.RpcError as error:
                self.failures.append(f"{error.code()}: {error.details()}")
        channel.close()

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(20)


def _hostile_announcements(server: Serving) -> list[tuple[str, bytes]]:
    settings = server.pipeline.settings
    registry = Registry(settings)
    v1, v3 = registry.card(MODEL, 1), save_model(settings, seed=3, status="refused")
    replay = signed_announcement(settings, v1)  # genuine, but older than what will be live
    out: list[tuple[str, bytes]] = []
    for i in range(HOSTILE):
        kind = i % 5
        if kind == 0:
            out.append((MODEL, encode((v1 if i % 2 else v3).announcement())))
        elif kind == 1:
            out.append((MODEL, replay))
        elif kind == 2:
            out.append((MODEL, signed_announcement(settings, v1, signer="ingest",
                                                   sequence=10**9 + i)))
        elif kind == 3:
            junk = v1.announcement().model_copy(update={"model": f"junk-{i}"})
            out.append((f"junk-{i}", encode(junk)))
        else:
            forged = v3.announcement("canary", 0.5).model_copy(
                update={"sequence": 10**9 + i, "signer_key_id": "0" * 16,
                        "signer_signature": "AAAA"})
            out.append((MODEL, encode(forged)))
    return out


def test_forged_control_plane_under_load(serving: Serving,  # noqa: F811
                                         fault_report: FaultReport) -> None:
    pipeline = serving.pipeline
    settings = pipeline.settings
    for name in ("trainer", "operator", "ingest", "serving"):
        Principal.load(settings, name)  # type: ignore[arg-type]
    v2 = save_model(settings, seed=2)
    hostile_ann = _hostile_announcements(serving)
    announce(settings, v2)
    wait_until(lambda: serving.live() == v2.version, "v2 live", 60)

    events = pipeline.events(EVENTS, seed=12)
    pipeline.start_all()
    pipeline.feed(events, RATE)
    load = Clients(serving.addr)
    try:
        decisions = hostile_decisions(HOSTILE, seed=1212,
                                      signer=Principal.load(settings, "trainer"))
        from shared.kafka import make_producer

        producer = make_producer(settings, **{"linger.ms": 5})
        for i, value in enumerate(decisions):
            producer.produce(pipeline.topics.audit_requests, key=f"h{i % 11}".encode(),
                             value=value)
            if i % 100 == 0:
                producer.poll(0)
        assert producer.flush(30) == 0
        for key, value in hostile_ann:
            publish_announcement(settings, value, key, producer=producer)
        produced = pipeline.feed_done()
        assert produced.delivered == EVENTS, produced.errors
        pipeline.wait_trained(EVENTS, timeout=300)
        refused = [r for r in read_topic(settings, pipeline.topics.rejected, idle=2.0)
                   if r.headers.get(Header.DLQ_REASON) == b"decision_rejected"]
        assert len(refused) == HOSTILE
        assert serving.live() == v2.version
    finally:
        load.close()
    wrong = sum(n for v, n in load.versions.items() if v != v2.version)
    answered = sum(load.versions.values())
    pipeline.processes.check_alive("serving")

    # a genuine signed rollback still works after the storm
    announce(settings, Registry(settings).card(MODEL, 1), "rollback")
    wait_until(lambda: serving.live() == 1, "signed rollback to v1", 60)

    codes = pipeline.stop_all()
    assert codes == dict.fromkeys(codes, 0), codes
    assert_exactly_once(pipeline, events, "forged control plane", fault_report,
                        notes=f"{HOSTILE} hostile decisions + {HOSTILE} hostile announcements; "
                              f"{answered} predictions, {len(load.failures)} failed, "
                              f"{wrong} wrong version")
    assert load.failures == [], load.failures[:5]
    assert wrong == 0 and answered > 100
