"""`lepton forget SUBJECT`: crypto-shred a data subject everywhere the platform can reach, and
say exactly what was destroyed and what was not; `lepton state rebuild`: restore every piece of
policy state Redis holds from its durable copies.

Destroys the subject's data key in Redis (which also destroys its per-subject token key and
every dead letter sealed under it), adds its pseudonym to the forgotten set, makes Redis
rewrite its AOF/RDB files so the wrapped key leaves them, and records a `subject_forgotten`
decision for the audit log. Then lists what it could not reach: data keys cached in running
processes (until their cache TTL), the producer's raw bytes on events.raw, and every model
version whose lineage includes the subject's released events (marked
`contains_forgotten: true` in the registry). `state rebuild` puts back wrapped data keys (from
`<keys>/datakeys`), the forgotten and consent sets (from the audit store), live-model pointers
(from `<registry>/<model>/live.json`), announcement sequences (from
`<registry>/<model>/announce-seq`) and the privacy ledger (from its charge log). Imports stay
inside the commands.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from services.governance.config import GovernanceSettings


def forget(
    subject: Annotated[str, typer.Argument(help="The data subject id (or its ps1: pseudonym).")],
) -> None:
    """Crypto-shred a subject: destroy its keys everywhere and report what was not reached."""
    from services.governance.config import GovernanceSettings
    from services.ingest.cli import record_decision
    from services.ingest.keystore import KeyStore
    from shared.cli import subject_argument
    from shared.config import load_settings
    from shared.state import compact_persistence, make_redis

    settings = load_settings(GovernanceSettings)
    client = make_redis(settings)
    store = KeyStore(settings, client=client)
    pseudonym = subject_argument(store.pseudonyms, subject)
    existed = store.forget(subject)
    done = [f"subject {pseudonym} added to the forgotten set (its events are withheld)",
            f"data key {store.data_key_id(subject)} "
            + ("destroyed in Redis" if existed else "was absent from Redis")
            + " (with it: the subject's tokens and sealed dead letters)"]
    compaction = compact_persistence(client)
    done += compaction.done
    missed = list(compaction.not_reached)
    missed.append("data keys cached in running services: unusable after "
                  "LEPTON_INGEST_KEY_CACHE_TTL_S (30 s by default)")
    missed.append("events.raw: the producer's original bytes stay until topic retention "
                  "deletes them (Lepton never writes there)")
    models, federated = _reach_models(settings, pseudonym)
    missed += models
    missed += [f"federated model {model}: this site trained the subject's data for a "
               f"federation (release {release}); the coordinator's operator marks every "
               f"version from it with `lepton models mark-forgotten {release}`"
               for release, model in federated]
    for line in done:
        typer.echo(f"destroyed: {line}")
    for line in missed:
        typer.echo(f"not reached: {line}")
    record_decision("subject_forgotten", "forget", pseudonym,
                    {"data_key_destroyed": existed, "redis_persistence": compaction.outcome,
                     "models_marked": len(models),
                     "federated_releases": [release for release, _ in federated]},
                    "run it again once the broker is up (forgetting is idempotent)")


def _reach_models(settings: GovernanceSettings, pseudonym: str
                  ) -> tuple[list[str], list[tuple[str, str]]]:
    """Mark every model version here trained on the subject's released events (the audit
    leaves its lineage names) and every version warm-started from one, a line each; and the
    (release id, model) of each federation this site trained the subject's data for, whose
    versions are in the coordinator's registry (found through the site's release log and its
    signed charges). One pass over the audit store."""
    from services.governance.releases import subject_releases
    from services.governance.verify import find_records
    from services.trainer.forgotten import mark_versions
    from shared.models.registry import ModelCard, Registry
    from shared.releases import SITE_ACTOR

    releases = subject_releases(settings.ledger_dir() / "releases", pseudonym)
    about, charges = find_records(settings.audit_dir(), pseudonym, set(releases))
    federated = [(release, str((charges[release].get("detail") or {}).get("model", "?")))
                 for release in releases if release in charges
                 and str(charges[release].get("actor") or "").startswith(SITE_ACTOR)]
    leaves = {(p, i) for p, i, record in about if record.get("kind") == "event_released"}
    if not leaves:
        return [], federated

    def trained_on(card: ModelCard) -> str | None:
        ranges = card.lineage.get("audit_leaves", {})
        hit = any(lo <= i <= hi for p, i in leaves for lo, hi in [ranges.get(str(p), (1, 0))])
        return "trained on the subject's data" if hit else None

    return mark_versions(Registry(settings), trained_on), federated


state_app = typer.Typer(help="Policy state kept in Redis and its durable copies.",
                        no_args_is_help=True)


@state_app.command("rebuild")
def rebuild() -> None:
    """Restore Redis state from its durable copies.

    Data keys, forgotten/consent sets, live pointers, announcement sequences and the ledger."""
    from services.governance.charge_log import ChargeLog
    from services.governance.config import GovernanceSettings
    from services.governance.ledger import Ledger
    from services.governance.policy import Policy
    from services.governance.service import AlreadyRunning, exclusive
    from services.ingest.keystore import KeyStore
    from shared.announcements import restore_sequence
    from shared.config import load_settings
    from shared.models.registry import Registry
    from shared.state import make_redis

    settings = load_settings(GovernanceSettings)
    client = make_redis(settings)
    restored, written = KeyStore(settings, client=client).restore()
    typer.echo(f"data keys: {restored} restored from {settings.keys_path() / 'datakeys'}, "
               f"{written} disk copies written from Redis")
    applied = Policy(client, settings, settings.audit_dir()).rebuild()
    typer.echo(f"forgotten and consent sets: {applied} decisions re-applied from "
               f"{settings.audit_dir()}")
    registry = Registry(settings)
    for model in registry.models():
        typer.echo(f"model {model}: live version {registry.live(model)}, announcement "
                   f"sequence {restore_sequence(client, settings, model)}")
    try:
        with exclusive(settings.governance_dir()):
            count = Ledger(client, settings, ChargeLog(settings.ledger_dir())).rebuild()
        typer.echo(f"privacy ledger: rebuilt from {count} charges")
    except AlreadyRunning:
        typer.echo("privacy ledger: governance is running and rebuilds it itself when missing")


def register(app: typer.Typer) -> None:
    """Add `lepton forget` and `lepton state` to the command line."""
    app.command("forget")(forget)
    app.add_typer(state_app, name="state")
