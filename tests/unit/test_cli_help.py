"""Every `lepton` command has help whose first paragraph is one line: the command lists show
that paragraph as the command's summary, hard line breaks included."""

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
