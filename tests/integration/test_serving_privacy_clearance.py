"""A DP release whose charge governance never accepted can never answer anyone, on any path:
an operator-signed override promote, a SetRollout with the admin token, a request pinning its
version, or `lepton models promote|canary|shadow` (exit 1, the live pointer unmoved). Rollbacks
must go below live and name a promoted version unless an operator overrides. Real server,
embedded broker, Redis; the live version keeps answering throughout."""

from __future__ import annotations

import grpc
import pytest

from services.serving.client import auth_metadata, predict_request
from services.serving.gen import serving_pb2 as pb
from shared.config import LeptonSettings
from shared.models.registry import Registry
from shared.principals import Principal
from tests.helpers import lepton
from tests.unit.serving.support import (
    ADMIN_TOKEN,
    MODEL,
    TOKEN,
    UNCHARGED,
    publish_announcement,
    record,
    running,
    save_model,
    serving_settings,
    signed_announcement,
    stub,
    wait_for,
)


def test_an_uncharged_release_never_answers(lepton_env: LeptonSettings) -> None:
    settings = serving_settings(serving_auth_token=TOKEN)
    registry = Registry(settings)
    v1 = save_model(settings)
    v2 = save_model(settings, seed=2, status="refused", privacy=UNCHARGED)
    v3 = save_model(settings, seed=3, status="refused")  # quality-refused, non-private
    v4 = save_model(settings, seed=4)
    registry.set_live(MODEL, v1.version)
    for name in ("trainer", "operator"):
        Principal.load(settings, name)  # type: ignore[arg-type]
    with running(settings) as server:
        watcher = server.app.watcher
        live = lambda: server.app.fleet.hosts[MODEL].rollout.live.version  # noqa: E731
        for action in ("promote", "canary", "shadow"):
            publish_announcement(settings, signed_announcement(
                settings, v2, action, 0.5 if action == "canary" else None, signer="operator",
                override=True))
        wait_for(lambda: watcher.refused >= 3, what="uncharged v2 refused on every action")
        assert live() == 1
        assert server.app.fleet.hosts[MODEL].rollout.candidate is None

        channel, service = stub(server.addr)
        with pytest.raises(grpc.RpcError) as pinned:
            service.Predict(predict_request(record(0), version=v2.version),
                            timeout=30, metadata=auth_metadata(TOKEN))
        assert pinned.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "never charged" in (pinned.value.details() or "")
        with pytest.raises(grpc.RpcError) as admin:
            service.SetRollout(pb.SetRolloutRequest(
                model=MODEL, action=pb.ROLLOUT_ACTION_PROMOTE, version=v2.version),
                timeout=30, metadata=auth_metadata(ADMIN_TOKEN))
        assert admin.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert live() == 1

        # rollbacks: up is no rollback, a gate-refused target needs an operator override
        publish_announcement(settings, signed_announcement(settings, v4))
        wait_for(lambda: live() == 4, what="v4 promoted")
        refused_before = watcher.refused
        publish_announcement(settings, signed_announcement(settings, v3, "rollback"))
        wait_for(lambda: watcher.refused == refused_before + 1, what="rollback to refused v3")
        publish_announcement(settings, signed_announcement(settings, v1, "promote"))
        publish_announcement(settings, signed_announcement(settings, v1, "rollback"))
        wait_for(lambda: live() == 1, what="signed rollback to v1")
        publish_announcement(settings, signed_announcement(settings, v4, "rollback"))
        wait_for(lambda: watcher.refused == refused_before + 3,
                 what="downgrading promote and upward rollback refused")
        assert live() == 1
        reply = service.Predict(predict_request(record(1)), timeout=30,
                                metadata=auth_metadata(TOKEN))
        assert reply.version == 1
        channel.close()

    for command in (("promote", "2"), ("canary", "2"), ("shadow", "2")):
        done = lepton("models", *command, "--model", MODEL, check=False)
        assert done.returncode == 1, done
        assert "never charged" in done.stderr
    assert registry.live(MODEL) == 1
