"""`lepton dlq show|replay [--reason R]`: inspect `events.rejected` and put fixed records back.

`show` prints one JSON line per dead letter (reason, stage, attempt, source, how it is sealed;
`--reveal` adds the decrypted original, for an operator entitled to read it: DLQ-key letters
open with the DLQ private key, `LEPTON_DLQ_KEY_FILE`; subject-sealed ones with the keyring).
`replay` decrypts ingest's dead letters (those whose source is events.raw) and produces them to
events.raw again with `lepton.replay.origin`/`lepton.replay.attempt`: ingest processes them as
new attempts of the same event (same event id, attempt + 1), and its dedup lets each event
through once however often it is replayed. Shredded (forgotten subject), discarded and truncated
letters are skipped and counted. Imports stay inside the commands.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from confluent_kafka import Message

    from shared.config import LeptonSettings
    from shared.dlq import DeadLetterOpener

dlq_app = typer.Typer(help="The dead-letter queue (events.rejected): show and replay.",
                      no_args_is_help=True)
ReasonOption = Annotated[str | None, typer.Option("--reason", "-r",
                                                  help="Only dead letters with this reason.")]


def _settings() -> LeptonSettings:
    from shared.config import LeptonSettings, load_settings

    return load_settings(LeptonSettings)


def _letters(settings: LeptonSettings, reason: str | None) -> Iterator[Message]:
    """Every committed dead letter (optionally of one reason), from the start to the end now."""
    from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

    from shared.events import Header, headers_dict
    from shared.kafka import make_consumer
    from shared.topics import Topics

    topic = Topics(settings.topic_prefix).rejected
    consumer = make_consumer(settings, f"{settings.topic_prefix}dlq-cli-{uuid.uuid4().hex}",
                             **{"enable.partition.eof": True})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        pending = set(partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        while pending:
            for msg in consumer.consume(500, timeout=1.0):
                error = msg.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        pending.discard(msg.partition())
                    continue
                headers = headers_dict(msg.headers())
                if reason is None or headers.get(Header.DLQ_REASON) == reason.encode():
                    yield msg
    finally:
        consumer.close()


def _opener(settings: LeptonSettings) -> DeadLetterOpener:
    """The operator's opener: the DLQ private key, and the keyring for subject-sealed letters
    (opened lazily, so reading DLQ-key letters needs no keyring)."""
    from services.ingest.keystore import KeyStore
    from shared.dlq import DeadLetterOpener

    stores: list[KeyStore] = []

    def open_subject(label: str, value: bytes) -> bytes:
        if not stores:
            stores.append(KeyStore(settings))
        return stores[0].open_bytes(label, value)

    return DeadLetterOpener.load(settings, open_subject)


def _text(headers: dict[str, bytes], name: str) -> str:
    return headers.get(name, b"").decode("utf-8", "replace")


@dlq_app.command("show")
def show(
    reason: ReasonOption = None,
    reveal: Annotated[bool, typer.Option(help="Also print the decrypted original bytes.")]
    = False,
) -> None:
    """Print one JSON line per dead letter (never its PII unless --reveal)."""
    import orjson

    from shared.crypto import CryptoError
    from shared.dlq import SEALED_HEADER
    from shared.events import Header, headers_dict

    settings = _settings()
    opener = _opener(settings) if reveal else None
    counts: Counter[str] = Counter()
    for msg in _letters(settings, reason):
        headers = headers_dict(msg.headers())
        row: dict[str, object] = {
            "offset": f"{msg.partition()}/{msg.offset()}",
            "reason": _text(headers, Header.DLQ_REASON),
            "detail": _text(headers, Header.DLQ_DETAIL),
            "stage": _text(headers, Header.DLQ_STAGE),
            "attempt": _text(headers, Header.DLQ_ATTEMPT),
            "source": "/".join(_text(headers, h) for h in (
                Header.DLQ_TOPIC, Header.DLQ_PARTITION, Header.DLQ_OFFSET)),
            "sealed": _text(headers, SEALED_HEADER) or "clear",
            "subject": (msg.key() or b"").decode("utf-8", "replace") or None,
        }
        counts[str(row["reason"])] += 1
        if opener is not None and msg.value():
            try:
                row["value"] = opener.open(msg.value() or b"").decode("utf-8", "replace")
            except CryptoError as error:
                row["value_error"] = str(error)
        typer.echo(orjson.dumps(row).decode())
    summary = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "none"
    total = sum(counts.values())
    typer.echo(f"{total} dead letter{'' if total == 1 else 's'} ({summary})", err=True)


@dlq_app.command("replay")
def replay(reason: ReasonOption = None) -> None:
    """Decrypt ingest's dead letters and send them to events.raw again (as new attempts)."""
    from shared.crypto import CryptoError, KeyDestroyed
    from shared.dlq import REPLAY_ATTEMPT, REPLAY_ORIGIN, SEALED_HEADER, Sealing
    from shared.events import Header, HeaderList, headers_dict
    from shared.kafka import make_producer
    from shared.topics import Topics

    settings = _settings()
    topics = Topics(settings.topic_prefix)
    opener = _opener(settings)
    producer = make_producer(settings)
    replayed = 0
    skipped: Counter[str] = Counter()
    for msg in _letters(settings, reason):
        headers = headers_dict(msg.headers())
        if _text(headers, Header.DLQ_TOPIC) != topics.raw:
            skipped["not from events.raw"] += 1
            continue
        if "lepton.dlq.truncated" in headers:
            skipped["truncated"] += 1
            continue
        if _text(headers, SEALED_HEADER) == Sealing.DISCARDED or not msg.value():
            skipped["discarded (subject forgotten)"] += 1
            continue
        try:
            value = opener.open(msg.value() or b"")
        except KeyDestroyed:
            skipped["shredded (key destroyed)"] += 1
            continue
        except CryptoError as error:
            skipped[f"unreadable ({error})"] += 1
            continue
        origin = headers.get(REPLAY_ORIGIN) or "/".join(_text(headers, h) for h in (
            Header.DLQ_TOPIC, Header.DLQ_PARTITION, Header.DLQ_OFFSET)).encode()
        kept: HeaderList = [(k, v) for k, v in headers.items()
                if not k.startswith(("lepton.dlq.", "lepton.replay.", Header.CONNECT_ERRORS))]
        kept += [(REPLAY_ORIGIN, origin),
                 (REPLAY_ATTEMPT, headers.get(Header.DLQ_ATTEMPT, b"1"))]
        while True:
            try:
                producer.produce(topics.raw, key=msg.key(), value=value, headers=kept)
                break
            except BufferError:
                producer.poll(0.1)
        replayed += 1
    if producer.flush(60) > 0:
        typer.echo("error: not every replayed record was delivered; run it again "
                   "(ingest drops the duplicates)", err=True)
        raise typer.Exit(1)
    detail = ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items())) or "none"
    typer.echo(f"replayed {replayed} dead letters to {topics.raw}; skipped {detail}")


def register(app: typer.Typer) -> None:
    """Add `lepton dlq` to the command line."""
    app.add_typer(dlq_app, name="dlq")
