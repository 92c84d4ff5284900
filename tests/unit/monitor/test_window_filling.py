"""The monitor's stage stores how far a version's first window has filled (real Redis): at
each tenth of the window, and at least every FILLING_EVERY_S while predictions come."""

from __future__ import annotations

import orjson

from services.monitor.config import MonitorSettings
from services.monitor.stage import FILLING_EVERY_S, MonitorStage, Window
from shared.config import LeptonSettings, load_settings
from shared.state import rkey


def test_filling_is_stored_per_tenth_and_while_slow_predictions_come(
        lepton_env: LeptonSettings) -> None:
    settings = load_settings(MonitorSettings)
    stage = MonitorStage(settings)
    window = stage.windows[("transactions", 1)] = Window(100)
    key = rkey(settings, "monitor", "report", "transactions", "1")

    def stored() -> object:
        return orjson.loads(stage.redis.get(key) or b"{}").get("filling")

    def predict(count: int) -> None:
        for _ in range(count):
            window.inputs.append({})
        stage._filling({("transactions", 1)})

    predict(1)
    assert stored() == {"predictions": 1, "window": 100}
    predict(3)  # same tenth, moments later: not rewritten
    assert stored() == {"predictions": 1, "window": 100}
    window.shown_at -= FILLING_EVERY_S
    predict(1)
    assert stored() == {"predictions": 5, "window": 100}
    predict(5)  # the second tenth
    assert stored() == {"predictions": 10, "window": 100}
    predict(90)  # full: the drift report takes over
    assert stored() == {"predictions": 10, "window": 100}
