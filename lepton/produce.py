"""`lepton produce`: publish dataset events (generated, or a producer's own records) to
`events.raw`, keyed by subject, with trace context and progress."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, Message, Producer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from shared.config import LeptonSettings
from shared.events import CONTENT_TYPE_JSON, Envelope, Header, HeaderList, encode
from shared.kafka import make_producer
from shared.topics import Topics
from shared.tracing import get_tracer, publish_span

_tracer = get_tracer("lepton.produce")


@dataclass(frozen=True)
class Outgoing:
    """One record for events.raw: its key (the raw subject id) and value (an envelope)."""

    key: str
    value: bytes
    dataset: str
    event_id: str | None = None


@dataclass
class ProduceReport:
    """What a produce run achieved."""

    sent: int = 0
    delivered: int = 0
    failed: int = 0
    undelivered: int = 0  # still queued when the final flush gave up: the broker is away
    errors: list[str] = field(default_factory=list)

    def on_delivery(self, error: KafkaError | None, _msg: Message) -> None:
        """Delivery-report callback."""
        if error is None:
            self.delivered += 1
        else:
            self.failed += 1
            if len(self.errors) < 5:
                self.errors.append(str(error))


def publish(
    settings: LeptonSettings,
    events: Iterable[Envelope | Outgoing],
    *,
    total: int,
    rate: float | None = None,
    show_progress: bool = True,
    stop: threading.Event | None = None,
    timeout: float = 30.0,
) -> ProduceReport:
    """Publish envelopes or ready records (one publish span each), at most `rate` a second;
    wait up to `timeout` seconds for their delivery."""
    topic = Topics(settings.topic_prefix).raw
    producer = make_producer(settings)
    report = ProduceReport()
    started = time.monotonic()
    columns = (TextColumn("[bold]produce[/] {task.description}"), BarColumn(),
               MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not show_progress, transient=False) as progress:
        task = progress.add_task(topic, total=total)
        for event in events:
            if stop is not None and stop.is_set():
                break
            record = event if isinstance(event, Outgoing) else Outgoing(
                event.subject_id, encode(event), event.dataset, event.event_id)
            headers: HeaderList = [(Header.CONTENT_TYPE, CONTENT_TYPE_JSON)]
            attributes = {"lepton.dataset": record.dataset}
            if record.event_id is not None:
                attributes["lepton.event_id"] = record.event_id
            with publish_span(_tracer, topic, headers, key=record.key, attributes=attributes):
                _produce(producer, topic, record, headers, report)
            report.sent += 1
            if report.sent % 500 == 0:
                progress.update(task, completed=report.sent)
            if rate:
                ahead = report.sent / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
        progress.update(task, completed=report.sent)
        report.undelivered = producer.flush(timeout)
    if report.undelivered:
        report.failed += report.undelivered
        report.errors.append(f"{report.undelivered} not delivered within {timeout:g} s "
                             f"(is the broker at {settings.bootstrap_servers()} reachable?)")
    return report


def _produce(producer: Producer, topic: str, record: Outgoing, headers: HeaderList,
             report: ProduceReport) -> None:
    while True:
        try:
            producer.produce(topic, key=record.key.encode(), value=record.value,
                             headers=headers, on_delivery=report.on_delivery)
            break
        except BufferError:
            producer.poll(0.1)
    producer.poll(0)
