"""What `lepton up` shows: events and rates per stage (the services' own Prometheus counters;
topic watermarks only for non-transactional topics, since transaction markers take offsets),
rejected and withheld events, privacy budget spent (governance ledger), live model versions
with their metrics (registry), the last trace id, and the processes it runs."""

from __future__ import annotations

import time
import urllib.request
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaException, TopicPartition
from rich.console import Group
from rich.table import Table

from shared.config import LeptonSettings
from shared.events import Header, header_str, headers_dict
from shared.kafka import client_config
from shared.kafka.clients import error_text
from shared.state import make_redis
from shared.topics import Topic, Topics

# (label, service, counter, label filter): counters the services export on /metrics
COUNTED: tuple[tuple[str, str, str, dict[str, str]], ...] = (
    ("ingested", "ingest", "lepton_ingest_events_out", {}),
    ("rejected", "ingest", "lepton_ingest_events_rejected", {}),
    ("governed", "governance", "lepton_governance_decisions", {"kind": "event_released"}),
    ("withheld", "governance", "lepton_governance_decisions", {"kind": "event_withheld"}),
    ("trained", "trainer", "lepton_trainer_records", {"outcome": "train"}),
    ("predictions", "serving", "lepton_serving_predictions", {}),
)
# non-transactional topics, where the high watermark is the record count
WATERMARKED = (("produced", Topic.RAW), ("model updates", Topic.MODELS))
STAGES = ("produced", *(c[0] for c in COUNTED), "model updates")


def scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Samples of one Prometheus endpoint on 127.0.0.1 (empty when it does not answer)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as reply:
            text = reply.read().decode()
    except OSError:
        return {}
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name.removesuffix("_total"), []).append(
                (sample.labels, sample.value))
    return samples


@dataclass
class ProcessRow:
    """One process `lepton up` runs."""

    name: str
    pid: int
    state: str
    metrics_port: int | None
    log: str


@dataclass
class Snapshot:
    """One refresh of the dashboard's figures."""

    at: float
    records: dict[str, int]
    rates: dict[str, float]
    budgets: dict[str, float] = field(default_factory=dict)
    models: list[tuple[str, int, dict[str, float]]] = field(default_factory=list)
    last_trace: str = ""


class Dashboard:
    """Collects snapshots; keeps one Kafka client and one Redis client open."""

    def __init__(self, settings: LeptonSettings, bootstrap: str,
                 metrics_ports: dict[str, int]) -> None:
        self.settings = settings
        self.metrics_ports = metrics_ports
        self.topics = Topics(settings.topic_prefix)
        self.consumer = Consumer(client_config(
            settings.model_copy(update={"kafka_bootstrap": bootstrap}), log_level=3,
            **{"group.id": "lepton-up-dashboard", "enable.auto.commit": False}))
        self.redis = make_redis(settings)
        self.previous: Snapshot | None = None

    def _high(self, topic: str) -> dict[int, int]:
        metadata = self.consumer.list_topics(topic, timeout=2)
        info = metadata.topics.get(topic)
        highs = {}
        for partition in (info.partitions if info else {}):
            _, high = self.consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=2, cached=False)
            highs[partition] = max(high, 0)
        return highs

    def _last_trace(self, topic: str, highs: dict[int, int]) -> str:
        newest, trace_id = -1, ""
        for partition, high in highs.items():
            if high == 0:
                continue
            self.consumer.assign([TopicPartition(topic, partition, max(high - 2, 0))])
            for message in self.consumer.consume(2, timeout=0.5):
                if message.error():
                    continue
                stamp = message.timestamp()[1]
                parent = header_str(headers_dict(message.headers()), Header.TRACEPARENT)
                if parent.count("-") == 3 and stamp > newest:
                    newest, trace_id = stamp, parent.split("-")[1]
        self.consumer.unassign()
        return trace_id

    def _budgets(self) -> dict[str, float]:
        from services.governance.config import GovernanceSettings
        from services.governance.report import max_subject_epsilon

        settings = GovernanceSettings.model_validate(self.settings.model_dump())
        return max_subject_epsilon(self.redis, settings)

    def _models(self) -> list[tuple[str, int, dict[str, float]]]:
        from shared.models.registry import Registry

        registry = Registry(self.settings)
        rows = []
        for model in registry.models():
            live = registry.live(model)
            if live is not None:
                rows.append((model, live, registry.card(model, live).metrics))
        return rows

    def _counted(self) -> dict[str, int]:
        scraped = {name: scrape(port) for name, port in self.metrics_ports.items()}
        counts = {}
        for label, service, metric, wanted in COUNTED:
            samples = scraped.get(service, {}).get(metric, [])
            counts[label] = int(sum(value for labels, value in samples
                                    if all(labels.get(k) == v for k, v in wanted.items())))
        return counts

    def snapshot(self) -> Snapshot:
        """Read every figure once (each source failing alone leaves its part empty)."""
        now = time.monotonic()
        # the services' counters before the topics they read from: a stage is never shown
        # ahead of its input (reading the topics takes up to a second)
        records = self._counted()
        try:
            for label, topic in WATERMARKED:
                records[label] = sum(self._high(self.topics.name(topic)).values())
            governed = self.topics.name(Topic.GOVERNED)
            last_trace = self._last_trace(governed, self._high(governed))
        except KafkaException as error:  # the services wait for their broker; so does this
            last_trace = f"(broker unreachable: {error_text(error)})"
        rates: dict[str, float] = {}
        if self.previous is not None and now > self.previous.at:
            span = now - self.previous.at
            rates = {k: (v - self.previous.records.get(k, 0)) / span for k, v in records.items()}
        snap = Snapshot(now, records, rates, last_trace=last_trace)
        try:
            snap.budgets = self._budgets()
            snap.models = self._models()
        except Exception as error:  # the dashboard must never stop the platform
            snap.last_trace = snap.last_trace or f"(state unavailable: {error})"
        self.previous = snap
        return snap

    def close(self) -> None:
        """Release the clients."""
        self.consumer.close()
        self.redis.close()


def render(snap: Snapshot, processes: list[ProcessRow], uptime: float) -> Group:
    """The rich renderable for one snapshot."""
    stages = Table(title=f"Lepton Stream — up {uptime:.0f}s")
    for column in ("stage", "events", "per second"):
        stages.add_column(column, justify="left" if column == "stage" else "right")
    for label in STAGES:
        stages.add_row(label, f"{snap.records.get(label, 0):,}",
                       f"{snap.rates.get(label, 0.0):,.0f}")
    models = Table(title="live models")
    for column in ("model", "version", "f1", "roc_auc", "accuracy"):
        models.add_column(column)
    for name, version, metrics in snap.models:
        models.add_row(name, f"v{version}", *(f"{metrics.get(m, float('nan')):.3f}"
                                              for m in ("f1", "roc_auc", "accuracy")))
    budgets = Table(title="privacy: max ε per subject")
    budgets.add_column("dataset")
    budgets.add_column("max ε per subject", justify="right")
    for dataset, epsilon in sorted(snap.budgets.items()):
        budgets.add_row(dataset, f"{epsilon:.3g}")
    procs = Table(title=f"processes — last trace {snap.last_trace or '-'}")
    for column in ("name", "pid", "state", "metrics", "log"):
        procs.add_column(column)
    for row in processes:
        port = f":{row.metrics_port}/metrics" if row.metrics_port else ""
        procs.add_row(row.name, str(row.pid), row.state, port, row.log)
    return Group(stages, models, budgets, procs)


def plain_line(snap: Snapshot) -> str:
    """A one-line summary for logs and non-terminal output."""
    counts = " ".join(f"{label.replace(' ', '_')}={snap.records.get(label, 0)}"
                      for label in STAGES)
    models = ",".join(f"{n}:v{v}" for n, v, _ in snap.models) or "-"
    budgets = ",".join(f"{d}:{e:.3g}" for d, e in sorted(snap.budgets.items())) or "-"
    return (f"lepton up: {counts} models={models} max_subject_epsilon={budgets} "
            f"last_trace={snap.last_trace or '-'}")
