"""Governance commands of the `lepton` CLI: `governance` (run the service), `consent`,
`privacy report|rebuild`, and the `audit` commands of audit_cli.py
(`audit verify|prove|check-proof|consistency|check-consistency`).

Imports stay cheap; heavy modules load inside the commands.
"""

from __future__ import annotations

import getpass
from typing import Annotated

import typer

from services.governance.audit_cli import audit_app
from services.governance.cli_support import load_governance_settings
from shared.cli import fail, subject_argument, table_console

privacy_app = typer.Typer(help="The privacy-budget ledger.", no_args_is_help=True)


def governance() -> None:
    """Run governance (consent, forgetting, contribution bounds, ledger, audit) until stopped."""
    from services.governance.__main__ import main

    main()


def consent(
    subject: Annotated[str, typer.Argument(help="The data subject's id.")],
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="Dataset (purpose) name.")],
    withdraw: Annotated[bool, typer.Option("--withdraw/--give",
                                           help="Withdraw or give consent.")] = True,
) -> None:
    """Withdraw or give a subject's consent for a dataset; audited as consent_changed.

    The decision is recorded first: when the broker cannot take it, nothing
    changes (exit 69), since a change without its audit record would be undone
    by a rebuild of Redis."""
    import redis
    from confluent_kafka import KafkaException

    from services.governance.policy import Policy
    from shared.config import EXIT_UNAVAILABLE
    from shared.datasets import UnknownDataset, load_spec
    from shared.decisions import publish_decision
    from shared.events import Decision
    from shared.kafka import DeliveryTimeout, make_producer
    from shared.principals import Principal
    from shared.pseudonym import load_pseudonymizer
    from shared.state import make_redis

    settings = load_governance_settings()
    try:
        purpose = load_spec(dataset, settings.governance_specs_dir).privacy.purpose
    except UnknownDataset:
        raise fail(f"unknown dataset {dataset!r}", 2) from None
    pseudonym = subject_argument(load_pseudonymizer(settings), subject)
    decision = Decision(kind="consent_changed", actor=f"cli:{getpass.getuser()}",
                        subject_id=pseudonym, dataset=dataset,
                        detail={"consent": "withdrawn" if withdraw else "given",
                                "purpose": purpose})
    try:
        publish_decision(make_producer(settings), settings, decision,
                         signer=Principal.load(settings, "operator"))
    except (DeliveryTimeout, KafkaException) as error:
        raise fail(f"consent not changed: its consent_changed decision could not be sent to "
                   f"audit.requests ({error}); run it again once the broker is reachable",
                   EXIT_UNAVAILABLE) from None
    state = "withdrawn" if withdraw else "given"
    about = f"consent of {subject} ({pseudonym}) for {dataset} ({purpose})"
    try:
        changed = Policy(make_redis(settings), settings).set_consent(
            pseudonym, dataset, given=not withdraw)
    except redis.RedisError as error:  # governance applies the decision when it seals it
        typer.echo(f"{about}: {state} once governance seals decision {decision.decision_id}, "
                   f"sent for audit (Redis not reachable now: {error})")
        return
    note = "" if changed else " (it already was)"
    typer.echo(f"{about}: {state}{note}; decision {decision.decision_id} sent for audit")


@privacy_app.command("report")
def privacy_report(
    dataset: Annotated[str | None, typer.Option(help="Only this dataset.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Per dataset: releases, ε per release, and the distribution of per-subject spend."""
    import orjson

    from services.governance.ledger import Ledger
    from services.governance.report import report, report_tables
    from shared.datasets import UnknownDataset
    from shared.state import make_redis

    settings = load_governance_settings()
    client = make_redis(settings)
    try:
        data = report(client, settings, dataset)
    except UnknownDataset:
        raise fail(f"unknown dataset {dataset!r}: no spec of that name and nothing charged "
                   "to the ledger", 2) from None
    data["ledger_in_redis"] = Ledger(client, settings).ready()
    if as_json:
        typer.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
        return
    console = table_console()
    if not data["ledger_in_redis"]:
        console.print("[yellow]the ledger is not in Redis; run `lepton privacy rebuild` "
                      "or start `lepton governance`[/]")
    if not data["datasets"]:
        console.print("no privacy budget spent yet: nothing charged to the ledger"
                      + (f" for {dataset}" if dataset else ""))
        return
    for table in report_tables(data):
        console.print(table)


@privacy_app.command("rebuild")
def privacy_rebuild() -> None:
    """Rebuild the Redis ledger from the on-disk charge log (governance must be stopped)."""
    from services.governance.charge_log import ChargeLog
    from services.governance.ledger import Ledger
    from services.governance.releases import ReleaseLedger
    from services.governance.service import AlreadyRunning, exclusive
    from shared.state import make_redis

    settings = load_governance_settings()
    try:
        with exclusive(settings.governance_dir()):
            client = make_redis(settings)
            count = Ledger(client, settings, ChargeLog(settings.ledger_dir())).rebuild()
            releases = ReleaseLedger(client, settings, settings.ledger_dir() / "releases")
            released = releases.rebuild()
            releases.close()
    except AlreadyRunning as error:
        raise fail(f"{error}; stop it first (it rebuilds by itself when Redis lost the "
                   "ledger)") from None
    typer.echo(f"rebuilt the privacy ledger from {count} charges and {released} releases in "
               f"{settings.ledger_dir()}")


def register(app: typer.Typer) -> None:
    """Add the governance commands to the `lepton` CLI."""
    app.command("governance")(governance)
    app.command("consent")(consent)
    app.add_typer(privacy_app, name="privacy")
    app.add_typer(audit_app, name="audit")
