"""Serving settings fail fast with a line naming the variable."""

from __future__ import annotations

import subprocess
import sys

import pytest

from services.serving.config import ServingSettings
from shared.lifecycle import parent_death


def test_defaults() -> None:
    settings = ServingSettings()
    assert settings.serving_addr == "0.0.0.0:50051"
    assert settings.predict_token() is None and settings.admin_token() is None
    assert settings.serving_auth == "token"  # no tokens and no explicit "none": exit 78
    assert ServingSettings(serving_models=" a, b ,").model_names() == ["a", "b"]


@pytest.mark.parametrize(("env", "message"), [
    ({"LEPTON_SERVING_ADDR": "nowhere"}, "LEPTON_SERVING_ADDR: must be HOST:PORT"),
    ({"LEPTON_SERVING_TLS_KEY": "/k.pem"}, "LEPTON_SERVING_TLS_KEY: goes together"),
    ({"LEPTON_SERVING_BATCH_MAX_SIZE": "0"}, "LEPTON_SERVING_BATCH_MAX_SIZE"),
])
def test_bad_settings_exit_with_a_readable_line(env: dict[str, str], message: str) -> None:
    code = ("from shared.config import load_settings\n"
            "from services.serving.config import ServingSettings\n"
            "load_settings(ServingSettings)\n")
    result = subprocess.run([sys.executable, "-c", code], env=env | {"PATH": ""},
                            capture_output=True, text=True, timeout=60, preexec_fn=parent_death())
    assert result.returncode == 78
    assert message in result.stderr
