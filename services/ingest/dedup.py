"""Dedup by event id over a time window, in Redis, crash-safe under Kafka transactions.

Each valid event claims `<prefix>ingest:dedup:<dataset>:<event_id>` with `SET NX GET EX`; the
value is the record's source `topic/partition/offset`. A claim already held by a *different*
source is a duplicate (dropped and counted). A claim held by the *same* source is this worker's
own earlier attempt whose transaction never committed (a crash or abort before commit; a
committed record is never consumed again), so the event is processed again instead of lost.
The forgotten-subject lookup rides in the same server-side script: one Redis round trip per
batch. (On Redis Cluster, put a hash tag in LEPTON_REDIS_PREFIX, e.g. `{lepton}:`, so the keys
of one call share a slot.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import redis

from shared.config import LeptonSettings
from shared.state import forgotten_key, rkey


@dataclass(frozen=True, slots=True)
class Claim:
    """One event's dedup claim."""

    dataset: str
    event_id: str
    source: str


# KEYS: the claims' keys, then the forgotten set. ARGV: window, claim count, the claims'
# sources, then the subjects to look up. Returns a 0/1 duplicate flag per claim, then a 0/1
# forgotten flag per subject.
_CHECK = """
local n = tonumber(ARGV[2])
local out = {}
for i = 1, n do
  local held = redis.call('SET', KEYS[i], ARGV[i + 2], 'NX', 'GET', 'EX', ARGV[1])
  if held and held ~= ARGV[i + 2] then out[i] = 1 else out[i] = 0 end
end
for j = n + 3, #ARGV do
  out[#out + 1] = redis.call('SISMEMBER', KEYS[n + 1], ARGV[j])
end
return out
"""


class Deduper:
    """Batch dedup claims plus forgotten-subject checks, in one server-side script call."""

    def __init__(self, settings: LeptonSettings, client: redis.Redis[bytes], window_s: int):
        self._prefix = rkey(settings, "ingest", "dedup", "")
        self._forgotten = forgotten_key(settings)
        self._window_s = window_s
        self._script = client.register_script(_CHECK)

    def check(self, claims: Sequence[Claim], subjects: Sequence[str]
              ) -> tuple[list[bool], set[str]]:
        """(duplicate flag per claim, forgotten subjects among `subjects`) in one round trip."""
        if not claims and not subjects:
            return [], set()
        prefix = self._prefix
        keys = [f"{prefix}{c.dataset}:{c.event_id}" for c in claims]
        keys.append(self._forgotten)
        args: list[str | int] = [self._window_s, len(claims)]
        args.extend(c.source for c in claims)
        args.extend(subjects)
        flags = self._script(keys=keys, args=args)
        duplicate = [bool(flag) for flag in flags[:len(claims)]]
        forgotten = {s for s, flag in zip(subjects, flags[len(claims):], strict=True) if flag}
        return duplicate, forgotten
