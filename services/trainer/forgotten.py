"""Forgotten subjects in the trainer's releases: consumes the forgotten set (`lepton forget`,
in Redis) and the registry's `contains_forgotten` marks; produces why a release carries a
forgotten subject's data (it trained on their rows, or it continued a marked version), so the
release is refused and marked, and whether the live version may be continued from (a marked
one may not: every version warm-started from it would carry the subject on)."""

from __future__ import annotations

from collections.abc import Sequence

from shared.config import LeptonSettings
from shared.models.registry import Registry
from shared.state import rkey

FLAG = "contains_forgotten"


def marked(registry: Registry, model: str, version: int) -> bool:
    """Whether `lepton forget` marked the version as trained on a forgotten subject."""
    return bool(registry.flags(model, version).get(FLAG))


def forgotten_in_release(registry: Registry, settings: LeptonSettings, model: str,
                         parent_version: int | None, subjects: Sequence[str]) -> str | None:
    """Why a release carries forgotten subjects' data (a gate reason), None when it does not."""
    if parent_version is not None and marked(registry, model, parent_version):
        return (f"contains_forgotten: warm-started from v{parent_version}, which was marked "
                "while this cycle trained")
    if not subjects:
        return None
    forgotten = {raw.decode() for raw in registry.redis.smembers(
        rkey(settings, "policy", "forgotten"))}
    hits = len(forgotten.intersection(subjects))
    if hits:
        return f"contains_forgotten: trained on rows of {hits} subject(s) forgotten meanwhile"
    return None
