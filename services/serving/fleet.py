"""The models this server hosts and every change to their rollout: promote, canary, shadow,
rollback, clear, retire. A change loads and verifies the new version BESIDE the live one
(outside any request path), then swaps the host's Rollout reference in one assignment, then
drains versions no longer referenced (waits for their in-flight requests) and drops them.
A model is hosted only once a version of it loaded and verified. Pinned-version loads are
single-flight per version and limited per model per minute, so requests naming ever other
versions cannot turn into a load each."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from enum import StrEnum

from services.serving.errors import InvalidInput, ModelNotFound, Overloaded, Refused
from services.serving.model import LoadedModel, ModelLoader
from services.serving.router import Mode, ModelHost, Rollout

log = logging.getLogger(__name__)


class Action(StrEnum):
    """Rollout changes (the ModelAnnouncement actions plus `clear`)."""

    PROMOTE = "promote"
    CANARY = "canary"
    SHADOW = "shadow"
    ROLLBACK = "rollback"
    RETIRE = "retire"
    CLEAR = "clear"


class Fleet:
    """Hosted models by name; serialises rollout changes, never blocks requests."""

    def __init__(
        self,
        loader: ModelLoader,
        *,
        names: list[str] | None = None,
        canary_share: float = 0.1,
        pinned_cache: int = 4,
        drain_timeout_s: float = 30.0,
        pinned_loads_per_min: int = 30,
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        self.loader = loader
        self.fixed_names = list(names or [])
        self.canary_share = canary_share
        self.pinned_cache = pinned_cache
        self.drain_timeout_s = drain_timeout_s
        self.on_ready = on_ready
        self.hosts: dict[str, ModelHost] = {n: ModelHost(n, pinned_cache) for n in
                                            self.fixed_names}
        self._lock = threading.RLock()
        self.swaps = 0
        self.pinned_loads_per_min = pinned_loads_per_min
        self._pin_locks: dict[tuple[str, int], threading.Lock] = {}
        self._pin_loads: dict[str, deque[float]] = {}

    @property
    def ready(self) -> bool:
        """True once any hosted model has a live version."""
        return any(h.rollout is not None for h in list(self.hosts.values()))

    def hosts_model(self, name: str) -> bool:
        """Whether announcements for `name` concern this server."""
        return not self.fixed_names or name in self.fixed_names

    def host(self, name: str) -> ModelHost:
        """The host for `name`; an empty name means the only hosted model."""
        if not name:
            ready = [h for h in list(self.hosts.values()) if h.rollout is not None]
            if len(ready) == 1:
                return ready[0]
            if not ready:
                from services.serving.errors import NotReady

                raise NotReady("no model is ready yet")
            names = ", ".join(sorted(h.name for h in ready))
            raise InvalidInput(f"this server hosts several models ({names}): name one")
        host = self.hosts.get(name)
        if host is None:
            raise ModelNotFound(f"model {name[:100]!r} is not hosted here")
        return host

    def load_initial(self) -> None:
        """Make each hosted model's registry-live version live (refusals are logged)."""
        names = self.fixed_names or self.loader.registry_models()
        for name in names:
            live = self.loader.registry.live(name)
            if live is None:
                log.info("model %s has no live version in the registry yet", name)
                continue
            try:
                self.apply(Action.PROMOTE, name, live)
            except Refused as error:
                log.warning("refused live model at startup: %s", error)

    def live_version(self, name: str) -> int | None:
        """The live version of a hosted model (None when not hosted or not live)."""
        host = self.hosts.get(name)
        state = host.rollout if host is not None else None
        return state.live.version if state is not None else None

    def load_pinned(self, name: str, version: int) -> LoadedModel:
        """Load `version` of `name` for pinned requests (verified, warmed, cached; one load per
        version at a time; Overloaded when this model's pinned-load budget is spent)."""
        host = self.host(name)
        state = host.rollout
        existing = (state.by_version(version) if state else None) or host.pinned(version)
        if existing is not None:
            return existing
        if version not in self.loader.registry.versions(name):
            raise ModelNotFound(f"model {name!r} has no version {version}")
        with self._lock:
            flight = self._pin_locks.setdefault((name, version), threading.Lock())
        with flight:
            state = host.rollout
            existing = (state.by_version(version) if state else None) or host.pinned(version)
            if existing is not None:
                return existing
            self._spend_pinned_load(name, version)
            return host.add_pinned(self.loader.load(name, version))

    def _spend_pinned_load(self, name: str, version: int) -> None:
        now = time.monotonic()
        with self._lock:
            loads = self._pin_loads.setdefault(name, deque())
            while loads and now - loads[0] > 60.0:
                loads.popleft()
            if len(loads) >= self.pinned_loads_per_min:
                raise Overloaded(f"{name} v{version} is not loaded and {name}'s pinned-load "
                                 f"budget ({self.pinned_loads_per_min}/min) is spent; retry")
            loads.append(now)

    def apply(
        self, action: Action | str, name: str, version: int | None = None,
        share: float | None = None, expect_sha256: str | None = None,
    ) -> Rollout:
        """Apply one rollout change and return the new Rollout; raise Refused when it cannot."""
        action = Action(action)
        with self._lock:
            host = self.hosts.get(name)
            if host is None:
                if not self.hosts_model(name):
                    raise ModelNotFound(f"model {name!r} is not hosted here")
                host = ModelHost(name, self.pinned_cache)
            old = host.rollout
            new = self._next(host, old, action, version, share, expect_sha256)
            was_ready = self.ready
            self.hosts.setdefault(name, host)
            host.rollout = new
            if new is not old:
                self.swaps += 1
        if old is not None and new is not old:
            kept = {id(m) for m in new.models()}
            dropped = [m for m in old.models() if id(m) not in kept]
            if dropped:
                threading.Thread(target=self._drain, args=(dropped,), daemon=True,
                                 name="serving-drain").start()
        if not was_ready and self.ready and self.on_ready is not None:
            self.on_ready()
        return new

    def _model(self, host: ModelHost, version: int, expect_sha256: str | None) -> LoadedModel:
        found = next((m for m in host.loaded() if m.version == version), None)
        if found is None and expect_sha256 is not None:
            from shared.models.registry import ArtifactError

            try:
                card = self.loader.registry.card(host.name, version)
            except ArtifactError as error:
                raise Refused(f"{host.name} v{version}: {error}") from None
            if card.sha256 != expect_sha256:  # before the weights are read or parsed
                raise Refused(f"{host.name} v{version}: announced sha256 does not match the "
                              "artifact")
        model = found or self.loader.load(host.name, version)
        if expect_sha256 is not None and model.card.sha256 != expect_sha256:
            raise Refused(f"{host.name} v{version}: announced sha256 does not match the artifact")
        return model

    def _next(self, host: ModelHost, old: Rollout | None, action: Action,
              version: int | None, share: float | None,
              expect_sha256: str | None) -> Rollout:
        if action is Action.PROMOTE:
            model = self._model(host, _need(version, action), expect_sha256)
            return Rollout(live=model) if old is None else old.promote(model)
        if old is None:
            raise Refused(f"model {host.name!r} has no live version to {action.value} against")
        if action in (Action.CANARY, Action.SHADOW):
            model = self._model(host, _need(version, action), expect_sha256)
            if model.version == old.live.version:
                raise Refused(f"v{model.version} of {host.name!r} is already live")
            mode = Mode.CANARY if action is Action.CANARY else Mode.SHADOW
            return old.with_candidate(model, mode, self.canary_share if share is None else share)
        if action is Action.ROLLBACK:
            target = version or old.rollback_target()
            if target is None:
                raise Refused(f"model {host.name!r} has no previous version to roll back to")
            if target == old.live.version:
                return old
            return old.rolled_back(self._model(host, target, expect_sha256))
        if action is Action.CLEAR or (action is Action.RETIRE and old.candidate is not None
                                      and old.candidate.version == version):
            return old.without_candidate()
        if action is Action.RETIRE and version == old.live.version:
            raise Refused(f"cannot retire live v{version} of {host.name!r}: promote or roll back")
        return old

    def _drain(self, models: list[LoadedModel]) -> None:
        deadline = time.monotonic() + self.drain_timeout_s
        for model in models:
            while model.inflight > 0 and time.monotonic() < deadline:
                time.sleep(0.005)
            log.info("drained %s v%d (%d still in flight)", model.name, model.version,
                     model.inflight)


def _need(version: int | None, action: Action) -> int:
    if not version:
        raise InvalidInput(f"{action.value} needs a version")
    return version
