"""Lean envelope decoding, the validation split, lineage merging, resume positions (including
the crash window between the registry write and Redis), DP accounting, energy and settings."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import psutil
import pytest
import torch
from confluent_kafka import Producer
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis.rdp import compute_rdp
from pydantic import ValidationError

from services.trainer import dp
from services.trainer.config import TrainerSettings
from services.trainer.decode import decode_batch
from services.trainer.lineage import CycleLineage, furthest, merge
from services.trainer.release import Releaser
from services.trainer.split import is_validation
from shared.accounting import ORDERS, epsilon_from_rdp
from shared.config import LeptonSettings
from shared.datasets import load_spec
from shared.energy import EnergyMeter, co2e_grams
from shared.events import encode
from shared.governed_mac import MAC_HEADER, GovernedMac
from shared.models.nets import architecture, build_model
from shared.models.registry import ModelCard, Registry
from shared.topics import Topics
from shared.tracing import get_tracer
from tests.unit.trainer.governed import governed_breast_cancer


@dataclass
class FakeMessage:
    """The slice of confluent_kafka.Message the decoder reads (a value object, not a mock)."""

    value_: bytes
    offset_: int
    partition_: int = 0
    mac: bytes | None = None

    def error(self) -> None:
        return None

    def partition(self) -> int:
        return self.partition_

    def offset(self) -> int:
        return self.offset_

    def value(self) -> bytes:
        return self.value_

    def key(self) -> bytes:
        return b"k"

    def topic(self) -> str:
        return "t.events.governed"

    def timestamp(self) -> tuple[int, int]:
        return 1, 1_700_000_000_000 + self.offset_  # CreateTime, ms

    def headers(self) -> list[tuple[str, bytes]]:
        trace = [("traceparent", b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01")]
        return trace + ([(MAC_HEADER, self.mac)] if self.mac is not None else [])


MAC = GovernedMac(b"k" * 32)


def governed(value: bytes, offset: int, partition: int = 0) -> FakeMessage:
    """A message as governance writes it (its MAC in the headers)."""
    return FakeMessage(value, offset, partition, MAC.tag(value))


def test_decode_sorts_rows_and_rejects_with_reasons() -> None:
    envs = governed_breast_cancer(40)
    other = envs[0].model_copy(update={"dataset": "transactions", "event_id": "other"})
    unlabelled = envs[1].model_copy(update={"event_id": "nolabel",
                                            "payload": {"mean_radius": 1.0}})
    values = [encode(e) for e in envs] + [encode(other), encode(unlabelled), b"[1]", b"{bad"]
    batch = decode_batch([governed(v, 100 + i) for i, v in enumerate(values)],
                         "breast_cancer", "malignant", 20, MAC)
    held = sum(is_validation(e.event_id, 20) for e in envs)
    assert (len(batch.train), len(batch.validation)) == (40 - held, held)
    assert (batch.skipped, batch.unlabelled, batch.consumed) == (1, 1, 44)
    assert [r.detail.split(":")[0] for r in batch.rejected] == ["envelope", "envelope"]
    assert batch.offsets == {0: (100, 143)}
    assert batch.next_offsets == {0: 144}
    assert batch.audit == {0: (0, 38), 1: (1, 39)}
    assert len(batch.headers) == 40


def test_records_without_governance_mac_are_rejected_unauthenticated() -> None:
    envs = governed_breast_cancer(6)
    genuine, forged = encode(envs[0]), encode(envs[1])
    tampered = governed(encode(envs[2]), 2)
    tampered.value_ = tampered.value_.replace(b'"malignant":', b'"malignant" :')
    other_key = FakeMessage(encode(envs[3]), 3, 0, GovernedMac(b"x" * 32).tag(encode(envs[3])))
    batch = decode_batch([governed(genuine, 0), FakeMessage(forged, 1), tampered, other_key],
                         "breast_cancer", "malignant", 0, MAC)
    assert len(batch.train) == 1 and batch.consumed == 4
    assert [(r.offset, r.reason) for r in batch.rejected] == [
        (1, "unauthenticated"), (2, "unauthenticated"), (3, "unauthenticated")]
    assert batch.audit == {0: (0, 0)}


def test_split_is_deterministic_and_near_the_percentage() -> None:
    ids = [f"event-{i}" for i in range(5000)]
    held = [i for i in ids if is_validation(i, 20)]
    assert held == [i for i in ids if is_validation(i, 20)]
    assert 900 < len(held) < 1100


def test_lineage_merges_workers_and_furthest_positions() -> None:
    a, b = CycleLineage(), CycleLineage()
    batch = decode_batch([governed(encode(e), 5 + i, i % 2) for i, e in
                          enumerate(governed_breast_cancer(6))], "breast_cancer", "malignant", 20,
                         MAC)
    a.add(batch)
    b.offsets = {2: (0, 9)}
    merged = merge([a.to_json(), b.to_json()])
    assert merged["partitions"] == {"0": [5, 9], "1": [6, 10], "2": [0, 9]}
    assert merged["rows"]["consumed"] == 6
    assert furthest({"0": 3, "1": 9}, {0: 5, 2: -1001}) == {0: 5, 1: 9}


def _card(resume: dict[str, int], topic: str) -> ModelCard:
    return ModelCard(model="breast_cancer", dataset="breast_cancer", spec_hash="0" * 64,
                     architecture=architecture("logistic", 2), feature_transform={},
                     lineage={"topic": topic, "resume_offsets": resume})


def test_resume_covers_the_crash_window_after_the_registry_write(
        settings: LeptonSettings) -> None:
    trainer = TrainerSettings(**{**settings.model_dump(), "kafka_bootstrap": "127.0.0.1:9",
                                 "trainer_dataset": "breast_cancer"})
    registry = Registry(trainer)
    releaser = Releaser(trainer, load_spec("breast_cancer"), registry,
                        Producer({"bootstrap.servers": "127.0.0.1:9"}), get_tracer("t"))
    topic = Topics(trainer.topic_prefix).governed
    weights = build_model(architecture("logistic", 2)).state_dict()
    assert releaser.resume_offsets() == {}
    releaser.store_offsets({0: 10, 1: 4})
    # saved but killed before Redis was updated: the card is ahead and wins
    registry.save(_card({"0": 25, "1": 4, "2": 7}, topic), weights)
    assert releaser.resume_offsets() == {0: 25, 1: 4, 2: 7}
    # a card from another topic prefix never moves this trainer's position
    registry.save(_card({"0": 99}, "other.events.governed"), weights)
    assert releaser.resume_offsets() == {0: 25, 1: 4, 2: 7}


def test_card_epsilon_is_opacus_accountant_epsilon_and_meets_the_target() -> None:
    plan = dp.Plan.make(rows=455, minibatch=32, epochs=5, epsilon=1.0, delta=1e-5,
                        max_grad_norm=1.0, events_per_subject=1)
    accountant = RDPAccountant()
    accountant.history = [(plan.noise_multiplier, plan.sample_rate, plan.steps)]
    opacus_eps = accountant.get_epsilon(delta=1e-5, alphas=list(ORDERS))
    assert plan.epsilon() == pytest.approx(float(opacus_eps), rel=1e-9)
    assert 0.99 <= plan.epsilon() <= 1.0
    assert plan.sample_rate == pytest.approx(32 / 455) and plan.steps == round(5 * 455 / 32)
    described = plan.describe()
    assert (described["sampling"], described["epsilon"]) == ("poisson", plan.epsilon())


def test_group_privacy_for_several_events_per_subject() -> None:
    one = dp.Plan.make(1000, 50, 3, 1.0, 1e-5, 1.0, 1)
    four = dp.Plan.make(1000, 50, 3, 1.0, 1e-5, 1.0, 4)
    assert four.noise_multiplier > 2 * one.noise_multiplier
    assert four.epsilon() <= 1.0
    # at the k=1 noise, four events per subject cost 3^2·ε(4α): far more than ε
    curve = dp.user_curve(one.noise_multiplier, one.sample_rate, one.steps, 4)
    event = compute_rdp(q=one.sample_rate, noise_multiplier=one.noise_multiplier,
                        steps=one.steps, orders=[4 * a for a in ORDERS if a >= 2])
    assert [c for c in curve if c != float("inf")] == pytest.approx([9 * e for e in event])
    assert epsilon_from_rdp(curve, 1e-5) > 2 * one.epsilon()
    assert "Mironov" in four.describe()["group_privacy"]


class _Recorder(torch.nn.Module):
    """A logistic model that records the size of every batch it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 1)
        self.sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(len(x))
        return self.linear(x).squeeze(-1)


def test_sampling_is_poisson_and_each_sample_is_clipped() -> None:
    rows, rate = 400, 0.05
    plan = dp.Plan(rows=rows, sample_rate=rate, steps=400, noise_multiplier=0.0,
                   max_grad_norm=0.5, delta=1e-5, events_per_subject=1, target_epsilon=1.0)
    net = _Recorder()
    before = [p.detach().clone() for p in net.parameters()]
    x, y = torch.randn(rows, 3) * 50, torch.ones(rows)
    dp.fit_private(net, torch.optim.SGD(net.parameters(), lr=1.0), x, y, plan, world=1)
    sizes = net.sizes
    assert len(sizes) == plan.steps
    # Poisson: each row independently with probability q, so batch sizes are Binomial(n, q)
    mean, var = rows * rate, rows * rate * (1 - rate)
    assert abs(sum(sizes) / len(sizes) - mean) < 4 * (var / len(sizes)) ** 0.5
    assert len(set(sizes)) > 5 and min(sizes) < mean < max(sizes)
    # and their spread is the binomial one (a fixed-size batch would have none)
    assert 0.7 < float(np.var(sizes)) / var < 1.3
    # with no noise, plain SGD moves by at most Σ clipped / E: each sample's norm ≤ C
    moved = torch.cat([(p.detach() - b).reshape(-1) for p, b in zip(net.parameters(), before,
                                                                   strict=True)]).norm()
    bound = sum(sizes) * plan.max_grad_norm / round(rate * rows)
    assert 0 < moved <= bound + 1e-4


def test_energy_estimate_is_labelled_and_co2e() -> None:
    meter = EnergyMeter(torch.device("cpu"), watts_per_core=10.0)
    process = psutil.Process()
    meter.start()
    began = sum(process.cpu_times()[:2])
    # work until CPU time has surely advanced: the clock moves in 10 ms ticks, so a fixed
    # short loop could land inside one tick on a fast (or busy) machine and read 0
    while sum(process.cpu_times()[:2]) - began < 0.05:
        sum(i * i for i in range(20_000))
    used = meter.read()
    assert used > 0
    if meter.method == "estimate":
        assert meter.describe().startswith("estimate: CPU seconds x 10 W")
        assert used >= 0.5  # at least 50 ms of CPU at 10 W
    assert co2e_grams(3.6e6, 400) == pytest.approx(400)


def test_settings_reject_unknown_gate_metric() -> None:
    with pytest.raises(ValidationError, match="trainer_gate_metrics"):
        TrainerSettings(trainer_gate_metrics=("f1", "vibes"))
    assert TrainerSettings(trainer_dataset="x").group_id() == "lepton-trainer-x"
