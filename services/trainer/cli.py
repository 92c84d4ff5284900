"""`lepton trainer` (run the trainer), `lepton tune` (a private hyper-parameter search whose
winner is released like a trained model) and `lepton models list|show|promote|rollback|canary|
shadow` (inspect the registry, move the live pointer, and announce on `models.updates`)."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Annotated

import typer

from shared.config import EXIT_UNAVAILABLE

if TYPE_CHECKING:
    from confluent_kafka import Producer

    from shared.config import LeptonSettings
    from shared.models.registry import ModelCard, Registry

models_app = typer.Typer(help="Inspect the model registry; promote, roll back, canary, shadow.",
                         no_args_is_help=True)

ModelOption = Annotated[str | None, typer.Option(
    "--model", "-m", help="Model name (default: the only model in the registry).")]


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

    The study runs on events.governed, its whole cost is charged to the ledger before the
    release, and a JSON summary is printed."""
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
        raise _fail(f"unknown dataset {error.args[0]!r}") from None
    except ValueError as error:
        raise _fail(str(error)) from None
    except SnapshotTimeout as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(EXIT_UNAVAILABLE) from None
    finally:
        shutdown_telemetry()
    sys.stdout.write(orjson.dumps(result.to_dict()).decode() + "\n")


def _context() -> tuple[LeptonSettings, Registry]:
    from shared.config import LeptonSettings, load_settings
    from shared.models.registry import Registry

    settings = load_settings(LeptonSettings)
    return settings, Registry(settings)


def _model(registry: Registry, model: str | None) -> str:
    names = registry.models()
    if model is not None:
        if model not in names:
            raise _fail(f"no model {model!r} in the registry; have {', '.join(names) or 'none'}")
        return model
    if len(names) != 1:
        raise _fail(f"say which model with --model; the registry has {', '.join(names) or 'none'}")
    return names[0]


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


def _verified(registry: Registry, model: str, version: int) -> ModelCard:
    from shared.models.registry import ArtifactError

    try:
        card, _ = registry.verify(model, version)
    except ArtifactError as error:
        raise _fail(str(error)) from None
    return card


def _servable(registry: Registry, model: str, version: int) -> ModelCard:
    """The verified card of a version that may answer (privacy cleared), else exit 1."""
    from shared.models.clearance import privacy_refusal

    card = _verified(registry, model, version)
    refusal = privacy_refusal(card)
    if refusal is not None:
        raise _fail(f"{model} v{version} cannot be served: {refusal}")
    return card


def _producer(settings: LeptonSettings) -> Producer:
    from shared.kafka import make_producer

    return make_producer(settings)


def _publish(settings: LeptonSettings, registry: Registry, card: ModelCard, action: str,
             share: float | None = None, decision: str | None = None,
             detail: dict[str, object] | None = None) -> None:
    from shared.decisions import publish_decision
    from shared.events import Decision
    from shared.models.announce import announce
    from shared.principals import Principal
    from shared.tracing import get_tracer, setup_telemetry, shutdown_telemetry

    setup_telemetry("lepton-models")
    try:
        producer = _producer(settings)
        operator = Principal.load(settings, "operator")
        if decision is not None:
            publish_decision(producer, settings, Decision(
                kind=decision, actor=f"cli:{os.environ.get('USER', 'unknown')}",
                dataset=card.dataset, detail={"version": card.version, **(detail or {})}),
                signer=operator)
        announce(producer, settings, registry, card, action, share, get_tracer(__name__),
                 signer=operator, override=action in ("promote", "canary", "rollback")
                 and card.status != "promoted")
    finally:
        shutdown_telemetry()


@models_app.command("list")
def list_models(model: ModelOption = None) -> None:
    """Versions with status, live marker and headline metrics."""
    _, registry = _context()
    names = [_model(registry, model)] if model else registry.models()
    if not names:
        typer.echo(f"no models in the registry at {registry.root} (has the trainer released "
                   "one, and is LEPTON_DATA_DIR this platform's?)")
    for name in names:
        live = registry.live(name)
        typer.echo(f"{name} (live: {live if live is not None else 'none'})")
        for version in registry.versions(name):
            card = registry.card(name, version)
            marker = "*" if version == live else " "
            eps = f" eps={card.epsilon:.3g}" if card.epsilon is not None else ""
            if registry.flags(name, version).get("contains_forgotten"):
                eps += " contains_forgotten"
            f1, auc = card.metrics.get("f1", 0.0), card.metrics.get("roc_auc", 0.0)
            # the rows trained on: a DP release leaves out rows over the contribution bound
            rows = card.training.get("rows", card.lineage.get("rows", {}).get("train", 0))
            typer.echo(f" {marker} v{version:<4} {card.status:<9} f1={f1:.4f} auc={auc:.4f}{eps} "
                       f"rows={rows} {card.created_at:%Y-%m-%d %H:%M:%S}")


@models_app.command()
def show(version: Annotated[int | None, typer.Argument(help="Default: live.")] = None,
         model: ModelOption = None) -> None:
    """Print a version's model card as JSON, after verifying its signature and hash."""
    import orjson

    _, registry = _context()
    name = _model(registry, model)
    target = version if version is not None else registry.live(name)
    if target is None:
        raise _fail(f"{name} has no live version; name one")
    card = _verified(registry, name, target)
    shown = {**card.model_dump(mode="json"), "flags": registry.flags(name, target)}
    sys.stdout.write(orjson.dumps(shown, option=orjson.OPT_INDENT_2).decode() + "\n")


@models_app.command()
def promote(version: int, model: ModelOption = None) -> None:
    """Make VERSION live and announce it.

    Even a version the gate refused (announced with an operator override); announced as a
    rollback when VERSION is below the live one."""
    settings, registry = _context()
    name = _model(registry, model)
    card = _servable(registry, name, version)
    previous = registry.set_live(name, version)
    # serving refuses a promote below live: going back is announced as the rollback it is
    action = "rollback" if previous is not None and version < previous else "promote"
    _publish(settings, registry, card, action, decision="model_promoted",
             detail={"previous": previous, "manual": True, "gate_status": card.status})
    typer.echo(f"{name} v{version} is live (was {previous})")


@models_app.command()
def rollback(to: Annotated[int | None, typer.Option(help="Version (default: previous live).")]
             = None, model: ModelOption = None) -> None:
    """Make the previously live version (or --to VERSION) live again and announce it."""
    from shared.models.registry import ArtifactError

    settings, registry = _context()
    name = _model(registry, model)
    try:
        if to is None:
            was, now = registry.rollback(name)
        else:
            _servable(registry, name, to)
            was, now = registry.set_live(name, to), to
    except ArtifactError as error:
        raise _fail(str(error)) from None
    try:
        card = _servable(registry, name, now)
    except typer.Exit:
        if was is not None:
            registry.set_live(name, was)  # the pointer goes back where it was
        raise
    _publish(settings, registry, card, "rollback", decision="model_rolled_back",
             detail={"from": was})
    typer.echo(f"{name} rolled back from v{was} to v{now}")


@models_app.command()
def canary(version: int,
           share: Annotated[float, typer.Option(min=0.0, max=1.0, help="Traffic share.")] = 0.1,
           model: ModelOption = None) -> None:
    """Announce VERSION as a canary taking SHARE of traffic (serving routes it)."""
    settings, registry = _context()
    name = _model(registry, model)
    _publish(settings, registry, _servable(registry, name, version), "canary", share=share)
    typer.echo(f"{name} v{version} announced as canary at {share:.0%}")


@models_app.command()
def shadow(version: int, model: ModelOption = None) -> None:
    """Announce VERSION as a shadow (scored beside live, answers not returned)."""
    settings, registry = _context()
    name = _model(registry, model)
    _publish(settings, registry, _servable(registry, name, version), "shadow")
    typer.echo(f"{name} v{version} announced as shadow")


def register(app: typer.Typer) -> None:
    """Add `lepton trainer`, `lepton tune` and `lepton models ...`."""
    app.command("trainer")(trainer)
    app.command("tune")(tune)
    app.add_typer(models_app, name="models")
