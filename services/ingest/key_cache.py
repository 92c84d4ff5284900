"""The in-process cache of unwrapped data keys: consumes DataKeys as the KeyStore opens them,
produces them again by key id for at most `ttl` seconds (which bounds how long a running process
can still use a key after `forget`), evicting the least recently used beyond `size`."""

from __future__ import annotations

import time
from collections import OrderedDict

from services.ingest.ciphers import DataKey


class KeyCache:
    """A bounded LRU of data keys whose entries expire `ttl` seconds after they were fetched."""

    def __init__(self, size: int, ttl: float) -> None:
        self._items: OrderedDict[str, tuple[float, DataKey]] = OrderedDict()
        self._size = size
        self._ttl = ttl

    def get(self, key_id: str) -> DataKey | None:
        """The cached key, or None when absent or expired (an expired entry is dropped)."""
        item = self._items.get(key_id)
        if item is None:
            return None
        if item[0] < time.monotonic():
            del self._items[key_id]
            return None
        self._items.move_to_end(key_id)
        return item[1]

    def put(self, key: DataKey) -> None:
        """Cache `key` for `ttl` seconds, evicting the least recently used beyond `size`."""
        self._items[key.key_id] = (time.monotonic() + self._ttl, key)
        self._items.move_to_end(key.key_id)
        while len(self._items) > self._size:
            self._items.popitem(last=False)

    def pop(self, key_id: str) -> None:
        """Drop `key_id` from the cache (nothing when absent)."""
        self._items.pop(key_id, None)
