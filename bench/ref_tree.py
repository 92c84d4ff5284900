"""A git ref's tree in a directory, for benches that run it beside this tree in the same run
(`serving_ab.py`, `stage_instructions.py`). Consumes a commit; produces its files (`git
archive`: committed files only, generated stubs included)."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def extract(ref: str, where: Path | None = None) -> Path:
    """The tree of `ref` in `where` (made; default a new temporary directory)."""
    from shared.lifecycle import parent_death

    if where is None:
        where = Path(tempfile.mkdtemp(prefix="ref-tree-"))
    else:
        where.mkdir()
    archive = subprocess.run(["git", "archive", ref], cwd=ROOT, check=True,
                             capture_output=True, preexec_fn=parent_death()).stdout
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive, check=True,
                   preexec_fn=parent_death())
    return where
