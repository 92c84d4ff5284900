"""Readiness markers: a process writes `<data_dir>/run/<name>.ready` once it serves, and
removes it when it stops; `lepton up` and tests wait for them."""

from __future__ import annotations

import os
from pathlib import Path

from shared.config import LeptonSettings


def ready_path(settings: LeptonSettings, name: str) -> Path:
    """Where process `name` announces readiness."""
    return settings.data_dir / "run" / f"{name}.ready"


def mark_ready(settings: LeptonSettings, name: str) -> Path:
    """Announce that this process is ready (the file holds its pid)."""
    path = ready_path(settings, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(f"{os.getpid()}\n")
    tmp.replace(path)
    return path


def clear_ready(settings: LeptonSettings, name: str) -> None:
    """Withdraw the readiness marker (on shutdown)."""
    ready_path(settings, name).unlink(missing_ok=True)
