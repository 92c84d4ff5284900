"""`lepton ingest`, `lepton keys rotate|rewrap|retire|status` and `lepton quality report`
(`lepton keys principals` is in `lepton/keyset.py`, `lepton forget` in `lepton/subjects.py`:
they reach every service's keys and stores).

Rotation and retirement are recorded as decisions (`key_rotated`, `key_retired`) on
`audit.requests`, signed as the operator principal, for governance to seal into the audit log.
Imports stay inside the commands.
"""

from __future__ import annotations

import getpass
import sys
from typing import Annotated

import typer

keys_app = typer.Typer(help="Master keys: rotate, re-wrap data keys, retire, show usage; "
                       "the deployment's key set.",
                       no_args_is_help=True)
quality_app = typer.Typer(help="Data quality of ingested events: the per-window index.",
                          no_args_is_help=True)


def _actor(command: str) -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user} via lepton {command}"


def record_decision(kind: str, command: str, subject_id: str | None, detail: dict[str, object],
                    retry_hint: str) -> None:
    """Send an operator's decision to audit.requests; when it cannot be, say the act is done
    but unrecorded and exit 69 (broker unreachable) or 1."""
    from shared.config import EXIT_UNAVAILABLE, LeptonSettings, load_settings
    from shared.decisions import publish_decision
    from shared.events import Decision
    from shared.kafka import make_producer
    from shared.kafka.clients import broker_unreachable
    from shared.principals import Principal

    settings = load_settings(LeptonSettings)
    try:
        producer = make_producer(settings)
        publish_decision(producer, settings,
                         Decision(kind=kind, actor=_actor(command), subject_id=subject_id,
                                  detail=detail), signer=Principal.load(settings, "operator"))
    except Exception as error:  # the act is done; say loudly that its record is missing
        typer.echo(f"error: done, but the {kind} decision was NOT recorded on audit.requests "
                   f"({type(error).__name__}: {error}); {retry_hint}", err=True)
        raise typer.Exit(EXIT_UNAVAILABLE if broker_unreachable(error) else 1) from None


def ingest() -> None:
    """Run the ingest service (events.raw → events.clean / events.rejected) until stopped."""
    from services.ingest.__main__ import main

    main()


@keys_app.command("rotate")
def rotate() -> None:
    """Add a new master key, make it active and re-wrap every data key under it."""
    from services.ingest.keystore import KeyStore
    from services.ingest.rewrap import rewrap
    from shared.config import LeptonSettings, load_settings
    from shared.crypto import KmsError

    store = KeyStore(load_settings(LeptonSettings))
    previous = store.kms.active_key_id()
    try:
        new = store.kms.add_key()  # type: ignore[attr-defined]
    except (KmsError, AttributeError) as error:
        typer.echo(f"error: cannot add a master key: {error}", err=True)
        raise typer.Exit(1) from None
    report = rewrap(store)
    typer.echo(f"active master key {new} (was {previous}); re-wrapped {report.rewrapped} data "
               f"keys, {report.failed} failed, {report.changed_meanwhile} changed meanwhile")
    record_decision("key_rotated", "keys rotate", None,
            {"master_key_id": new, "previous_master_key_id": previous,
             "rewrapped": report.rewrapped, "failed": report.failed},
            "the rotation stands (running it again would add another key)")
    if report.failed:
        raise typer.Exit(1)


@keys_app.command("rewrap")
def rewrap() -> None:
    """Re-wrap data keys still under an older master key (idempotent; safe while running)."""
    from services.ingest.keystore import KeyStore
    from services.ingest.rewrap import rewrap
    from shared.config import LeptonSettings, load_settings

    report = rewrap(KeyStore(load_settings(LeptonSettings)))
    typer.echo(f"active {report.active}: re-wrapped {report.rewrapped}, already current "
               f"{report.current}, changed meanwhile {report.changed_meanwhile}, "
               f"failed {report.failed}")
    if report.failed:
        raise typer.Exit(1)


@keys_app.command("status")
def status() -> None:
    """Show each master key and what still depends on it (never the keys)."""
    from services.ingest.keystore import KeyStore
    from services.ingest.rewrap import master_key_usage
    from shared.config import LeptonSettings, load_settings

    store = KeyStore(load_settings(LeptonSettings))
    active = store.kms.active_key_id()
    usage = master_key_usage(store)
    ids = getattr(store.kms, "key_ids", lambda: sorted(usage))()
    for key_id in ids:
        mark = "*" if key_id == active else " "
        note = ("active: new data keys are wrapped under it" if key_id == active else
                "retirable (nothing depends on it)" if not usage.get(key_id) else
                "run `lepton keys rewrap` before retiring it")
        typer.echo(f"{mark} {key_id}  wraps {usage.get(key_id, 0)} data keys; {note}")


@keys_app.command("retire")
def retire(
    key_id: Annotated[str, typer.Argument(help="The master key id to remove.")],
) -> None:
    """Remove a master key from the keyring once no data key is wrapped under it."""
    from services.ingest.keystore import KeyStore
    from services.ingest.rewrap import master_key_usage
    from shared.config import LeptonSettings, load_settings
    from shared.crypto import KmsError

    store = KeyStore(load_settings(LeptonSettings))
    remove = getattr(store.kms, "remove_key", None)
    if remove is None:
        typer.echo("error: this KMS cannot remove keys; retire it in the KMS itself", err=True)
        raise typer.Exit(1)
    if key_id == store.kms.active_key_id():
        typer.echo(f"error: {key_id} is the active master key; `lepton keys rotate` first",
                   err=True)
        raise typer.Exit(1)
    wrapped = master_key_usage(store).get(key_id, 0)
    if wrapped:
        typer.echo(f"error: {wrapped} data keys are still wrapped under {key_id}; run "
                   "`lepton keys rewrap` first", err=True)
        raise typer.Exit(1)
    try:
        remove(key_id)
    except KmsError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"retired master key {key_id}: removed from the keyring; copies of data keys "
               "wrapped under it (old backups, rewritten Redis files) can no longer be opened")
    record_decision("key_retired", "keys retire", None, {"master_key_id": key_id},
                    "the key is gone (retiring it again is refused)")


@quality_app.command("report")
def quality_report(
    dataset: Annotated[str | None, typer.Option(help="Only this dataset.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    last: Annotated[int, typer.Option(min=1, help="How many of the latest windows.")] = 20,
) -> None:
    """Per dataset: the quality index of the latest windows and the worst fields.

    Windows of all replicas; a field's rates: missing, wrong type, out of range,
    invalid, clipped, imputed, rejected."""
    import orjson

    from services.ingest.config import IngestSettings
    from services.ingest.quality_report import report, report_tables
    from shared.cli import fail, table_console
    from shared.config import load_settings
    from shared.datasets import UnknownDataset, load_spec

    settings = load_settings(IngestSettings)
    data = report(settings.quality_dir(), dataset, last)
    if dataset and not data["datasets"]:
        try:
            load_spec(dataset, settings.ingest_specs_dir)
        except UnknownDataset:
            raise fail(f"unknown dataset {dataset!r}: no spec of that name and no quality "
                       "window recorded", 2) from None
    if as_json:
        typer.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
        return
    if not data["datasets"]:
        typer.echo(f"no quality windows recorded under {data['directory']}"
                   + (f" for {dataset}" if dataset else ""))
        return
    console = table_console()
    for table in report_tables(data):
        console.print(table)


def register(app: typer.Typer) -> None:
    """Add the ingest commands to the `lepton` CLI."""
    app.command("ingest")(ingest)
    app.add_typer(keys_app, name="keys")
    app.add_typer(quality_app, name="quality")


if __name__ == "__main__":
    sys.exit("use `lepton ingest` or `lepton keys ...`")
