"""Forgotten subjects in the trainer's releases: consumes the forgotten set (`lepton forget`,
in Redis) and the registry's `contains_forgotten` marks; produces why a release carries a
forgotten subject's data (it trained on their rows, or it continued a version marked while it
trained), so the release is refused and marked."""

from __future__ import annotations

from collections.abc import Sequence

from shared.config import LeptonSettings
from shared.models.registry import Registry
from shared.state import forgotten_key


def forgotten_in_release(registry: Registry, settings: LeptonSettings, model: str,
                         parent_version: int | None, subjects: Sequence[str]) -> str | None:
    """Why a release carries forgotten subjects' data (a gate reason), None when it does not."""
    if parent_version is not None and registry.contains_forgotten(model, parent_version):
        return (f"contains_forgotten: warm-started from v{parent_version}, which was marked "
                "while this cycle trained")
    if not subjects:
        return None
    found = registry.redis.smismember(  # type: ignore[no-untyped-call]
        forgotten_key(settings), list(subjects))
    hits = sum(1 for hit in found if hit)
    if hits:
        return f"contains_forgotten: trained on rows of {hits} subject(s) forgotten meanwhile"
    return None
