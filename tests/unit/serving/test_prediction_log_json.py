"""The prediction log writes each record with orjson directly: the bytes must be exactly what
encoding the PredictionLogRecord model gives (the oracle), and decode as one."""

from __future__ import annotations

import random

from services.serving.prediction_log import entry_json
from services.serving.predictor import Call, Prediction
from services.serving.router import Route
from shared.events import Scalar, decode, encode
from shared.models.predictions import PredictionLogRecord


def _inputs(rng: random.Random) -> dict[str, Scalar]:
    values: list[Scalar] = [rng.uniform(-1e6, 1e6), rng.randrange(-10**12, 10**12), 1e16, 1e-7,
                            0.1, 5e-324, 1.7976931348623157e308, 2**53 + 1, True, False,
                            "grocery", "é\u2028\"quoted\"\\", ""]
    return {f"field_{i}": rng.choice(values) for i in range(rng.randrange(1, 12))}


def test_log_records_are_the_models_json_byte_for_byte() -> None:
    rng = random.Random(3)
    for i in range(500):
        route = rng.choice(list(Route))
        prediction = Prediction(f"req-{i}", "fraud", rng.randrange(1, 99), rng.random(),
                                rng.random() < 0.5, route)
        call = Call("v2-grpc" if i % 2 else "http",
                    rng.choice([None, f"00-{i:032x}-{i:016x}-01"]), 100.0 + i)
        raw = entry_json(call, prediction, _inputs(rng), 100.0 + i + rng.random() / 10)
        entry = decode(PredictionLogRecord, raw)
        assert encode(entry) == raw
        assert (entry.request_id, entry.version, entry.route, entry.score) == (
            prediction.request_id, prediction.version, route.value, prediction.score)
        assert 0 <= entry.latency_ms <= 100
