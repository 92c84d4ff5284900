"""What the command lines (the `lepton` CLI and the services' commands) share: consumes an
operator's arguments, produces the error exit (`error: ...` on stderr, then an exit status)
and the console their tables print on."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from pathlib import Path

    from rich.console import Console

    from shared.pseudonym import Pseudonymizer

PIPED_WIDTH = 200  # rich's 80 columns cut ids and ε values in a pipe or a log


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print `error: message` to stderr; the typer.Exit to raise (exit status `code`)."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def no_such_model(model: str, names: list[str]) -> typer.Exit:
    """Say that the registry holds no `model` (and which it has); the typer.Exit to raise
    (exit status 2: a bad argument)."""
    return fail(f"no model {model!r} in the registry; have {', '.join(names) or 'none'}", 2)


def cannot_write(path: Path, error: OSError) -> typer.Exit:
    """Say why `path` could not be written; the typer.Exit to raise (EX_CANTCREAT)."""
    from shared.config import EXIT_CANTCREAT

    return fail(f"cannot write {path}: {error.strerror or error}", EXIT_CANTCREAT)


def subject_argument(pseudonyms: Pseudonymizer, subject: str) -> str:
    """The pseudonym an operator means by `subject`; exit status 2 when it is no subject id."""
    from shared.pseudonym import operator_subject

    try:
        return operator_subject(pseudonyms, subject)
    except ValueError as error:
        raise fail(f"invalid subject id: {error}", 2) from None


def table_console() -> Console:
    """A rich console for tables: the terminal's width, or PIPED_WIDTH when stdout is not a
    terminal and COLUMNS is unset."""
    from rich.console import Console

    piped = not sys.stdout.isatty() and "COLUMNS" not in os.environ
    return Console(width=PIPED_WIDTH if piped else None)
