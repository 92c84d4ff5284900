"""`lepton trainer` (run the trainer) and `lepton tune` (a private hyper-parameter search whose
winner is released like a trained model); `lepton models` is in models_cli.py."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from services.trainer.models_cli import models_app
from shared.cli import fail
from shared.config import EXIT_UNAVAILABLE


def trainer(
    workers: Annotated[int | None, typer.Option(min=1, help="torch.distributed workers.")] = None,
    dataset: Annotated[str | None, typer.Option(help="Dataset spec to train.")] = None,
    model: Annotated[str | None, typer.Option(help="Model name (default: dataset).")] = None,
    dp: Annotated[bool | None, typer.Option("--dp/--no-dp", help="DP-SGD via Opacus.")] = None,
    exit_when_idle: Annotated[float | None, typer.Option(
        min=0.1, help="Exit after this many seconds without data.")] = None,
) -> None:
    """Consume events.governed, train, gate, register and announce models."""
    overrides = {"WORKERS": workers, "DATASET": dataset, "MODEL": model,
                 "DP_ENABLED": None if dp is None else str(dp).lower(),
                 "EXIT_WHEN_IDLE_S": exit_when_idle}
    for name, value in overrides.items():
        if value is not None:
            os.environ[f"LEPTON_TRAINER_{name}"] = str(value)
    from services.trainer.__main__ import main

    main([])


def tune(
    dataset: Annotated[str | None, typer.Option(help="Dataset spec to search.")] = None,
    trials: Annotated[int, typer.Option(min=1, help="Trials in the study (a study id that "
                                                    "exists continues up to this many).")] = 20,
    study: Annotated[str | None, typer.Option(
        help="Study id (default: a new one); an existing id continues or replays it, and is "
             "never charged twice.")] = None,
    model: Annotated[str | None, typer.Option(help="Model name (default: dataset).")] = None,
    storage: Annotated[str | None, typer.Option(help="redis or journal.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Search DP-SGD hyper-parameters (Optuna) and release the best trial's model.

    The study runs on events.governed; its whole cost is charged to the ledger
    before the release, and a JSON summary is printed.

    Exit codes: 0 done, 2 unknown dataset, 69 events.governed not read in time,
    1 other errors.
    """
    import orjson

    from services.trainer.config import TrainerSettings
    from services.trainer.snapshot import SnapshotTimeout
    from services.trainer.tune import run_tune
    from shared.config import load_settings
    from shared.datasets import UnknownDataset
    from shared.signals import stop_event
    from shared.tracing import setup_telemetry, shutdown_telemetry

    overrides = {"DATASET": dataset, "MODEL": model, "TUNE_STORAGE": storage}
    for name, value in overrides.items():
        if value is not None:
            os.environ[f"LEPTON_TRAINER_{name}"] = str(value)
    settings = load_settings(TrainerSettings)
    setup_telemetry("lepton-tune")
    try:
        result = run_tune(settings, trials, study, progress=not quiet, stop=stop_event())
    except UnknownDataset as error:
        raise fail(f"unknown dataset {error.args[0]!r}", 2) from None
    except ValueError as error:
        raise fail(str(error)) from None
    except SnapshotTimeout as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(EXIT_UNAVAILABLE) from None
    finally:
        shutdown_telemetry()
    sys.stdout.write(orjson.dumps(result.to_dict()).decode() + "\n")


def register(app: typer.Typer) -> None:
    """Add `lepton trainer`, `lepton tune` and `lepton models ...`."""
    app.command("trainer")(trainer)
    app.command("tune")(tune)
    app.add_typer(models_app, name="models")
