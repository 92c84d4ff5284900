"""Serving's check of a model announcement before anything is loaded or hosted.

Consumes a decoded `ModelAnnouncement`, the announcers' public keys (trainer, operator, serving
replicas) and the registry's signed cards; produces nothing but a verdict: `check` returns when
the announcement may be applied and raises `AnnouncementRefused` (with the reason, and whether
the announcement itself was genuine, so only those are recorded as decisions) when it was
unsigned or wrongly signed, a replay (sequence ≤ the last one applied for that model, or ≤ the
model's counter when this server started), a downgrade that is not a `rollback`, for a card
that is missing or unsigned, whose sha256 differs, whose privacy is not cleared
(`shared.models.clearance`: a DP release never charged is refused even with an override), or
whose gate status is not `promoted` for live, canary or a rollback target without an
operator-signed override; a rollback must go below live. The sha256 is compared with the
signed card before the weights file is read.
"""

from __future__ import annotations

import threading

from services.serving.errors import Refused
from shared.allowlist import AllowList
from shared.announcements import ANNOUNCERS, OVERRIDERS, current_sequence, verify_announcement
from shared.config import LeptonSettings
from shared.events import ModelAnnouncement
from shared.models.clearance import privacy_refusal
from shared.models.registry import ArtifactError, Registry
from shared.principals import public_keys_dir

SERVES_ANSWERS = frozenset({"promote", "canary"})
PROMOTED_ONLY = SERVES_ANSWERS | {"rollback"}


class AnnouncementRefused(Refused):
    """An announcement serving will not act on."""

    def __init__(self, reason: str, *, verified: bool) -> None:
        super().__init__(reason)
        self.verified = verified


class AnnouncementGate:
    """Verifies announcements and remembers the last applied sequence per model."""

    def __init__(self, settings: LeptonSettings, registry: Registry) -> None:
        self.settings = settings
        self.registry = registry
        self.allow = AllowList(public_keys_dir(settings), ANNOUNCERS)
        self._floor: dict[str, int] = {}
        self._lock = threading.Lock()

    def start_floor(self, models: list[str]) -> None:
        """Before following the topic: anything at or below today's counters is a replay (a
        model first seen later starts from 0)."""
        for model in models:
            self._floor[model] = current_sequence(self.registry.redis, self.settings, model)

    def check(self, announcement: ModelAnnouncement, live_version: int | None) -> None:
        """Return when `announcement` may be applied; raise AnnouncementRefused otherwise."""
        a = announcement
        if a.signer_key_id is None or a.signer_signature is None:
            raise AnnouncementRefused("unsigned announcement", verified=False)
        principal = self.allow.lookup(a.signer_key_id)
        if principal is None or a.action not in principal.kinds:
            raise AnnouncementRefused("announcement key is not an allowed announcer's",
                                      verified=False)
        if not verify_announcement(principal.public, a):
            raise AnnouncementRefused(f"bad announcement signature ({principal.name})",
                                      verified=False)
        if a.override and principal.name not in OVERRIDERS:
            raise AnnouncementRefused(f"{principal.name} may not override the gate",
                                      verified=False)
        with self._lock:
            last = self._floor.get(a.model, 0)
            if a.sequence <= last:
                raise AnnouncementRefused(
                    f"replayed announcement (sequence {a.sequence} ≤ {last})", verified=False)
            self._floor[a.model] = a.sequence
        try:
            card = self.registry.card(a.model, a.version)
            self.registry.verify_card(card)
        except ArtifactError as error:
            raise AnnouncementRefused(f"no signed card: {error}", verified=True) from None
        prefix = f"{a.model} v{a.version}"
        if card.model != a.model or card.version != a.version or card.sha256 != a.sha256:
            raise AnnouncementRefused(f"{prefix}: announced sha256 does not match the signed card",
                                      verified=True)
        refusal = privacy_refusal(card)
        if refusal is not None:
            raise AnnouncementRefused(f"{prefix}: {refusal}", verified=True)
        if a.action in PROMOTED_ONLY and card.status != "promoted" and not a.override:
            raise AnnouncementRefused(f"{prefix}: card status is {card.status!r}, not promoted "
                                      "(an operator-signed override is needed)", verified=True)
        if (a.action in SERVES_ANSWERS and live_version is not None
                and a.version < live_version):
            raise AnnouncementRefused(f"{prefix}: lower than live v{live_version} (only a "
                                      "signed rollback may go back)", verified=True)
        if a.action == "rollback" and live_version is not None and a.version > live_version:
            raise AnnouncementRefused(f"{prefix}: a rollback goes below live v{live_version}",
                                      verified=True)
