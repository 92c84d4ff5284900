"""The code version recorded in model cards (by the trainer and the federation coordinator)."""

from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path


def code_version() -> str:
    """`git describe` of the source tree when it is a checkout, else the package version."""
    root = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--tags"], cwd=root,
                             capture_output=True, text=True, timeout=5, check=True)
        return f"git:{out.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        try:
            return f"lepton-stream {metadata.version('lepton-stream')}"
        except metadata.PackageNotFoundError:
            return "unknown"
