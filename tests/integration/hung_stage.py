"""A service whose stage can hang, for the liveness test: `python hung_stage.py` runs a stage
on the shared transactional runtime under `run_service` (so with the real telemetry setup and
metrics endpoint, LEPTON_METRICS_PORT) that copies `<prefix>hang.in` to `<prefix>hang.out`.
A record whose value is b"hang" blocks `process` forever, standing for a call that never
returns; the process prints "hung" first. Settings come from LEPTON_* like any Lepton process.
"""

from __future__ import annotations

import threading

from confluent_kafka import Message

from shared.config import LeptonSettings
from shared.stage import Output, TransactionalRuntime, run_service


class HangingStage:
    """Copies records; blocks forever on b"hang"."""

    name = "hangs"
    waits_out: tuple[type[BaseException], ...] = ()

    def __init__(self, prefix: str) -> None:
        self.inputs = [f"{prefix}hang.in"]
        self.outputs = [f"{prefix}hang.out"]

    def process(self, batch: list[Message]) -> list[Output]:
        if any(msg.value() == b"hang" for msg in batch):
            print("hung", flush=True)
            threading.Event().wait()
        return [Output(self.outputs[0], msg.key(), msg.value() or b"") for msg in batch]

    def due(self, final: bool) -> list[Output]:
        return []

    def committed(self, batch: list[Message], seconds: float) -> None:
        return None

    def aborted(self, batch: list[Message]) -> None:
        return None


def run(settings: LeptonSettings, stop: threading.Event) -> int:
    prefix = settings.topic_prefix
    return TransactionalRuntime(
        settings, HangingStage(prefix), stop, group_id=f"{prefix}hangs",
        transactional_id=f"{prefix}hangs", positions_topic=f"{prefix}hang.positions",
        batch_size=10, poll_timeout_s=0.2).run()


if __name__ == "__main__":
    run_service("hangs", LeptonSettings, run)
