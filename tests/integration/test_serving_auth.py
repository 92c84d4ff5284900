"""Admin separated from prediction over real gRPC: SetRollout needs the admin token (predict
token → PERMISSION_DENIED, none or wrong → UNAUTHENTICATED), Predict takes either token; a
missing or empty token stops a real `lepton serving` with exit 78, and running open needs an
explicit LEPTON_SERVING_AUTH=none, which warns."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from services.serving.auth import AuthResult, Credentials
from services.serving.gen import serving_pb2 as pb
from services.serving.server import ServingApp
from shared.config import ConfigError, LeptonSettings
from shared.lifecycle import parent_death
from shared.models.registry import Registry
from tests.unit.serving.support import (
    ADMIN_TOKEN,
    MODEL,
    TOKEN,
    call_predict,
    record,
    running,
    save_model,
    serving_settings,
    stub,
)


def _code(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()  # type: ignore[operator]
    return info.value.code()  # type: ignore[no-any-return]


def test_set_rollout_needs_the_admin_token(lepton_env: LeptonSettings, tmp_path: Path) -> None:
    admin_file = tmp_path / "admin.token"
    admin_file.write_text(ADMIN_TOKEN + "\n")
    settings = serving_settings(serving_auth_token=TOKEN, serving_admin_token=None,
                                serving_admin_token_file=admin_file)
    v1, _ = save_model(settings), save_model(settings, seed=2)
    Registry(settings).set_live(MODEL, v1.version)
    with running(settings) as server:
        channel, service = stub(server.addr)
        promote = pb.SetRolloutRequest(model=MODEL, action=pb.ROLLOUT_ACTION_PROMOTE, version=2)

        def rollout(token: str | None) -> object:
            meta = [("authorization", f"Bearer {token}")] if token else []
            return lambda: service.SetRollout(promote, timeout=30, metadata=meta)

        assert _code(rollout(TOKEN)) == grpc.StatusCode.PERMISSION_DENIED
        assert _code(rollout(None)) == grpc.StatusCode.UNAUTHENTICATED
        assert _code(rollout("guess")) == grpc.StatusCode.UNAUTHENTICATED
        assert Registry(settings).live(MODEL) == 1
        assert call_predict(service, record(), token=TOKEN).version == 1

        status = rollout(ADMIN_TOKEN)()
        assert status.live_version == 2  # type: ignore[attr-defined]
        assert call_predict(service, record(), token=ADMIN_TOKEN).version == 2
        assert _code(lambda: call_predict(service, record(), token=None)) == \
            grpc.StatusCode.UNAUTHENTICATED
        channel.close()


def test_credentials_check() -> None:
    creds = Credentials(b"Bearer p", b"Bearer a")
    assert creds.check("Bearer a", admin=True) is AuthResult.OK
    assert creds.check("Bearer p", admin=True) is AuthResult.PERMISSION_DENIED
    assert creds.check("Bearer p", admin=False) is AuthResult.OK
    assert creds.check("Bearer a", admin=False) is AuthResult.OK
    assert creds.check(None, admin=False) is AuthResult.UNAUTHENTICATED
    assert creds.check("Bearer x", admin=True) is AuthResult.UNAUTHENTICATED
    assert Credentials(None, None).check(None, admin=True) is AuthResult.OK


def test_missing_or_equal_tokens_are_configuration_errors(
        lepton_env: LeptonSettings, caplog: pytest.LogCaptureFixture) -> None:
    for overrides in ({"serving_auth": "token"},
                      {"serving_auth_token": TOKEN, "serving_admin_token": " "},
                      {"serving_auth_token": TOKEN, "serving_admin_token": TOKEN}):
        with pytest.raises(ConfigError):
            ServingApp(serving_settings(**overrides))
    with caplog.at_level(logging.WARNING, logger="services.serving.auth"):
        ServingApp(serving_settings(serving_auth="none"))
    assert any("LEPTON_SERVING_AUTH=none" in r.message for r in caplog.records)


def test_lepton_serving_with_an_empty_token_exits_78(lepton_env: LeptonSettings) -> None:
    env = {**os.environ, "LEPTON_SERVING_AUTH_TOKEN": "", "LEPTON_SERVING_ADMIN_TOKEN": "x",
           "LEPTON_SERVING_ADDR": "127.0.0.1:0", "LEPTON_SERVING_KAFKA": "false"}
    env.pop("LEPTON_SERVING_AUTH", None)
    done = subprocess.run([sys.executable, "-m", "lepton", "serving"], env=env,
                          capture_output=True, text=True, timeout=120, preexec_fn=parent_death())
    assert done.returncode == 78, done.stderr[-2000:]
    assert "LEPTON_SERVING_AUTH_TOKEN" in done.stderr
