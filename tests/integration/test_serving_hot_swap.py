"""Hot-swap and rollout over real gRPC, the embedded broker and Redis: swaps under load with
zero failures, refusal of corrupt/unsigned/mismatched artifacts (live keeps serving, decision
recorded, swap span continues the announcer's trace), canary share, shadow, pinning,
promotion and rollback through announcements and the API."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import grpc
import orjson
import pytest

from services.serving.client import auth_metadata, predict_request
from services.serving.gen import serving_pb2 as pb
from shared.config import LeptonSettings
from shared.events import ModelAnnouncement, decode
from shared.models.registry import CARD_FILE, WEIGHTS_FILE, Registry
from shared.topics import Topics
from tests.helpers import read_topic
from tests.unit.serving.support import (
    ADMIN_TOKEN,
    MODEL,
    TOKEN,
    announce,
    call_predict,
    record,
    running,
    save_model,
    serving_settings,
    span_exporter,
    stub,
    wait_for,
)

CLIENTS = 4
SWAPS = 20


def _live(server: Any) -> int:
    return int(server.app.fleet.hosts[MODEL].rollout.live.version)


def test_twenty_swaps_under_load_fail_no_request(lepton_env: LeptonSettings) -> None:
    settings = serving_settings(serving_auth_token=TOKEN)
    first = save_model(settings)
    cards = [save_model(settings, seed=i) for i in range(1, SWAPS + 1)]
    Registry(settings).set_live(MODEL, first.version)
    failures: list[str] = []
    answers: list[tuple[int, int, int]] = []
    stop = threading.Event()

    with running(settings) as server:
        def client(n: int) -> None:
            channel, service = stub(server.addr)
            i = 0
            while not stop.is_set():
                before = _live(server)
                try:
                    if n == 0:
                        reply = service.PredictBatch(pb.PredictBatchRequest(
                            requests=[predict_request(record(i + k)) for k in range(8)]),
                            timeout=10, metadata=auth_metadata(TOKEN))
                        versions = [r.version for r in reply.responses]
                    else:
                        versions = [call_predict(service, record(i)).version]
                except grpc.RpcError as error:
                    failures.append(f"{error.code()}: {error.details()}")
                    continue
                after = _live(server)
                answers.extend((before, v, after) for v in versions)
                i += 1
            channel.close()

        threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
        for thread in threads:
            thread.start()
        try:
            for card in cards:
                announce(settings, card)
                wait_for(lambda v=card.version: _live(server) == v, what=f"v{card.version} live")
                time.sleep(0.05)
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
        assert server.app.fleet.swaps >= SWAPS + 1

    assert failures == []
    assert len(answers) > 200
    assert all(before <= version <= after for before, version, after in answers), \
        [a for a in answers if not a[0] <= a[1] <= a[2]][:5]
    assert len({version for _, version, _ in answers}) > SWAPS // 2


def _refusals(settings: LeptonSettings, expect: int) -> list[dict[str, Any]]:
    records = read_topic(settings, Topics(settings.topic_prefix).audit_requests, expect=expect,
                         timeout=20)
    return [orjson.loads(r.value) for r in records]


def test_corrupt_unsigned_or_mismatched_models_are_refused_and_live_keeps_serving(
    lepton_env: LeptonSettings,
) -> None:
    exporter = span_exporter()
    settings = serving_settings(serving_auth_token=TOKEN)
    registry = Registry(settings)
    v1 = save_model(settings)
    registry.set_live(MODEL, v1.version)
    corrupt, unsigned, mismatched, good = (save_model(settings, seed=s) for s in (2, 3, 4, 5))
    weights = registry.version_dir(MODEL, corrupt.version) / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF
    weights.write_bytes(bytes(data))
    card_path = registry.version_dir(MODEL, unsigned.version) / CARD_FILE
    card_json = orjson.loads(card_path.read_bytes())
    card_json["signature"] = ""
    card_path.write_bytes(orjson.dumps(card_json))
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"

    with running(settings) as server:
        channel, service = stub(server.addr)
        announce(settings, corrupt, traceparent=f"00-{trace_id}-00f067aa0ba902b7-01")
        announce(settings, unsigned)
        forged = mismatched.model_copy(update={"sha256": corrupt.sha256})
        announce(settings, forged)
        decisions = _refusals(settings, 3)
        assert [d["kind"] for d in decisions] == ["model_refused"] * 3
        assert [d["detail"]["version"] for d in decisions] == \
            [corrupt.version, unsigned.version, mismatched.version]
        reasons = [d["detail"]["reason"] for d in decisions]
        assert "sha256" in reasons[0]
        assert "unsigned" in reasons[1]
        assert "announced sha256" in reasons[2]
        assert _live(server) == v1.version
        assert call_predict(service, record()).version == v1.version

        announce(settings, good)
        wait_for(lambda: _live(server) == good.version, what="the good version live")
        assert call_predict(service, record()).version == good.version
        channel.close()

    swaps = [s for s in exporter.get_finished_spans() if s.name == "serving swap"
             and s.attributes and s.attributes.get("lepton.model.version") == corrupt.version]
    assert swaps, "no swap span for the corrupt version"
    assert swaps[-1].attributes is not None
    assert swaps[-1].attributes["lepton.swap.outcome"] == "refused"
    assert f"{swaps[-1].context.trace_id:032x}" == trace_id


def test_canary_share_and_pinned_versions(lepton_env: LeptonSettings) -> None:
    settings = serving_settings(serving_auth_token=TOKEN)
    v1, v2 = save_model(settings), save_model(settings, seed=2)
    Registry(settings).set_live(MODEL, v1.version)
    share = 0.25
    with running(settings) as server:
        channel, service = stub(server.addr)
        announce(settings, v2, "canary", share)
        wait_for(lambda: server.app.fleet.hosts[MODEL].rollout.candidate is not None,
                 what="the canary")
        meta = auth_metadata(TOKEN)
        counts = {1: 0, 2: 0}
        routes = set()
        for chunk in range(10):
            reply = service.PredictBatch(pb.PredictBatchRequest(requests=[
                predict_request(record(i), request_id=f"c{chunk}-{i}") for i in range(1000)]),
                timeout=30, metadata=meta)
            for r in reply.responses:
                counts[r.version] += 1
                routes.add((r.version, r.route))
        assert sum(counts.values()) == 10_000
        assert abs(counts[2] / 10_000 - share) < 0.02, counts
        assert routes == {(1, pb.ROUTE_LIVE), (2, pb.ROUTE_CANARY)}

        again = service.PredictBatch(pb.PredictBatchRequest(requests=[
            predict_request(record(i), request_id=f"c0-{i}") for i in range(1000)]),
            timeout=30, metadata=meta)
        first = service.PredictBatch(pb.PredictBatchRequest(requests=[
            predict_request(record(i), request_id=f"c0-{i}") for i in range(1000)]),
            timeout=30, metadata=meta)
        assert [r.version for r in again.responses] == [r.version for r in first.responses]

        pinned = service.PredictBatch(pb.PredictBatchRequest(requests=[
            predict_request(record(i), version=1) for i in range(500)]),
            timeout=30, metadata=meta)
        assert {(r.version, r.route) for r in pinned.responses} == {(1, pb.ROUTE_PINNED)}
        assert call_predict(service, record(), version=2).route == pb.ROUTE_PINNED
        channel.close()


def test_shadow_promote_and_rollback_through_api_and_announcements(
    lepton_env: LeptonSettings, caplog: pytest.LogCaptureFixture,
) -> None:
    settings = serving_settings(serving_auth_token=TOKEN)
    registry = Registry(settings)
    v1 = save_model(settings)
    save_model(settings, seed=2)
    registry.set_live(MODEL, v1.version)
    topic = Topics(settings.topic_prefix).models
    with running(settings) as server:
        channel, service = stub(server.addr)
        meta = auth_metadata(ADMIN_TOKEN)

        status = service.SetRollout(pb.SetRolloutRequest(
            model=MODEL, action=pb.ROLLOUT_ACTION_SHADOW, version=2), timeout=30, metadata=meta)
        assert (status.live_version, status.candidate_version) == (1, 2)
        assert status.candidate_mode == pb.CANDIDATE_MODE_SHADOW
        with caplog.at_level(logging.INFO, logger="services.serving.shadow"):
            replies = [call_predict(service, record(i), request_id=f"sh{i}") for i in range(20)]
            wait_for(lambda: sum("candidate=v2" in r.message for r in caplog.records) >= 20,
                     what="shadow results logged")
        assert {r.version for r in replies} == {1}
        assert any("request_id=sh7" in r.message for r in caplog.records)

        status = service.SetRollout(pb.SetRolloutRequest(
            model=MODEL, action=pb.ROLLOUT_ACTION_PROMOTE, version=2), timeout=30, metadata=meta)
        assert (status.live_version, status.previous_version, status.candidate_version) == \
            (2, 1, 0)
        assert registry.live(MODEL) == 2
        assert call_predict(service, record()).version == 2

        announce(settings, v1, "rollback")
        wait_for(lambda: _live(server) == 1, what="rollback to v1 by announcement")
        assert call_predict(service, record()).version == 1

        with pytest.raises(grpc.RpcError) as info:
            service.SetRollout(pb.SetRolloutRequest(model=MODEL, action=pb.ROLLOUT_ACTION_ROLLBACK),
                               timeout=30, metadata=meta)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert _live(server) == 1
        channel.close()

    published = [decode(ModelAnnouncement, r.value) for r in read_topic(settings, topic)]
    assert [(a.action, a.version) for a in published] == \
        [("shadow", 2), ("promote", 2), ("rollback", 1)]
