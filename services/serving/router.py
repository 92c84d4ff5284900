"""Which loaded version answers a request: the rollout state of one model (live, the previous
live for rollback, a canary or shadow candidate) held as ONE immutable object, so a swap is a
single reference assignment and a request keeps the version it started with."""

from __future__ import annotations

import contextlib
import zlib
from collections import OrderedDict
from dataclasses import dataclass, replace
from enum import StrEnum
from random import random

from services.serving.errors import ModelNotFound
from services.serving.model import LoadedModel


class Route(StrEnum):
    """The rollout rule that chose a version."""

    LIVE = "live"
    CANARY = "canary"
    PINNED = "pinned"


class Mode(StrEnum):
    """What a candidate version is for."""

    CANARY = "canary"
    SHADOW = "shadow"


@dataclass(frozen=True, eq=False)
class Rollout:
    """A model's rollout at one instant; replaced as a whole, never mutated."""

    live: LoadedModel
    previous: LoadedModel | None = None
    candidate: LoadedModel | None = None
    mode: Mode | None = None
    share: float = 0.0
    history: tuple[int, ...] = ()

    def models(self) -> list[LoadedModel]:
        """Every version this rollout keeps loaded."""
        return [m for m in (self.live, self.previous, self.candidate) if m is not None]

    def by_version(self, version: int) -> LoadedModel | None:
        """The loaded model of `version` in this rollout, if any."""
        for model in self.models():
            if model.version == version:
                return model
        return None

    def promote(self, model: LoadedModel) -> Rollout:
        """`model` becomes live; the old live is kept warm as the rollback target."""
        if model.version == self.live.version:
            return self
        return Rollout(live=model, previous=self.live,
                       history=(*self.history, self.live.version))

    def with_candidate(self, model: LoadedModel, mode: Mode, share: float) -> Rollout:
        """Add (or replace) the canary or shadow candidate."""
        return replace(self, candidate=model, mode=mode, share=share if mode is Mode.CANARY
                       else 0.0)

    def without_candidate(self) -> Rollout:
        """Drop the candidate."""
        return replace(self, candidate=None, mode=None, share=0.0)

    def rollback_target(self) -> int | None:
        """The version a plain rollback returns to."""
        return self.history[-1] if self.history else None

    def rolled_back(self, target: LoadedModel) -> Rollout:
        """Make `target` live again, dropping it (and what came after) from the history."""
        history = self.history
        if target.version in history:
            history = history[: history.index(target.version)]
        previous = self.previous if self.previous is not None and history and \
            self.previous.version == history[-1] else None
        return Rollout(live=target, previous=previous, history=history)


def canary_draw(request_id: str) -> float:
    """A number in [0, 1) fixed by the request id (so retries take the same route)."""
    if not request_id:
        return random()
    return zlib.crc32(request_id.encode()) / 4294967296.0


class ModelHost:
    """One hosted model: its current Rollout plus a small LRU of other pinned versions."""

    def __init__(self, name: str, pinned_cache: int = 4) -> None:
        self.name = name
        self.rollout: Rollout | None = None
        self._pinned: OrderedDict[int, LoadedModel] = OrderedDict()
        self._pinned_cache = pinned_cache

    def choose(
        self, request_id: str, pin: int | None
    ) -> tuple[LoadedModel, Route, LoadedModel | None]:
        """(model to answer, route, shadow candidate or None); raise PinMiss or NotReady."""
        state = self.rollout
        if state is None:
            from services.serving.errors import NotReady

            raise NotReady(f"model {self.name!r} has no live version yet")
        if pin:
            model = state.by_version(pin) or self.pinned(pin)
            if model is None:
                raise PinMiss(self.name, pin)
            return model, Route.PINNED, None
        if state.candidate is not None:
            if state.mode is Mode.SHADOW:
                return state.live, Route.LIVE, state.candidate
            if canary_draw(request_id) < state.share:
                return state.candidate, Route.CANARY, None
        return state.live, Route.LIVE, None

    def pinned(self, version: int) -> LoadedModel | None:
        """A pinned-only loaded version (marked as recently used), or None."""
        model = self._pinned.get(version)
        if model is not None:
            with contextlib.suppress(KeyError):  # evicted meanwhile by another thread
                self._pinned.move_to_end(version)
        return model

    def add_pinned(self, model: LoadedModel) -> LoadedModel:
        """Keep a pinned-only version loaded (least recently used ones are dropped)."""
        existing = self._pinned.get(model.version)
        if existing is not None:
            return existing
        self._pinned[model.version] = model
        while len(self._pinned) > self._pinned_cache:
            self._pinned.popitem(last=False)
        return model

    def loaded(self) -> list[LoadedModel]:
        """Every loaded version (rollout and pinned), without duplicates."""
        state = self.rollout
        models = state.models() if state else []
        seen = {m.version for m in models}
        return models + [m for v, m in list(self._pinned.items()) if v not in seen]


class PinMiss(ModelNotFound):
    """A pinned version is not loaded (the caller may load it from the registry)."""

    def __init__(self, model: str, version: int) -> None:
        super().__init__(f"model {model!r} has no version {version}")
        self.model = model
        self.version = version
