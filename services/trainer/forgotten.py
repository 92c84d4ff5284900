"""Forgotten subjects in the trainer's releases: consumes the forgotten set (`lepton forget`,
in Redis), governance's policy-ready marker and the registry's `contains_forgotten` marks;
produces why a release must not be served: it carries a forgotten subject's data (it trained on
their rows, or it continued a version marked while it trained), or Redis lost the forgotten set
and governance has not restored it, so nobody can tell. Also marks the versions that carry a
forgotten subject's data (`lepton forget`, `lepton models mark-forgotten`): those that trained
on it and every version warm-started from one."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import redis

from services.trainer.decode import leave_out, row_subjects
from shared.config import LeptonSettings
from shared.models.registry import ArtifactError, ModelCard, Registry
from shared.state import forgotten_key, policy_ready_key

FORGOTTEN_UNKNOWN = ("forgotten_unknown: Redis lost the forgotten set and governance has not "
                     "restored it yet (it does before its next decision; `lepton state "
                     "rebuild` does now)")


class Refusal(NamedTuple):
    """A gate reason; `carries` when the release is known to hold forgotten data (marked)."""

    reason: str
    carries: bool


def forgotten_in_release(registry: Registry, settings: LeptonSettings, model: str,
                         parent_version: int | None, subjects: Sequence[str]) -> Refusal | None:
    """Why a release may carry forgotten subjects' data, None when it does not."""
    if parent_version is not None and registry.contains_forgotten(model, parent_version):
        return Refusal(f"contains_forgotten: warm-started from v{parent_version}, which was "
                       "marked while this cycle trained", carries=True)
    if not subjects:
        return None
    gone = forgotten_among(registry.redis, settings, subjects)
    if gone is None:
        return Refusal(FORGOTTEN_UNKNOWN, carries=False)
    if gone:
        return Refusal(f"contains_forgotten: trained on rows of {len(gone)} subject(s) "
                       "forgotten meanwhile", carries=True)
    return None


def forgotten_among(client: redis.Redis[bytes], settings: LeptonSettings,
                    subjects: Sequence[str]) -> set[str] | None:
    """Which of `subjects` are forgotten; None while Redis has lost the forgotten set and
    governance has not restored it (nobody can tell)."""
    pipe = client.pipeline(transaction=False)
    pipe.exists(policy_ready_key(settings))
    if subjects:
        pipe.smismember(forgotten_key(settings), list(subjects))  # type: ignore[no-untyped-call]
    results = pipe.execute()
    if not results[0]:
        return None
    hits = results[1] if subjects else []
    return {s for s, hit in zip(subjects, hits, strict=True) if hit}


def without_forgotten(client: redis.Redis[bytes], settings: LeptonSettings,
                      rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`rows` less those of subjects forgotten by now (unchanged while nobody can tell: a
    release is then refused anyway)."""
    gone = forgotten_among(client, settings, sorted(row_subjects(rows)))
    return leave_out(rows, gone) if gone else rows


def mark_versions(registry: Registry, trained_on: Callable[[ModelCard], str | None]
                  ) -> list[str]:
    """Mark `contains_forgotten` every version whose card `trained_on` names (it says how the
    version holds the subject's data, else None) and every version warm-started from a marked
    one; a line each."""
    lines = []
    for model in registry.models():
        tainted: set[int] = set()
        for version in sorted(registry.versions(model)):
            try:
                card = registry.card(model, version)
            except ArtifactError:
                continue
            why = trained_on(card)
            if why is None and card.parent_version in tainted:
                why = f"warm-started from v{card.parent_version}, which holds the subject's data"
            if why is None:
                continue
            tainted.add(version)
            registry.mark(model, version, contains_forgotten=True)
            lines.append(f"model {model} v{version}: {why}; marked contains_forgotten: true (the "
                         "trainer neither continues from a marked version nor promotes one "
                         "trained on the subject)")
    return lines


def card_releases(card: ModelCard) -> set[str]:
    """The release ids a card was charged under: its own, or each federation site's."""
    privacy = card.privacy or {}
    sites = privacy.get("sites")
    ids = [privacy.get("release_id"),
           *(s.get("release_id") for s in (sites.values() if isinstance(sites, dict) else ())
             if isinstance(s, dict))]
    return {i for i in ids if isinstance(i, str)}
