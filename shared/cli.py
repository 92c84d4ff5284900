"""What the command lines (the `lepton` CLI and the services' commands) share: consumes an
operator's arguments, produces the error exit (`error: ...` on stderr, then an exit status)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from shared.pseudonym import Pseudonymizer


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print `error: message` to stderr; the typer.Exit to raise (exit status `code`)."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def subject_argument(pseudonyms: Pseudonymizer, subject: str) -> str:
    """The pseudonym an operator means by `subject`; exit status 2 when it is no subject id."""
    from shared.pseudonym import operator_subject

    try:
        return operator_subject(pseudonyms, subject)
    except ValueError as error:
        raise fail(f"invalid subject id: {error}", 2) from None
