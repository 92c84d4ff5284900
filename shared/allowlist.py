"""A receiver's allow-list: which principal's public key may say which kinds of thing
(governance: decision kinds; serving: announcement actions).

Consumes the principals' public keys (`<name>.pub` in the public keys directory, read-only to
the receiver) and the receiver's table name → allowed kinds; answers, for a `key_id`, the
principal's name, public key and allowed kinds. A key id it does not know makes it look at the
public key files (a stat each) and re-read them when any changed, so a principal that created
its key on first start is recognised at once (a reload rate limit once made a fresh operator
key look unknown for seconds, and its decision was dead-lettered).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from shared.signing import key_id, load_public_key

log = logging.getLogger(__name__)

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
        self._seen: tuple[tuple[str, int, int], ...] | None = None
        self._lock = threading.Lock()

    def lookup(self, kid: str) -> Allowed | None:
        """The principal whose key has id `kid`, or None when no allowed key has it."""
        found = self._by_key.get(kid)
        if found is None and self._files() != self._seen:
            self.reload()
            found = self._by_key.get(kid)
        return found

    def _files(self) -> tuple[tuple[str, int, int], ...]:
        """(name, mtime, size) of each allowed principal's public key file that exists."""
        found = []
        for name in self.allowed:
            try:
                stat = (self.directory / f"{name}.pub").stat()
            except OSError:
                continue
            found.append((name, stat.st_mtime_ns, stat.st_size))
        return tuple(found)

    def reload(self) -> None:
        """Re-read the public keys of the principals named in the table."""
        with self._lock:
            self._seen = self._files()
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
