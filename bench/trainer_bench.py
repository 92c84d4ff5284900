"""Trainer throughput: samples/s and samples per joule of the streaming trainer (events.governed
on the embedded broker → decode → features → train → evaluate → signed release), and the
ratio to a plain in-memory torch loop doing the same optimiser steps on the same rows in the
same run (goal ≥ 0.8: the stream costs little). Prints a markdown section.

    python bench/trainer_bench.py [--events 40000] [--datasets breast_cancer transactions]
                                  [--device cpu|cuda|auto]

Both loops train without DP, on a copy of the dataset's spec that allows it (the stream's
mechanics are the subject here; `privacy_utility.py` and `dp_step_bench.py` measure DP-SGD's
cost). A third number bounds the first: the embedded broker's raw delivery rate (a bare consumer,
no decoding, no training) on the same topic.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import torch
import yaml
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lepton.generators import generate
from services.trainer.comm import Comm
from services.trainer.config import TrainerSettings
from services.trainer.devices import pick_device
from services.trainer.loop import TrainerLoop
from services.trainer.split import is_validation
from shared.datasets import load_spec
from shared.energy import EnergyMeter
from shared.events import AuditRef
from shared.kafka import ensure_topics
from shared.lifecycle import parent_death
from shared.models.features import FeatureTransform
from shared.models.nets import architecture, build_model
from shared.models.registry import Registry
from shared.state import make_redis
from shared.topics import Topics
from tests.unit.trainer.governed import publish_governed


def _broker(workdir: Path) -> tuple[str, subprocess.Popen[bytes] | None]:
    if os.environ.get("LEPTON_KAFKA_BOOTSTRAP"):
        return os.environ["LEPTON_KAFKA_BOOTSTRAP"], None
    path = workdir / "bootstrap"
    proc = subprocess.Popen([sys.executable, "-m", "lepton", "broker", "--bootstrap-file",
                             str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             preexec_fn=parent_death())
    deadline = time.monotonic() + 30
    while not path.exists():
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError("embedded broker did not start")
        time.sleep(0.05)
    return path.read_text().strip(), proc


def _publish(settings: TrainerSettings, dataset: str, count: int) -> list[dict[str, object]]:
    """Publish `count` governed events; the payloads of those the trainer will train on."""
    events = [env.model_copy(update={"audit": AuditRef(partition=0, leaf_index=index)})
              for index, env in enumerate(generate(dataset, count, seed=11))]
    publish_governed(settings, events)
    return [env.payload for env in events
            if not is_validation(env.event_id, settings.trainer_val_percent)]


def _plain_loop(settings: TrainerSettings, dataset: str, rows: list[dict[str, object]],
                transform: FeatureTransform, device: torch.device) -> tuple[float, float]:
    """The same rounds, epochs and Adam steps on in-memory tensors: (seconds, joules)."""
    spec = load_spec(dataset)
    x_all = torch.from_numpy(transform.transform(rows)).to(device)
    y_all = torch.from_numpy(transform.labels(rows)).to(device)
    torch.manual_seed(0)
    net = build_model(architecture(spec.model.kind, transform.dim, spec.model.hidden)).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=settings.trainer_learning_rate or
                           spec.model.learning_rate)
    loss_fn = torch.nn.BCEWithLogitsLoss(reduction="sum")
    epochs = settings.trainer_epochs or spec.model.epochs_per_batch
    batch = int(settings.trainer_batch_size * 0.8)
    rng = np.random.default_rng(0)
    meter = EnergyMeter(device, settings.energy_watts_per_core)
    meter.start()
    started = time.perf_counter()
    for first in range(0, len(rows), batch):
        x, y = x_all[first:first + batch], y_all[first:first + batch]
        steps = math.ceil(len(x) / settings.trainer_minibatch)
        for _ in range(epochs):
            for chunk in np.array_split(rng.permutation(len(x)), steps):
                index = torch.from_numpy(chunk).to(device)
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(net(x[index]), y[index])
                loss.backward()
                for p in net.parameters():
                    p.grad = p.grad / len(chunk)
                opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started, meter.read()


def _broker_rate(settings: TrainerSettings, count: int) -> float:
    """Messages/s a bare consumer gets from the topic (after the first message arrives)."""
    topic = Topics(settings.topic_prefix).governed
    consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers(),
                         "group.id": f"bench-raw-{uuid.uuid4().hex}", "log_level": 3})
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(4)])
    received, first = 0, None
    while received < count:
        got = consumer.consume(1024, timeout=1.0)
        if got and first is None:
            first = time.perf_counter()
        received += len(got)
    elapsed = time.perf_counter() - (first or time.perf_counter())
    consumer.close()
    return count / max(elapsed, 1e-9)


def main() -> None:
    """Run both loops on the same data for each dataset and print markdown sections."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--datasets", nargs="+", default=["breast_cancer", "transactions"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="trainer-bench-"))
    bootstrap, broker = _broker(workdir)
    try:
        for dataset in args.datasets:
            _run(args, dataset, bootstrap, workdir)
    finally:
        if broker is not None:
            broker.send_signal(signal.SIGTERM)
            broker.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def _non_private_specs(dataset: str, folder: Path) -> Path:
    data = load_spec(dataset).model_dump(mode="json")
    data["privacy"]["allow_non_private"] = True
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{dataset}.yaml").write_text(yaml.safe_dump(data))
    return folder


def _run(args: argparse.Namespace, dataset: str, bootstrap: str, workdir: Path) -> None:
    prefix = f"bench{uuid.uuid4().hex[:8]}."
    settings = TrainerSettings(
        kafka_bootstrap=bootstrap, topic_prefix=prefix, redis_prefix=f"bench:{prefix}",
        data_dir=workdir / prefix, trainer_dataset=dataset, trainer_device=args.device,
        trainer_cycle_rows=args.events, trainer_batch_size=1024, trainer_max_wait_s=0.2,
        trainer_exit_when_idle_s=0.5, trainer_dp_enabled=False,
        trainer_specs_dir=_non_private_specs(dataset, workdir / f"{prefix}specs"),
        trainer_cycle_s=3600)
    try:
        ensure_topics(settings, Topics(prefix).all())
        rows = _publish(settings, dataset, args.events)
        raw_rate = _broker_rate(settings, args.events)
        device = pick_device(args.device, 0)
        meter_start = time.perf_counter()
        TrainerLoop(settings, Comm(device=device), threading.Event()).run()
        total_s = time.perf_counter() - meter_start
        card = Registry(settings).card(settings.model_name(), 1)
        trained = int(card.training["rows"])
        stream_s = float(card.training["active_s"])  # first record to last trained round
        transform = FeatureTransform.from_dict(card.feature_transform)
        plain_s, plain_j = _plain_loop(settings, dataset, rows, transform, device)
        stream_rate, plain_rate = trained / stream_s, len(rows) / plain_s
        print(f"### Trainer — {dataset}, {args.events:,} governed events, "
              f"{card.architecture['kind']}, device {card.device}\n")
        print(f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch "
              f"{torch.__version__}; batch 1024/round, minibatch {settings.trainer_minibatch}, "
              f"epochs/batch {card.training['epochs_per_batch']}; energy "
              f"{card.energy_method}.\n")
        print("| loop | trained rows | seconds | samples/s | joules | samples/J |")
        print("|---|---:|---:|---:|---:|---:|")
        print(f"| stream (Kafka → decode → train → evaluate → signed release) | {trained:,} | "
              f"{stream_s:.2f} | {stream_rate:,.0f} | {card.energy_j:.1f} | "
              f"{trained / max(card.energy_j, 1e-9):,.0f} |")
        print(f"| plain in-memory torch loop, same steps | {len(rows):,} | {plain_s:.2f} | "
              f"{plain_rate:,.0f} | {plain_j:.1f} | {len(rows) / max(plain_j, 1e-9):,.0f} |")
        print(f"| embedded broker, bare consumer (no decode, no training) | {args.events:,} "
              f"delivered | {args.events / raw_rate:.2f} | {raw_rate:,.0f} msg/s | | |")
        print(f"\n**ratio stream / plain = {stream_rate / plain_rate:.2f}** (goal ≥ 0.8); "
              f"stream time runs from the first consumed record to the end of the last trained "
              f"round (cycle wall incl. end-of-stream detection {card.wall_time_s:.2f} s, "
              f"process {total_s:.1f} s); held-out F1 "
              f"{card.metrics.get('f1', 0):.3f}, ROC-AUC {card.metrics.get('roc_auc', 0):.3f}"
              + (f", ε={card.epsilon:.2f}" if card.epsilon is not None else "") + ".\n")
    finally:
        client = make_redis(settings)
        keys = list(client.scan_iter(match=f"bench:{prefix}*"))
        if keys:
            client.delete(*keys)


if __name__ == "__main__":
    main()
