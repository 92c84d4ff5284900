"""`lepton ingest`, `lepton keys rotate|rewrap|status` and `lepton forget SUBJECT`.

Rotation and forgetting are recorded as decisions (`key_rotated`, `subject_forgotten`) on
`audit.requests` for governance to seal into the audit log. Imports stay inside the commands.
"""

from __future__ import annotations

import getpass
import sys
from typing import Annotated

import typer

keys_app = typer.Typer(help="Master keys: rotate, re-wrap data keys, show usage.",
                       no_args_is_help=True)


def _actor(command: str) -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user} via lepton {command}"


def _record(kind: str, command: str, subject_id: str | None, detail: dict[str, object],
            retry_hint: str) -> None:
    from shared.config import LeptonSettings, load_settings
    from shared.decisions import publish_decision
    from shared.events import Decision
    from shared.kafka import make_producer

    settings = load_settings(LeptonSettings)
    try:
        producer = make_producer(settings)
        publish_decision(producer, settings,
                         Decision(kind=kind, actor=_actor(command), subject_id=subject_id,
                                  detail=detail))
    except Exception as error:  # the act is done; say loudly that its record is missing
        typer.echo(f"error: done, but the {kind} decision was NOT recorded on audit.requests "
                   f"({type(error).__name__}: {error}); {retry_hint}", err=True)
        raise typer.Exit(1) from None


def ingest() -> None:
    """Run the ingest service (events.raw → events.clean / events.rejected) until stopped."""
    from services.ingest.__main__ import main

    main()


@keys_app.command("rotate")
def rotate() -> None:
    """Add a new master key, make it active and re-wrap every data key under it."""
    from shared.config import LeptonSettings, load_settings
    from shared.crypto import KeyStore
    from shared.keyring import KmsError

    store = KeyStore(load_settings(LeptonSettings))
    previous = store.kms.active_key_id()
    try:
        new = store.kms.add_key()  # type: ignore[attr-defined]
    except (KmsError, AttributeError) as error:
        typer.echo(f"error: cannot add a master key: {error}", err=True)
        raise typer.Exit(1) from None
    report = store.rewrap()
    typer.echo(f"active master key {new} (was {previous}); re-wrapped {report.rewrapped} data "
               f"keys, {report.failed} failed, {report.changed_meanwhile} changed meanwhile")
    _record("key_rotated", "keys rotate", None,
            {"master_key_id": new, "previous_master_key_id": previous,
             "rewrapped": report.rewrapped, "failed": report.failed},
            "the rotation stands (running it again would add another key)")
    if report.failed:
        raise typer.Exit(1)


@keys_app.command("rewrap")
def rewrap() -> None:
    """Re-wrap data keys still under an older master key (idempotent; safe while running)."""
    from shared.config import LeptonSettings, load_settings
    from shared.crypto import KeyStore

    report = KeyStore(load_settings(LeptonSettings)).rewrap()
    typer.echo(f"active {report.active}: re-wrapped {report.rewrapped}, already current "
               f"{report.current}, changed meanwhile {report.changed_meanwhile}, "
               f"failed {report.failed}")
    if report.failed:
        raise typer.Exit(1)


@keys_app.command("status")
def status() -> None:
    """Show the master keys and how many data keys each wraps (never the keys)."""
    from shared.config import LeptonSettings, load_settings
    from shared.crypto import KeyStore

    store = KeyStore(load_settings(LeptonSettings))
    active = store.kms.active_key_id()
    usage = store.master_key_usage()
    ids = getattr(store.kms, "key_ids", lambda: sorted(usage))()
    for key_id in ids:
        mark = "*" if key_id == active else " "
        typer.echo(f"{mark} {key_id}  wraps {usage.get(key_id, 0)} data keys")


def forget(
    subject: Annotated[str, typer.Argument(help="The data subject id to forget.")],
) -> None:
    """Crypto-shred a subject: destroy its data key so all of its encrypted PII is unreadable."""
    from shared.config import LeptonSettings, load_settings
    from shared.crypto import KeyStore

    existed = KeyStore(load_settings(LeptonSettings)).forget(subject)
    typer.echo(f"subject forgotten; data key {'destroyed' if existed else 'was absent'}",
               err=True)
    _record("subject_forgotten", "forget", subject, {"data_key_destroyed": existed},
            "run it again once the broker is up (forgetting is idempotent)")


def register(app: typer.Typer) -> None:
    """Add the ingest commands to the `lepton` CLI."""
    app.command("ingest")(ingest)
    app.command("forget")(forget)
    app.add_typer(keys_app, name="keys")


if __name__ == "__main__":
    sys.exit("use `lepton ingest`, `lepton keys ...` or `lepton forget ...`")
