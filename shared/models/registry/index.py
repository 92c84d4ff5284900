"""The registry's Redis index and live pointer: consumes the version directories on disk
(authoritative) and the model cards in them, produces the indexed versions and cards, operator
flags, and the live pointer with its rollback history (mirrored to `<model>/live.json`, from
which a lost Redis pointer is restored)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import orjson
import redis
from pydantic import ValidationError

from shared.config import LeptonSettings
from shared.durable import fsync_dir
from shared.models.registry.card import CARD_FILE, FLAGS_FILE, LIVE_FILE, ArtifactError, ModelCard
from shared.state import make_redis, rkey


class RegistryIndex:
    """Version directories under the registry path plus their Redis index and live pointer."""

    def __init__(self, settings: LeptonSettings) -> None:
        self.settings = settings
        self.root = settings.registry_path()
        self._redis = make_redis(settings)

    @property
    def redis(self) -> redis.Redis[bytes]:
        """The Redis client of the index (callers may keep related state beside it)."""
        return self._redis

    def _key(self, model: str, *parts: str) -> str:
        return rkey(self.settings, "models", model, *parts)

    def version_dir(self, model: str, version: int) -> Path:
        """Directory of one version."""
        return self.root / model / str(version)

    def _disk_versions(self, model: str) -> list[int]:
        folder = self.root / model
        if not folder.is_dir():
            return []
        return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit() and p.is_dir())

    def index(self, card: ModelCard) -> None:
        """Record a saved card in the Redis index."""
        pipe = self._redis.pipeline()
        pipe.sadd(rkey(self.settings, "models"), card.model)
        pipe.zadd(self._key(card.model, "versions"), {str(card.version): card.version})
        pipe.hset(self._key(card.model, "cards"), str(card.version),
                  orjson.dumps(card.model_dump(mode="json")))
        pipe.execute()

    def _indexed_versions(self, model: str) -> list[int]:
        return [int(v) for v in self._redis.zrange(self._key(model, "versions"), 0, -1)]

    def models(self) -> list[str]:
        """Model names in the registry (index and directory)."""
        names = {m.decode() for m in self._redis.smembers(rkey(self.settings, "models"))}
        if self.root.is_dir():
            names |= {p.name for p in self.root.iterdir() if p.is_dir()
                      and not p.name.startswith(".")}
        return sorted(names)

    def versions(self, model: str) -> list[int]:
        """Versions of `model`, ascending (the directory is authoritative; Redis is re-indexed
        from it when it lags)."""
        on_disk = self._disk_versions(model)
        indexed = set(self._indexed_versions(model))
        for version in on_disk:
            if version not in indexed:
                try:
                    self.index(self.card(model, version))
                except ArtifactError:
                    continue
        return on_disk

    def flags(self, model: str, version: int) -> dict[str, Any]:
        """A version's operator marks (e.g. `contains_forgotten`); {} when none."""
        try:
            data = orjson.loads((self.version_dir(model, version) / FLAGS_FILE).read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return {}
        return data if isinstance(data, dict) else {}

    def contains_forgotten(self, model: str, version: int) -> bool:
        """Whether `lepton forget` (or the trainer) marked the version as carrying a forgotten
        subject's data: no cycle or federation may continue from it."""
        return bool(self.flags(model, version).get("contains_forgotten"))

    def mark(self, model: str, version: int, **flags: Any) -> None:
        """Merge `flags` into a version's marks (atomic replace; the signed card is untouched)."""
        folder = self.version_dir(model, version)
        merged = {**self.flags(model, version), **flags}
        tmp = folder / f".{FLAGS_FILE}.{os.getpid()}"
        tmp.write_bytes(orjson.dumps(merged, option=orjson.OPT_SORT_KEYS))
        tmp.replace(folder / FLAGS_FILE)

    def card(self, model: str, version: int) -> ModelCard:
        """The card of one version as stored (not verified: use `load` for that)."""
        path = self.version_dir(model, version) / CARD_FILE
        try:
            return ModelCard.model_validate_json(path.read_bytes())
        except (OSError, ValidationError, ValueError) as error:
            raise ArtifactError(f"{model} v{version}: unreadable card: {error}") from None

    def live(self, model: str) -> int | None:
        """The live version of `model` (None when none is); when Redis lost the pointer it is
        restored from `<registry>/<model>/live.json`, its durable copy."""
        value = self._redis.get(self._key(model, "live"))
        if value is None:
            live, history = self._live_file(model)
            if live is None:
                return None
            pipe = self._redis.pipeline()
            pipe.set(self._key(model, "live"), live, nx=True)
            pipe.delete(self._key(model, "history"))
            if history:
                pipe.rpush(self._key(model, "history"), *history)
            pipe.execute()
            value = self._redis.get(self._key(model, "live"))
        return int(value) if value is not None else None

    def _live_file(self, model: str) -> tuple[int | None, list[int]]:
        try:
            data = orjson.loads((self.root / model / LIVE_FILE).read_bytes())
            return int(data["live"]), [int(v) for v in data.get("history", [])]
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None, []

    def _save_live(self, model: str) -> None:
        """Write the live pointer and history to disk (atomically) after Redis changed."""
        live = self._redis.get(self._key(model, "live"))
        if live is None:
            return
        history = [int(v) for v in self._redis.lrange(self._key(model, "history"), 0, -1)]
        folder = self.root / model
        tmp = folder / f".{LIVE_FILE}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        tmp.write_bytes(orjson.dumps({"live": int(live), "history": history}))
        tmp.replace(folder / LIVE_FILE)
        fsync_dir(folder)

    def set_live(self, model: str, version: int) -> int | None:
        """Make `version` live; pushes the previous one onto the rollback history."""
        if version not in self.versions(model):
            raise ArtifactError(f"{model} has no version {version}")
        key, history = self._key(model, "live"), self._key(model, "history")
        previous = self.live(model)
        pipe = self._redis.pipeline()
        pipe.set(key, version)
        if previous is not None and previous != version:
            pipe.rpush(history, previous)
        pipe.execute()
        self._save_live(model)
        return previous

    def _rollback_entry(self, model: str, current: int | None) -> tuple[int, int]:
        """(index in the history, version) of the version a rollback from `current` makes
        live."""
        entries = [int(raw) for raw in self._redis.lrange(self._key(model, "history"), 0, -1)]
        on_disk = self._disk_versions(model)
        for index in range(len(entries) - 1, -1, -1):
            if entries[index] != current and entries[index] in on_disk:
                return index, entries[index]
        raise ArtifactError(f"{model} has no earlier live version to roll back to")

    def rollback_target(self, model: str) -> int:
        """The version `rollback` would make live, changing nothing."""
        return self._rollback_entry(model, self.live(model))[1]

    def rollback(self, model: str) -> tuple[int | None, int]:
        """Make the previously live version live again; returns (was, now)."""
        key, history = self._key(model, "live"), self._key(model, "history")
        current = self.live(model)
        index, target = self._rollback_entry(model, current)
        pipe = self._redis.pipeline()
        if index == 0:
            pipe.delete(history)
        else:  # the target and the entries after it (the current or deleted versions) go
            pipe.ltrim(history, 0, index - 1)
        pipe.set(key, target)
        pipe.execute()
        self._save_live(model)
        return current, target
