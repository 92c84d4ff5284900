"""`lepton models list|show|promote|rollback|canary|shadow|mark-forgotten`: consumes the
registry, produces moves of its live pointer, `contains_forgotten` marks, the operator's
decisions on audit.requests and announcements on models.updates."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer

from shared.cli import fail, no_such_model
from shared.config import EXIT_UNAVAILABLE

if TYPE_CHECKING:
    from confluent_kafka import Producer

    from shared.config import LeptonSettings
    from shared.models.registry import ModelCard, Registry
    from shared.principals import Principal

models_app = typer.Typer(help="Inspect the model registry; promote, roll back, canary, shadow; "
                              "mark versions that carry a forgotten subject.",
                         no_args_is_help=True)

ModelOption = Annotated[str | None, typer.Option(
    "--model", "-m", help="Model name (default: the only model in the registry).")]
ForgottenOption = Annotated[bool, typer.Option(
    "--allow-forgotten", help="Serve a version marked contains_forgotten (lepton forget) "
                              "anyway.")]


def _context() -> tuple[LeptonSettings, Registry]:
    from shared.config import LeptonSettings, load_settings
    from shared.models.registry import Registry

    settings = load_settings(LeptonSettings)
    return settings, Registry(settings)


def _model(registry: Registry, model: str | None) -> str:
    names = registry.models()
    if model is not None:
        if model not in names:
            raise no_such_model(model, names)
        return model
    if len(names) != 1:
        raise fail(f"say which model with --model; the registry has {', '.join(names) or 'none'}",
                   2)
    return names[0]


def _verified(registry: Registry, model: str, version: int) -> ModelCard:
    from shared.models.registry import ArtifactError

    try:
        card, _ = registry.verify(model, version)
    except ArtifactError as error:
        raise fail(str(error)) from None
    return card


def _servable(registry: Registry, model: str, version: int, allow_forgotten: bool = False
              ) -> ModelCard:
    """The verified card of a version that may answer (privacy cleared, and not carrying a
    forgotten subject unless allowed), else exit 1."""
    from shared.models.clearance import privacy_refusal

    card = _verified(registry, model, version)
    refusal = privacy_refusal(card)
    if refusal is not None:
        raise fail(f"{model} v{version} cannot be served: {refusal}")
    if not allow_forgotten and registry.contains_forgotten(model, version):
        raise fail(f"{model} v{version} is marked contains_forgotten: it was trained on (or "
                   "continued from) the data of a subject `lepton forget` erased; choose "
                   "another version, or pass --allow-forgotten to serve it anyway")
    return card


@contextmanager
def _bus(settings: LeptonSettings) -> Iterator[tuple[Producer, Principal]]:
    """A producer and the operator's principal, inside the CLI's telemetry."""
    from shared.kafka import make_producer
    from shared.principals import Principal
    from shared.tracing import setup_telemetry, shutdown_telemetry

    setup_telemetry("lepton-models")
    try:
        yield make_producer(settings), Principal.load(settings, "operator")
    finally:
        shutdown_telemetry()


def _send_announcement(producer: Producer, operator: Principal, settings: LeptonSettings,
                       registry: Registry, card: ModelCard, action: str,
                       share: float | None) -> None:
    """Announce `card`, signed by the operator; acting on a version the gate refused is an
    override serving must be told of (a shadow's answers are never returned: none needed)."""
    from shared.models.announce import announce
    from shared.tracing import get_tracer

    announce(producer, settings, registry, card, action, share, get_tracer(__name__),
             signer=operator, override=action in ("promote", "canary", "rollback")
             and card.status != "promoted")


def _announce(settings: LeptonSettings, registry: Registry, card: ModelCard, action: str,
              share: float | None = None) -> None:
    with _bus(settings) as (producer, operator):
        _send_announcement(producer, operator, settings, registry, card, action, share)


def _move_live(settings: LeptonSettings, registry: Registry, card: ModelCard, action: str,
               decision: str, detail: dict[str, object], move: Callable[[], object]) -> None:
    """Record `decision`, then `move` the live pointer, then announce `card` with `action`.

    Nothing changes when the decision cannot be sent; when the announcement cannot, the
    pointer has moved and the error says how to tell serving."""
    from shared.decisions import publish_decision
    from shared.events import Decision
    from shared.kafka.clients import broker_unreachable

    with _bus(settings) as (producer, operator):
        try:
            publish_decision(producer, settings, Decision(
                kind=decision, actor=f"cli:{os.environ.get('USER', 'unknown')}",
                dataset=card.dataset, detail={"version": card.version, **detail}),
                signer=operator)
        except Exception as error:
            if not broker_unreachable(error):
                raise
            raise fail(f"nothing changed: the {decision} decision could not be sent to "
                       f"audit.requests ({error}); run it again once the broker is reachable",
                       EXIT_UNAVAILABLE) from None
        move()
        try:
            _send_announcement(producer, operator, settings, registry, card, action, None)
        except Exception as error:
            if not broker_unreachable(error):
                raise
            again = "promote" if action == "promote" else "rollback --to"
            raise fail(f"{card.model} v{card.version} is live in the registry and its {decision} "
                       f"decision is recorded, but serving was not told ({error}): it keeps "
                       f"what it serves until it restarts or you run `lepton models {again} "
                       f"{card.version}` once the broker is reachable", EXIT_UNAVAILABLE) from None


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
            if registry.contains_forgotten(name, version):
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
        raise fail(f"{name} has no live version; name one")
    card = _verified(registry, name, target)
    shown = {**card.model_dump(mode="json"), "flags": registry.flags(name, target)}
    sys.stdout.write(orjson.dumps(shown, option=orjson.OPT_INDENT_2).decode() + "\n")


@models_app.command()
def promote(version: int, model: ModelOption = None, allow_forgotten: ForgottenOption = False
            ) -> None:
    """Make VERSION live and announce it.

    Even a version the gate refused (announced with an operator override);
    announced as a rollback when VERSION is below the live one."""
    settings, registry = _context()
    name = _model(registry, model)
    card = _servable(registry, name, version, allow_forgotten)
    previous = registry.live(name)
    # serving refuses a promote below live: going back is announced as the rollback it is
    action = "rollback" if previous is not None and version < previous else "promote"
    _move_live(settings, registry, card, action, "model_promoted",
               {"previous": previous, "manual": True, "gate_status": card.status},
               lambda: registry.set_live(name, version))
    typer.echo(f"{name} v{version} is live (was {previous})")


@models_app.command()
def rollback(to: Annotated[int | None, typer.Option(help="Version (default: previous live).")]
             = None, model: ModelOption = None, allow_forgotten: ForgottenOption = False
             ) -> None:
    """Make the previously live version (or --to VERSION) live again and announce it."""
    from shared.models.registry import ArtifactError

    settings, registry = _context()
    name = _model(registry, model)
    was = registry.live(name)
    try:
        now = registry.rollback_target(name) if to is None else to
    except ArtifactError as error:
        raise fail(str(error)) from None
    card = _servable(registry, name, now, allow_forgotten)
    _move_live(settings, registry, card, "rollback", "model_rolled_back", {"from": was},
               (lambda: registry.rollback(name)) if to is None
               else (lambda: registry.set_live(name, now)))
    typer.echo(f"{name} rolled back from v{was} to v{now}")


@models_app.command()
def canary(version: int,
           share: Annotated[float, typer.Option(min=0.0, max=1.0, help="Traffic share.")] = 0.1,
           model: ModelOption = None, allow_forgotten: ForgottenOption = False) -> None:
    """Announce VERSION as a canary taking SHARE of traffic (serving routes it)."""
    settings, registry = _context()
    name = _model(registry, model)
    _announce(settings, registry, _servable(registry, name, version, allow_forgotten), "canary",
              share)
    typer.echo(f"{name} v{version} announced as canary at {share:.0%}")


@models_app.command()
def shadow(version: int, model: ModelOption = None, allow_forgotten: ForgottenOption = False
           ) -> None:
    """Announce VERSION as a shadow (scored beside live, answers not returned)."""
    settings, registry = _context()
    name = _model(registry, model)
    _announce(settings, registry, _servable(registry, name, version, allow_forgotten), "shadow")
    typer.echo(f"{name} v{version} announced as shadow")


@models_app.command("mark-forgotten")
def mark_forgotten(releases: Annotated[list[str], typer.Argument(
        help="Release ids, as `lepton forget` at a federation site names them.")]) -> None:
    """Mark versions charged under RELEASES (or warm-started from one) contains_forgotten.

    A version's own charge counts, and each federation site's. Exit 1 when no
    version here names any of them."""
    from services.trainer.forgotten import card_releases, mark_versions

    wanted = set(releases)
    _, registry = _context()

    def trained_on(card: ModelCard) -> str | None:
        named = sorted(wanted & card_releases(card))
        return f"charged under release {', '.join(named)}, trained on the subject's data" \
            if named else None

    lines = mark_versions(registry, trained_on)
    if not lines:
        raise fail(f"no version in the registry at {registry.root} was charged under "
                   f"{', '.join(sorted(wanted))} (is this the coordinator's registry?)")
    for line in lines:
        typer.echo(line)
