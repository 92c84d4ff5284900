"""Hostile announcements on `models.updates` against a real server, the embedded broker and
Redis: unsigned, wrongly signed, replayed, downgraded, refused-status, trainer-"overridden" and
junk-name announcements are all refused while clients keep getting the live version with no
failed request; a signed rollback and an operator-signed override work. After Redis loses
everything (FLUSHALL of a private server) a restarted serving still refuses a replay: its floor
comes from the durable copy of the announcement sequence."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis

from services.serving.client import auth_metadata, predict_request
from shared.announcements import current_sequence, durable_sequence, sequence_key
from shared.config import LeptonSettings
from shared.events import encode
from shared.kafka import make_producer
from shared.models.registry import Registry
from shared.principals import Principal, PrincipalName
from tests.helpers import PrivateRedisServer, lepton
from tests.unit.serving.support import (
    MODEL,
    TOKEN,
    publish_announcement,
    record,
    running,
    save_model,
    serving_settings,
    signed_announcement,
    stub,
    wait_for,
)


def _live(server: Any) -> int:
    return int(server.app.fleet.hosts[MODEL].rollout.live.version)


class Load:
    """Clients predicting without pause; counts answers by version and failures."""

    def __init__(self, addr: str, clients: int = 3) -> None:
        self.versions: Counter[int] = Counter()
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(addr, n), daemon=True)
                        for n in range(clients)]
        for thread in self.threads:
            thread.start()

    def _run(self, addr: str, n: int) -> None:
        channel, service = stub(addr)
        i = 0
        while not self.stop.is_set():
            try:
                reply = service.Predict(predict_request(record(i), request_id=f"l{n}-{i}"),
                                        timeout=10, metadata=auth_metadata(TOKEN))
                self.versions[reply.version] += 1
            except grpc.RpcError as error:
                self.failures.append(f"{error.code()}: {error.details()}")
            i += 1
        channel.close()

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(10)


def test_hostile_announcements_are_refused_while_live_keeps_answering(
        lepton_env: LeptonSettings) -> None:
    settings = serving_settings(serving_auth_token=TOKEN)
    registry = Registry(settings)
    v1, v2 = save_model(settings), save_model(settings, seed=2)
    v3 = save_model(settings, seed=3, status="refused")
    registry.set_live(MODEL, v1.version)
    names: tuple[PrincipalName, ...] = ("trainer", "operator", "ingest")
    for name in names:
        Principal.load(settings, name)
    with running(settings) as server:
        watcher = server.app.watcher
        replay = signed_announcement(settings, v1)
        publish_announcement(settings, signed_announcement(settings, v2))
        wait_for(lambda: _live(server) == 2, what="v2 live by a signed promote")
        load = Load(server.addr)
        try:
            hostile = [
                encode(v1.announcement("promote")),                        # unsigned
                signed_announcement(settings, v1, signer="ingest"),        # not an announcer
                replay,                                                    # replayed v1 promote
                signed_announcement(settings, v1),                         # downgrade
                signed_announcement(settings, v3),                         # gate refused v3
                signed_announcement(settings, v3, "canary", 0.5),
                signed_announcement(settings, v3, override=True),          # trainer can't override
            ]
            producer = make_producer(settings, **{"linger.ms": 0})
            for value in hostile:
                publish_announcement(settings, value, producer=producer)
            for i in range(300):
                junk = v1.announcement().model_copy(update={"model": f"junk-{i}"})
                publish_announcement(settings, encode(junk), key=f"junk-{i}",
                                     producer=producer)
            wait_for(lambda: watcher.refused >= len(hostile) + 300, timeout=60,
                     what="every hostile announcement refused")
            assert _live(server) == 2
            assert set(server.app.fleet.hosts) == {MODEL}
            assert server.app.fleet.hosts[MODEL].rollout.candidate is None
            during = Counter(load.versions)
            assert set(during) == {2}, during

            publish_announcement(settings, signed_announcement(settings, v1, "rollback"))
            wait_for(lambda: _live(server) == 1, what="signed rollback to v1")
            publish_announcement(settings, signed_announcement(settings, v3, signer="operator",
                                                               override=True))
            wait_for(lambda: _live(server) == 3, what="operator-signed override of v3")
        finally:
            load.close()
        assert load.failures == []
        assert sum(load.versions.values()) > 100
        assert watcher.refused == len(hostile) + 300


def test_pinned_loads_are_single_flight_and_cannot_be_thrashed(
        lepton_env: LeptonSettings) -> None:
    settings = serving_settings(serving_auth_token=TOKEN, serving_pinned_cache=2,
                                serving_pinned_loads_per_min=4)
    cards = [save_model(settings, seed=s) for s in range(7)]
    Registry(settings).set_live(MODEL, cards[0].version)
    with running(settings) as server:
        loader = server.app.fleet.loader
        loads: Counter[int] = Counter()
        real_load = loader.load

        def counted(name: str, version: int) -> Any:
            loads[version] += 1
            return real_load(name, version)

        loader.load = counted  # type: ignore[method-assign]
        channel, service = stub(server.addr)
        meta = auth_metadata(TOKEN)
        codes: Counter[str] = Counter()

        def pinned(version: int, rid: str) -> None:
            try:
                reply = service.Predict(predict_request(record(0), request_id=rid,
                                                        version=version),
                                        timeout=30, metadata=meta)
                assert reply.version == version
                codes["OK"] += 1
            except grpc.RpcError as error:
                codes[str(error.code().name)] += 1

        same = [threading.Thread(target=pinned, args=(5, f"s{i}")) for i in range(8)]
        for thread in same:
            thread.start()
        for thread in same:
            thread.join(60)
        assert loads[5] == 1 and codes["OK"] == 8, (loads, codes)

        codes.clear()
        for i in range(60):  # round robin over more versions than the cache holds
            pinned(2 + i % 5, f"rr{i}")
        assert sum(loads.values()) <= 4, loads
        assert codes["RESOURCE_EXHAUSTED"] > 0 and set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}
        assert call_live(service) == cards[0].version
        channel.close()


def call_live(service: Any) -> int:
    """The version an unpinned request is answered by."""
    reply = service.Predict(predict_request(record(1)), timeout=10,
                            metadata=auth_metadata(TOKEN))
    return int(reply.version)


def test_a_replay_is_refused_after_redis_loses_everything(
        lepton_env: LeptonSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "redis").mkdir()
    server = PrivateRedisServer(str(tmp_path / "redis"), aof=False, rdb=False).start()
    try:
        monkeypatch.setenv("LEPTON_REDIS_URL", server.url)
        settings = serving_settings(serving_auth_token=TOKEN)
        registry = Registry(settings)
        v1, v2 = save_model(settings), save_model(settings, seed=2)
        registry.set_live(MODEL, v1.version)
        with running(settings) as first:
            old = signed_announcement(settings, v2)  # genuine: sequence 1
            publish_announcement(settings, old)
            wait_for(lambda: _live(first) == 2, what="v2 live")
            publish_announcement(settings, signed_announcement(settings, v1, "rollback"))
            wait_for(lambda: _live(first) == 1, what="rolled back to v1")
        assert durable_sequence(settings, MODEL) == 2

        redis.Redis.from_url(server.url).flushall()
        assert current_sequence(registry.redis, settings, MODEL) == 2  # from the durable copy
        with running(settings) as second:
            assert _live(second) == 1  # live.json brought the pointer back
            watcher = second.app.watcher
            publish_announcement(settings, old)  # the replay: sequence 1 ≤ floor 2
            wait_for(lambda: watcher.refused == 1, what="the replay refused")
            assert _live(second) == 1
            fresh = signed_announcement(settings, v2)  # the counter resumes above the floor
            publish_announcement(settings, fresh)
            wait_for(lambda: _live(second) == 2, what="a new signed promote applied")
            assert watcher.refused == 1

        redis.Redis.from_url(server.url).flushall()
        assert "announcement sequence 3" in lepton("state", "rebuild").stdout
        assert registry.redis.get(sequence_key(settings, MODEL)) == b"3"
    finally:
        server.stop()
