"""Fuzzing settings: LEPTON_FUZZ_EXAMPLES examples per property (default small, so the
default suite stays fast; `make fuzz` raises it), no deadline, and the committed corpus."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import HealthCheck, settings

CORPUS = Path(__file__).parent / "corpus"

settings.register_profile(
    "fuzz", max_examples=int(os.environ.get("LEPTON_FUZZ_EXAMPLES", "300")), deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def corpus(target: str) -> list[Path]:
    """The committed seed inputs of `target`."""
    return sorted(p for p in (CORPUS / target).iterdir() if p.is_file())
