"""`lepton monitor` (run the monitor; `report` shows the current window against the reference),
`lepton sustainability report` and `lepton scale advise`. Imports stay inside the commands."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import orjson
import typer

from shared.cli import cannot_write, no_such_model
from shared.config import EXIT_UNAVAILABLE

monitor_app = typer.Typer(help="Run the monitor, or show what it sees.",
                          invoke_without_command=True, no_args_is_help=False)
sustainability_app = typer.Typer(help="Energy and carbon accounting.", no_args_is_help=True)
scale_app = typer.Typer(help="Replica advice from consumer lag.", no_args_is_help=True)
Json = Annotated[bool, typer.Option("--json", help="One JSON document instead of text.")]


def _print_json(data: object) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")


@monitor_app.callback()
def monitor(ctx: typer.Context) -> None:
    """Run the monitor process until SIGINT/SIGTERM."""
    if ctx.invoked_subcommand is None:
        from services.monitor.__main__ import main

        main()


@monitor_app.command("report")
def monitor_report(
    model: Annotated[str | None, typer.Option(help="Only this model.")] = None,
    as_json: Json = False,
) -> None:
    """Per model version: drift of the latest window, and live quality on joined labels.

    Drift is measured against the card's reference, feature by feature."""
    from services.monitor.config import MonitorSettings
    from services.monitor.report import load_reports, render
    from shared.config import load_settings
    from shared.models.registry import Registry
    from shared.state import make_redis

    settings = load_settings(MonitorSettings)
    reports = load_reports(make_redis(settings), settings, model)
    if model is not None and not reports:
        names = Registry(settings).models()
        if model not in names:
            raise no_such_model(model, names)
    if as_json:
        _print_json(reports)
    else:
        typer.echo(render(reports, settings.monitor_window))


@sustainability_app.command("report")
def sustainability_report(
    as_json: Json = False,
    plot: Annotated[Path | None, typer.Option(help="Also write a PNG chart here.")] = None,
) -> None:
    """J per event per stage, J per prediction, gCO2e per model version, target progress."""
    from services.monitor.config import MonitorSettings
    from services.monitor.sustainability import render, sustainability_report
    from shared.config import load_settings
    from shared.state import make_redis

    settings = load_settings(MonitorSettings)
    report = sustainability_report(make_redis(settings), settings)
    if plot is not None:
        try:
            from services.monitor.sustainability import plot as draw

            draw(report, plot)
        except OSError as error:
            raise cannot_write(plot, error) from None
        except ImportError:
            typer.echo("error: --plot needs matplotlib (pip install 'lepton-stream"
                       "[sustainability]')", err=True)
            raise typer.Exit(2) from None
        report["plot"] = str(plot)
    if as_json:
        _print_json(report)
    else:
        typer.echo(render(report) + (f"\n  plot: {plot}" if plot else ""))


@scale_app.command("advise")
def scale_advise(
    interval: Annotated[float, typer.Option(min=0.5, help="Seconds between the two lag "
                                            "samples.")] = 5.0,
    as_json: Json = False,
    keda: Annotated[Path | None, typer.Option(
        help="Write a KEDA ScaledObject per service into this directory.")] = None,
) -> None:
    """Recommend replicas per service: the fewest that keep lag bounded."""
    from confluent_kafka import KafkaException

    from services.monitor.config import MonitorSettings
    from services.monitor.scaling import advise, consumers, keda_scaled_object, sample
    from shared.config import load_settings
    from shared.state import make_redis

    settings = load_settings(MonitorSettings)
    if keda is not None:  # before the lag samples: a bad directory fails at once
        try:
            keda.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise cannot_write(keda, error) from None
    found = consumers(make_redis(settings), settings)
    if not found:
        typer.echo("error: no service records name a consumer group (are services running?)",
                   err=True)
        raise typer.Exit(1)
    try:
        before = {c.service: sample(settings, c) for c in found}
        time.sleep(interval)
        advice = [advise(c, before[c.service], sample(settings, c)) for c in found]
    except KafkaException as error:
        typer.echo(f"error: could not sample consumer lag (is Kafka reachable?): {error}",
                   err=True)
        raise typer.Exit(EXIT_UNAVAILABLE) from None
    if keda is not None:
        for item in advice:
            if item.lag_scaled:  # a lag trigger would misread the others
                path = keda / f"{item.service}.yaml"
                try:
                    path.write_text(keda_scaled_object(item, settings.bootstrap_servers()))
                except OSError as error:
                    raise cannot_write(path, error) from None
    if as_json:
        _print_json([item.to_dict() for item in advice])
        return
    for item in advice:
        typer.echo(f"{item.service:<11} {item.replicas} running -> {item.recommended} "
                   f"(partitions {item.partitions}, lag {item.lag}, "
                   f"{item.lag_growth_per_s:+.1f}/s): {item.reason}")


def register(app: typer.Typer) -> None:
    """Add `lepton monitor`, `lepton sustainability` and `lepton scale`."""
    app.add_typer(monitor_app, name="monitor")
    app.add_typer(sustainability_app, name="sustainability")
    app.add_typer(scale_app, name="scale")
