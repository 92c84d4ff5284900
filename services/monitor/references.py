"""The signed model cards the monitor compares against: read from the registry directory and
verified (signature and key) before their reference or offline metrics are trusted; cached per
version, and a missing or bad card is retried at most once a minute."""

from __future__ import annotations

import logging
import time

from shared.config import LeptonSettings
from shared.models.registry import ArtifactError, ModelCard, Registry

log = logging.getLogger(__name__)
RETRY_S = 60.0


class References:
    """Verified cards by (model, version)."""

    def __init__(self, settings: LeptonSettings) -> None:
        self.registry = Registry(settings)
        self._cards: dict[tuple[str, int], ModelCard] = {}
        self._missing: dict[tuple[str, int], float] = {}

    def card(self, model: str, version: int) -> ModelCard | None:
        """The verified card, or None when it is missing or does not verify."""
        key = (model, version)
        if key in self._cards:
            return self._cards[key]
        if time.monotonic() - self._missing.get(key, -RETRY_S) < RETRY_S:
            return None
        try:
            card = self.registry.card(model, version)
            self.registry.verify_card(card)
        except ArtifactError as error:
            log.warning("no usable card for %s v%d: %s", model, version, error)
            self._missing[key] = time.monotonic()
            return None
        self._cards[key] = card
        return card
