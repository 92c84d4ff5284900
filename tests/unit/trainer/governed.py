"""Test data for the trainer: breast_cancer events shaped as governance outputs them (clean
payload, audit reference, trace context in the headers), published to events.governed."""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Iterable
from functools import cache
from pathlib import Path

import yaml
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Tracer

from lepton.generators import breast_cancer
from services.trainer.config import TrainerSettings
from shared.config import LeptonSettings
from shared.datasets import load_spec
from shared.events import CONTENT_TYPE_JSON, AuditRef, Envelope, Header, HeaderList, encode
from shared.governed_mac import MAC_HEADER, GovernedMac
from shared.kafka import make_producer
from shared.state import make_redis, policy_ready_key
from shared.topics import Topics
from shared.tracing import publish_span

_producer_tracer = TracerProvider().get_tracer("test-governance")


def governed_breast_cancer(count: int | None = None, seed: int = 0,
                           flip_labels: bool = False) -> list[Envelope]:
    """breast_cancer envelopes with an audit reference, as governance would release them."""
    out = []
    for index, env in enumerate(breast_cancer(count, seed=seed)):
        payload = dict(env.payload)
        if flip_labels:
            payload["malignant"] = not payload["malignant"]
        out.append(env.model_copy(update={
            "payload": payload, "audit": AuditRef(partition=index % 2, leaf_index=index)}))
    return out


def publish_governed(settings: LeptonSettings, envelopes: Iterable[Envelope],
                     raw: Iterable[bytes] = (), unauthenticated: Iterable[bytes] = ()) -> int:
    """Send envelopes (and raw junk values) to events.governed with trace headers and
    governance's MAC, plus `unauthenticated` values without one; returns n. Sets the
    policy-ready marker, as governance does before its first decision."""
    make_redis(settings).set(policy_ready_key(settings), b"1")
    topic = Topics(settings.topic_prefix).governed
    producer = make_producer(settings)
    mac = GovernedMac.load(settings)
    sent = 0
    for env in envelopes:
        value = encode(env)
        headers: HeaderList = [(Header.CONTENT_TYPE, CONTENT_TYPE_JSON),
                               (MAC_HEADER, mac.tag(value))]
        with publish_span(_producer_tracer, topic, headers, key=env.subject_id):
            producer.produce(topic, key=env.subject_id.encode(), value=value, headers=headers)
        sent += 1
    for value in raw:
        producer.produce(topic, key=b"junk", value=value, headers=[(MAC_HEADER, mac.tag(value))])
        sent += 1
    for value in unauthenticated:
        producer.produce(topic, key=b"forged", value=value)
        sent += 1
    assert producer.flush(30) == 0
    return sent


@cache
def non_private_specs() -> Path:
    """A specs directory whose breast_cancer allows non-private models, for tests of the
    trainer's mechanics that run without governance (no release charge to answer)."""
    spec = load_spec("breast_cancer")
    data = spec.model_dump(mode="json")
    data["privacy"]["allow_non_private"] = True
    folder = Path(tempfile.mkdtemp(prefix="lepton-specs-"))
    (folder / "breast_cancer.yaml").write_text(yaml.safe_dump(data))
    return folder


def non_private_env() -> dict[str, str]:
    """Environment variables for a trainer subprocess on the non-private spec copy."""
    return {"LEPTON_TRAINER_DP_ENABLED": "false",
            "LEPTON_TRAINER_SPECS_DIR": str(non_private_specs())}


def trainer_settings(**overrides: object) -> TrainerSettings:
    """Trainer settings from the test environment, tuned to finish quickly when idle; without
    DP (on a spec that allows it) unless `trainer_dp_enabled=True` is passed."""
    private = bool(overrides.get("trainer_dp_enabled", False))
    # a round that finds no data within trainer_max_wait_s ends the cycle: at 0.5 s a fetch
    # delayed by a loaded 2-core machine split one release into two (seen once in 10+ runs)
    values: dict[str, object] = {
        "trainer_dataset": "breast_cancer", "trainer_max_wait_s": 2.0,
        "trainer_exit_when_idle_s": 1.5, "trainer_batch_size": 256,
        "trainer_dp_enabled": private,
        "trainer_specs_dir": None if private else non_private_specs(),
    }
    values.update(overrides)
    return TrainerSettings(**values)  # type: ignore[arg-type]


def run_trainer(settings: TrainerSettings, tracer: Tracer | None = None,
                stop: threading.Event | None = None) -> list[int]:
    """Run one in-process trainer rank until it is idle; returns the versions it released."""
    from services.trainer.comm import Comm
    from services.trainer.loop import TrainerLoop

    return TrainerLoop(settings, Comm(), stop or threading.Event(), tracer).run()
