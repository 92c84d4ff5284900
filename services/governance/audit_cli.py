"""The `lepton audit` commands: consumes the audit store under the data dir and its signed
checkpoints (or a proof file and the log's public key), produces the verification table,
inclusion and consistency proofs as JSON, and their checks (exit 1 when the log was altered or a
proof does not hold, 2 on unreadable input).

Imports stay cheap; heavy modules load inside the commands.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from services.governance.cli_support import load_governance_settings
from services.governance.config import GovernanceSettings
from shared.cli import cannot_write, fail, subject_argument, table_console

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

audit_app = typer.Typer(help="Verify the audit log and produce or check proofs.",
                        no_args_is_help=True)

PublicKeyOption = Annotated[
    Path | None, typer.Option("--public-key", help="Ed25519 public key (PEM) of the audit log "
                              "(default: <keys dir>/audit-signing.pub).")]


def _public_key(settings: GovernanceSettings, path: Path | None) -> Any:
    from shared.signing import load_public_key, public_path

    target = path or public_path(settings.audit_key_path())
    try:
        return load_public_key(target)
    except (OSError, ValueError) as error:
        raise fail(f"cannot read public key {target}: {error}", 2) from None


def _read_json(source: str) -> dict[str, Any]:
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text()
        data = json.loads(text)
    except (OSError, ValueError) as error:
        raise fail(f"cannot read proof {source}: {error}", 2) from None
    if not isinstance(data, dict):
        raise fail("a proof is a JSON object", 2)
    return data


@audit_app.command("verify")
def audit_verify(public_key: PublicKeyOption = None) -> None:
    """Check every partition of the store against its signed checkpoints.

    Each partition's tree is recomputed from the stored records; exit 1 on any
    edit, drop, reorder or truncation."""
    from rich.table import Table

    from services.governance.verify import verify_store
    from shared.topics import Topics

    settings = load_governance_settings()
    missing = f"no audit log under {settings.audit_dir()} (has governance run with this " \
              "LEPTON_DATA_DIR?)"
    if not settings.audit_dir().is_dir():  # before the key, which would be missing too
        raise fail(missing)
    reports = verify_store(settings.audit_dir(), _public_key(settings, public_key),
                           Topics(settings.topic_prefix).audit_log)
    if not reports:
        raise fail(missing)
    table = Table(title=f"audit log {settings.audit_dir()}")
    for column in ("partition", "records", "signed", "checkpoints", "status"):
        table.add_column(column)
    for r in reports:
        status = "[green]ok[/]" if r.ok else f"[red]{len(r.problems)} problem(s)[/]"
        if r.ok and r.size > r.signed_size:
            status += f" ({r.size - r.signed_size} not yet checkpointed)"
        table.add_row(str(r.partition), str(r.size), str(r.signed_size), str(r.checkpoints),
                      status)
    console = table_console()
    console.print(table)
    failed = [r for r in reports if not r.ok]
    for r in failed:
        for problem in r.problems:
            typer.echo(f"partition {r.partition}: {problem}", err=True)
    if failed:
        typer.echo("VERIFICATION FAILED: the audit log was altered", err=True)
        raise typer.Exit(1)
    typer.echo("audit log verified: every partition matches its signed checkpoints")


@audit_app.command("prove")
def audit_prove(
    event_id: Annotated[str | None, typer.Argument(help="The event whose decision to prove.")]
    = None,
    subject: Annotated[str | None, typer.Option(
        "--subject", help="Prove every decision about this subject (raw id or pseudonym).")]
    = None,
    out: Annotated[Path | None, typer.Option(help="Write the proof here (default: stdout).")]
    = None,
) -> None:
    """Print the inclusion proof of an event's decision, or of every decision about a subject.

    JSON, each proof with its signed checkpoint; a subject's proofs are a list
    (its leaves name its pseudonym)."""
    from services.governance.merkle import ProofError
    from services.governance.verify import build_inclusion, find_event, find_subject
    from shared.pseudonym import load_pseudonymizer

    settings = load_governance_settings()
    if (event_id is None) == (subject is None):
        raise fail("name an EVENT_ID or --subject SUBJECT (one of them)", 2)
    if subject is not None:
        pseudonym = subject_argument(load_pseudonymizer(settings), subject)
        leaves = [(p, i) for p, i, _ in find_subject(settings.audit_dir(), pseudonym)]
        if not leaves:
            raise fail(f"no audit record names subject {pseudonym}")
        proofs = []
        for partition, index in leaves:
            try:
                proofs.append(build_inclusion(settings.audit_dir(), partition, index))
            except ProofError as error:
                typer.echo(f"leaf {index} (partition {partition}): {error}", err=True)
        text = json.dumps(proofs, indent=2)
        summary = f"{len(proofs)} of {len(leaves)} decisions about {pseudonym}"
    else:
        assert event_id is not None
        found = find_event(settings.audit_dir(), event_id)
        if not found:
            raise fail(f"no audit record for event {event_id}")
        primary = [f for f in found if json.loads(f[2]).get("identity") == f"event:{event_id}"]
        partition, index, _ = (primary or found)[0]
        try:
            text = json.dumps(build_inclusion(settings.audit_dir(), partition, index), indent=2)
        except ProofError as error:
            raise fail(str(error)) from None
        summary = f"the proof of leaf {index} (partition {partition})"
    if out is None:
        typer.echo(text)
    else:
        try:
            out.write_text(text + "\n")
        except OSError as error:
            raise cannot_write(out, error) from None
        typer.echo(f"wrote {summary} to {out}", err=True)


def _check_proof(proof: str, public_key: Path,
                 checker: Callable[[Any, Ed25519PublicKey], str], label: str) -> None:
    """Run `checker` on a proof file; exit 1 when it does not hold, 2 on an unreadable key."""
    from services.governance.merkle import ProofError
    from shared.signing import load_public_key

    data = _read_json(proof)
    try:
        summary = checker(data, load_public_key(public_key))
    except ProofError as error:
        typer.echo(f"PROOF REJECTED: {error}", err=True)
        raise typer.Exit(1) from None
    except (OSError, ValueError) as error:
        raise fail(f"cannot read public key {public_key}: {error}", 2) from None
    typer.echo(f"{label} OK: {summary}")


@audit_app.command("check-proof")
def audit_check_proof(
    proof: Annotated[str, typer.Argument(help="Proof file from `lepton audit prove` (- = stdin).")],
    public_key: Annotated[Path, typer.Option("--public-key", help="The log's public key (PEM).")],
) -> None:
    """Check an inclusion proof with the public key alone (exit 1 when it does not hold)."""
    from services.governance.verify import check_inclusion

    _check_proof(proof, public_key, check_inclusion, "proof")


@audit_app.command("consistency")
def audit_consistency(
    partition: Annotated[int, typer.Option(min=0, help="Audit log partition.")] = 0,
    old: Annotated[int | None, typer.Option(help="Older checkpoint size (default: first).")]
    = None,
    new: Annotated[int | None, typer.Option(help="Newer checkpoint size (default: latest).")]
    = None,
) -> None:
    """Print a consistency proof (JSON) between two signed checkpoints of a partition."""
    from services.governance.merkle import ProofError
    from services.governance.verify import build_consistency

    settings = load_governance_settings()
    try:
        typer.echo(json.dumps(build_consistency(settings.audit_dir(), partition, old, new),
                              indent=2))
    except ProofError as error:
        raise fail(str(error)) from None


@audit_app.command("check-consistency")
def audit_check_consistency(
    proof: Annotated[str, typer.Argument(help="Proof file from `lepton audit consistency`.")],
    public_key: Annotated[Path, typer.Option("--public-key", help="The log's public key (PEM).")],
) -> None:
    """Check that an older signed checkpoint is a prefix of a newer one (append-only)."""
    from services.governance.verify import check_consistency

    _check_proof(proof, public_key, check_consistency, "consistency")
