"""The per-release contribution bound of `model` privacy mode: at most `max_events_per_subject`
events of each subject are released between two charged model releases of a dataset.

One Lua script per dataset and batch counts, per release epoch (the release ledger's count of
charged releases), each subject's released events; a decision is remembered per event id, so a
batch governed again after a crash gets the same answers. Epoch keys expire after a month.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis

from shared.config import LeptonSettings
from shared.state import rkey

EPOCH_TTL_S = 30 * 24 * 3600

_BOUND_SCRIPT = """
local epoch = redis.call('HGET', KEYS[1], 'epoch') or '0'
local key = ARGV[1] .. epoch
local limit = tonumber(ARGV[2])
local out = {}
for i = 3, #ARGV, 2 do
  local event, subject = 'e:' .. ARGV[i], 's:' .. ARGV[i + 1]
  local prior = redis.call('HGET', key, event)
  if prior then
    out[#out + 1] = prior
  else
    local count = tonumber(redis.call('HGET', key, subject) or '0')
    local verdict = '0'
    if count < limit then
      redis.call('HINCRBY', key, subject, 1)
      verdict = '1'
    end
    redis.call('HSET', key, event, verdict)
    out[#out + 1] = verdict
  end
end
redis.call('EXPIRE', key, {ttl})
return out
""".replace("{ttl}", str(EPOCH_TTL_S))


class ContributionBound:
    """Admits at most `limit` events per subject and release epoch."""

    def __init__(self, client: redis.Redis[bytes], settings: LeptonSettings) -> None:
        self._settings = settings
        self._script = client.register_script(_BOUND_SCRIPT)

    def admit(self, dataset: str, epoch_key: str, limit: int,
              events: Sequence[tuple[str, str]]) -> list[bool]:
        """For each (event id, subject): True when it fits in this release's bound."""
        if not events:
            return []
        prefix = rkey(self._settings, "governance", "bound", dataset, "")
        args: list[str | int] = [prefix, limit]
        for event_id, subject in events:
            args += [event_id, subject]
        raw = self._script(keys=[epoch_key], args=args)
        return [v in (b"1", "1", 1) for v in raw]
