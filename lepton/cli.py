"""The `lepton` command line: broker, produce, and every service's commands.

Each service contributes its commands through `services/<name>/cli.py:register(app)`, so this
module only composes; importing it stays cheap (heavy imports happen inside commands).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import secrets
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from shared.cli import fail
from shared.config import (
    EXIT_CONFIG,
    EXIT_UNAVAILABLE,
    ConfigError,
    LeptonSettings,
    load_settings,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from lepton.produce import Outgoing
    from lepton.records_file import CheckedRecords
    from shared.events import Envelope

app = typer.Typer(
    name="lepton",
    help="Lepton Stream: ingest, govern, train and serve models over Kafka.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

SERVICE_CLIS = (
    "services.ingest.cli",
    "services.governance.cli",
    "services.trainer.cli",
    "services.serving.cli",
    "services.monitor.cli",
    "services.federation.cli",
    "lepton.up",
    "lepton.dlq",
    "lepton.keyset",
    "lepton.subjects",
    "lepton.topics",
    "lepton.probe",
)


def settings() -> LeptonSettings:
    """Common settings from the environment, exiting with a readable line when invalid."""
    return load_settings(LeptonSettings)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"lepton-stream {version('lepton-stream')}")
        except PackageNotFoundError:
            typer.echo("lepton-stream (not installed)")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    _show_version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True,
                           help="Print the version and exit.")
    ] = False,
) -> None:
    from shared.logs import setup_logging

    # LEPTON_LOG_LEVEL wins; -v forces DEBUG
    setup_logging("lepton", "DEBUG" if verbose else os.environ.get("LEPTON_LOG_LEVEL", "INFO"))


@app.command()
def broker(
    bootstrap_file: Annotated[
        Path | None, typer.Option(help="Write the bootstrap address here (default: data dir).")
    ] = None,
    brokers: Annotated[int, typer.Option(min=1, max=5, help="Mock brokers in the cluster.")] = 1,
    host: Annotated[str, typer.Option(help="Listen on this address (with --port).")]
    = "127.0.0.1",
    port: Annotated[
        int | None, typer.Option(min=1, max=65535,
                                 help="Fixed port (brokers take port, port+1, …); default random.")
    ] = None,
    advertise: Annotated[
        str | None, typer.Option(help="Host name clients use (default: --host, or this "
                                      "machine's name when --host is 0.0.0.0).")
    ] = None,
) -> None:
    """Run the embedded Kafka-protocol broker until SIGINT/SIGTERM/SIGHUP."""
    from lepton.broker import serve
    from shared.signals import stop_event
    from shared.topics import Topics

    common = settings()
    stop = stop_event()
    path = bootstrap_file or common.default_bootstrap_file()
    serve(Topics(common.topic_prefix).all(), path, stop, brokers, host=host, port=port,
          advertise=advertise)


@app.command("demo-app")
def demo_app_command(
    dataset: Annotated[str, typer.Option(help="Dataset whose generator makes the records.")]
    = "transactions",
    model: Annotated[str, typer.Option(help="Model to call (default: the dataset's name).")]
    = "",
    rate: Annotated[float, typer.Option(min=0.1, help="Calls a second, over all routes.")]
    = 2.0,
    count: Annotated[int | None, typer.Option(min=1, help="Stop after this many calls.")]
    = None,
    seed: Annotated[int | None, typer.Option(
        help="Score the events of the `lepton produce --seed S` stream (with its --count as "
             "--stream-count), so their labels join in the monitor (default: a new seed).")]
    = None,
    stream_count: Annotated[int, typer.Option(
        min=1, help="The producer's --count, which shapes its stream.")] = 100_000,
) -> None:
    """Play a downstream app: predictions over gRPC, HTTP (OIP v2) and Kafka, in turn."""
    from lepton.demo_app import demo_app
    from shared.signals import stop_event

    report = demo_app(dataset=dataset, model=model or dataset, rate=rate, stop=stop_event(),
                      count=count, seed=seed, stream_count=stream_count)
    typer.echo(f"demo-app: sent {dict(report.sent)}, failed {dict(report.failed)}", err=True)


@app.command()
def produce(
    dataset: Annotated[str, typer.Option(
        help="transactions or breast_cancer (with --file: any spec, for bare payloads)")]
    = "transactions",
    count: Annotated[int | None, typer.Option(
        min=1, help="How many events (default: 1000 generated; with --file, every line).")]
    = None,
    file: Annotated[str | None, typer.Option(
        "--file", help="Send your own records instead: a JSON-lines file (envelopes, or bare "
                       "payloads of --dataset), or - for stdin. Every line is checked first; "
                       "a bad one sends nothing (exit 2).")] = None,
    rate: Annotated[float | None, typer.Option(min=0.1, help="Events a second (default: max).")]
    = None,
    seed: Annotated[int | None, typer.Option(
        help="Generator seed (default: a new one). A seed used before sends the same events "
             "again, which ingest drops as duplicates.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds to wait for delivery.")]
    = 30.0,
) -> None:
    """Publish dataset events to events.raw, with trace context and a progress bar.

    Exit codes: 0 ok, 1 events failed, 2 bad input, 69 broker unreachable
    (events not delivered), 78 configuration error."""
    from lepton.generators import GENERATORS, generate
    from lepton.produce import publish
    from shared.signals import stop_event
    from shared.tracing import setup_telemetry, shutdown_telemetry

    source: Iterable[Envelope | Outgoing]
    checked: CheckedRecords | None = None
    if file is not None:
        if seed is not None:
            raise fail("--seed applies to generated events, not to --file", 2)
        checked = _records_file(file, dataset, count)
        source, total = checked, checked.total
    elif dataset not in GENERATORS:
        raise fail(f"unknown dataset {dataset!r}; choose one of {', '.join(sorted(GENERATORS))}",
                   2)
    else:
        seed = secrets.randbelow(2**31) if seed is None else seed
        source, total = generate(dataset, count or 1000, seed), count or 1000
    common = settings()
    try:
        common.bootstrap_servers()
    except ConfigError as error:
        raise fail(str(error), EXIT_CONFIG) from None
    setup_telemetry("lepton-produce")
    try:
        report = publish(common, source, total=total, rate=rate, show_progress=not quiet,
                         stop=stop_event(), timeout=timeout)
    finally:
        shutdown_telemetry()
    replay = (f" (seed {seed}: --seed {seed} sends these events again, which ingest drops as "
              "duplicates)") if report.delivered and file is None else ""
    typer.echo(f"delivered {report.delivered} of {report.sent} events{replay}", err=True)
    if checked is not None and checked.changed:
        raise fail(f"{file} changed while it was being sent ({checked.changed}); sending "
                   f"stopped there, after {report.sent} of the {total} checked records", 2)
    if report.failed:
        raise fail(f"{report.failed} events failed: {'; '.join(report.errors)}",
                   EXIT_UNAVAILABLE if report.undelivered else 1)


def _records_file(file: str, dataset: str, count: int | None) -> CheckedRecords:
    """The records of `--file`, all checked (exit 2 naming the bad lines, or an unreadable
    file)."""
    from lepton.records_file import CheckedRecords, RecordsFileError, check_records
    from services.ingest.config import IngestSettings
    from shared.datasets import UnknownDataset, load_spec

    try:
        spec = load_spec(dataset, load_settings(IngestSettings).ingest_specs_dir)
    except UnknownDataset:
        raise fail(f"unknown dataset {dataset!r} (no spec of that name)", 2) from None
    if file == "-":
        held = sys.stdin.buffer.read().splitlines()

        def lines() -> Iterator[bytes]:
            return iter(held)
    else:
        def lines() -> Iterator[bytes]:
            with open(file, "rb") as handle:
                yield from handle
    try:
        total = check_records(lines(), spec, count)
    except OSError as error:
        raise fail(f"cannot read {file}: {error.strerror}", 2) from None
    except RecordsFileError as error:
        raise fail(f"{file}: {error}; nothing was sent", 2) from None
    return CheckedRecords(lines, spec, total)


def _register_services() -> None:
    for module in SERVICE_CLIS:
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module).register(app)


_register_services()


def main() -> None:
    """Entry point of the `lepton` console script."""
    try:
        app()
    except ConfigError as error:
        typer.echo(f"configuration error: {error}", err=True)
        sys.exit(EXIT_CONFIG)
    except Exception as error:
        reason = _unreachable(error)
        if reason is None:
            raise
        typer.echo(f"error: {reason}", err=True)
        sys.exit(EXIT_UNAVAILABLE)


def _unreachable(error: Exception) -> str | None:
    """What a command that met an unreachable Redis or broker tells its user (None for any
    other error). The clients' modules are only looked at when a command imported them."""
    redis = sys.modules.get("redis.exceptions")
    if redis is not None and isinstance(error, redis.ConnectionError | redis.TimeoutError):
        return f"cannot reach Redis ({error}); is it running at LEPTON_REDIS_URL?"
    where = os.environ.get("LEPTON_KAFKA_BOOTSTRAP") or "the address LEPTON_KAFKA_BOOTSTRAP " \
        "or the bootstrap file names"
    clients = sys.modules.get("shared.kafka.clients")
    if clients is None or not clients.broker_unreachable(error):
        return None
    if isinstance(error, clients.DeliveryTimeout):
        return f"{error}; is the Kafka broker running at {where}?"
    return f"cannot reach the Kafka broker ({clients.error_text(error)}); is it running at " \
        f"{where}?"
