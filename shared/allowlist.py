"""A receiver's allow-list: which principal's public key may say which kinds of thing
(governance: decision kinds; serving: announcement actions).

Consumes the principals' public keys (`<name>.pub` in the public keys directory, read-only to
the receiver) and the receiver's table name → allowed kinds; answers, for a `key_id`, the
principal's name, public key and allowed kinds. A key id it does not know makes it re-read the
directory (at most every few seconds), so a service that created its key on first start is
recognised.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from shared.signing import key_id, load_public_key

log = logging.getLogger(__name__)

RELOAD_EVERY_S = 5.0


@dataclass(frozen=True, slots=True)
class Allowed:
    """A known principal: its name, public key and the decision kinds it may emit."""

    name: str
    public: Ed25519PublicKey
    kinds: frozenset[str]


class AllowList:
    """Key id → allowed principal, from the public keys in `directory`."""

    def __init__(self, directory: Path, allowed: dict[str, frozenset[str]]) -> None:
        self.directory = directory
        self.allowed = allowed
        self._by_key: dict[str, Allowed] = {}
        self._loaded_at = float("-inf")
        self._lock = threading.Lock()

    def lookup(self, kid: str) -> Allowed | None:
        """The principal whose key has id `kid`, or None when no allowed key has it."""
        found = self._by_key.get(kid)
        if found is None and time.monotonic() - self._loaded_at >= RELOAD_EVERY_S:
            self.reload()
            found = self._by_key.get(kid)
        return found

    def reload(self) -> None:
        """Re-read the public keys of the principals named in the table."""
        with self._lock:
            keys: dict[str, Allowed] = {}
            for name, kinds in self.allowed.items():
                path = self.directory / f"{name}.pub"
                if not path.exists():
                    continue
                try:
                    public = load_public_key(path)
                except (OSError, ValueError) as error:
                    log.warning("principal key %s unreadable: %s", path, error)
                    continue
                keys[key_id(public)] = Allowed(name, public, kinds)
            self._by_key = keys
            self._loaded_at = time.monotonic()
