"""Every `lepton` command has help whose first paragraph is one line: the command lists show
that paragraph as the command's summary, hard line breaks included. Help keeps its hard line
breaks, so a line too long for an 80-column terminal leaves a word or two on a line of its
own."""

from __future__ import annotations

from collections.abc import Iterator

import click
import typer

from lepton.cli import app


def _commands(command: click.Command, path: str) -> Iterator[tuple[str, click.Command]]:
    for name, sub in getattr(command, "commands", {}).items():
        yield f"{path} {name}", sub
        yield from _commands(sub, f"{path} {name}")


def test_every_command_has_a_one_line_summary() -> None:
    commands = dict(_commands(typer.main.get_command(app), "lepton"))
    assert len(commands) > 40
    missing = [path for path, command in commands.items() if not (command.help or "").strip()]
    assert missing == []
    ragged = [path for path, command in commands.items()
              if "\n" in (command.help or "").strip().split("\n\n")[0]]
    assert ragged == []


def test_help_lines_fit_an_80_column_terminal() -> None:
    commands = dict(_commands(typer.main.get_command(app), "lepton"))
    help_width = 78  # the help panel's text width on 80 columns
    ragged = []
    for path, command in commands.items():
        lines = (command.help or "").splitlines()
        ragged += [f"{path}: {line}" for i, line in enumerate(lines)
                   if len(line) > help_width and i + 1 < len(lines) and lines[i + 1].strip()]
    assert ragged == []
