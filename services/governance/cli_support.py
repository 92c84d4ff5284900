"""What the governance commands share: consumes the LEPTON_* environment, produces the
governance settings, and the error exit (`error: ...` on stderr, then exit with a code)."""

from __future__ import annotations

import typer

from services.governance.config import GovernanceSettings


def load_governance_settings() -> GovernanceSettings:
    """The governance settings from the environment."""
    from shared.config import load_settings

    return load_settings(GovernanceSettings)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print `error: message` to stderr; the typer.Exit to raise (exit status `code`)."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)
