"""The privacy-budget ledger: per (dataset, subject) and per dataset, pure ε and zCDP ρ.

Charges run in one Redis Lua script per dataset and batch: atomic, idempotent per charge id (a
replayed charge returns its first result), refusing a charge that would exceed a budget and
rejecting NaN, negative or infinite amounts. Every accepted charge is also appended to an
append-only segment log under `<data_dir>/governance/ledger/`, from which the Redis state is
rebuilt when Redis lost it (`lepton privacy rebuild`, or automatically).

A subject's spend is ε_total = Σε + ρ_total + 2·sqrt(ρ_total·ln(1/δ)): pure-ε charges add up
(basic composition), Gaussian releases add up in ρ (zCDP) and are converted once to (ε, δ)-DP
(Bun & Steinke 2016, Prop. 1.3) with the dataset's δ.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import redis

from services.governance.charge_log import ChargeLog
from services.governance.charges import (
    Budget,
    Charge,
    ChargeResult,
    LedgerMissing,
    Spend,
    effective_epsilon,
    parse_result,
)
from shared.config import LeptonSettings
from shared.state import rkey

_CHARGE_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
local sb, db, delta = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local function fmt(x) return string.format('%.17g', x) end
local function finite(x) return x ~= nil and x == x and x >= 0 and x < math.huge end
local function effective(eps, rho)
  if rho <= 0 then return eps end
  if delta <= 0 then return math.huge end
  return eps + rho + 2 * math.sqrt(rho * math.log(1 / delta))
end
local totals = redis.call('HMGET', KEYS[5], 'eps', 'rho', 'charges')
local d_eps = tonumber(totals[1] or '0')
local d_rho = tonumber(totals[2] or '0')
local d_n = tonumber(totals[3] or '0')
local out = {}
local changed = false
for i = 5, #ARGV, 4 do
  local id, subject = ARGV[i], ARGV[i + 1]
  local eps, rho = tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
  local prior = redis.call('HGET', KEYS[2], id)
  if prior then
    out[#out + 1] = 'replay|' .. prior
  elseif not finite(eps) or not finite(rho) then
    out[#out + 1] = 'new|invalid|epsilon'
  else
    local s_eps, s_rho = 0, 0
    if subject ~= '' then
      s_eps = tonumber(redis.call('HGET', KEYS[3], subject) or '0')
      s_rho = tonumber(redis.call('HGET', KEYS[4], subject) or '0')
    end
    local over = ''
    if subject ~= '' and effective(s_eps + eps, s_rho + rho) > sb then
      over = 'subject'
    elseif effective(d_eps + eps, d_rho + rho) > db then
      over = 'dataset'
    end
    local result
    if over ~= '' then
      result = 'refused|' .. over
    else
      d_eps, d_rho, d_n = d_eps + eps, d_rho + rho, d_n + 1
      if subject ~= '' then
        redis.call('HSET', KEYS[3], subject, fmt(s_eps + eps))
        if rho > 0 then redis.call('HSET', KEYS[4], subject, fmt(s_rho + rho)) end
      end
      result = 'charged|' .. fmt(eps) .. '|' .. fmt(rho) .. '|'
      changed = true
    end
    redis.call('HSET', KEYS[2], id, result)
    out[#out + 1] = 'new|' .. result
  end
end
if changed then
  redis.call('HSET', KEYS[5], 'eps', fmt(d_eps), 'rho', fmt(d_rho), 'charges', d_n)
  redis.call('SADD', KEYS[6], ARGV[1])
end
return out
"""


class Ledger:
    """Budget accounting in Redis, backed by the on-disk charge log."""

    def __init__(self, client: redis.Redis[bytes], settings: LeptonSettings,
                 charge_log: ChargeLog | None = None) -> None:
        self._redis = client
        self._settings = settings
        self._log = charge_log
        self._script = client.register_script(_CHARGE_SCRIPT)

    def _key(self, *parts: str) -> str:
        return rkey(self._settings, "governance", "ledger", *parts)

    def _keys(self, dataset: str) -> list[str]:
        return [self._key("meta"), self._key(dataset, "charges"),
                self._key(dataset, "subject_eps"), self._key(dataset, "subject_rho"),
                self._key(dataset, "totals"), self._key("datasets")]

    def charge(self, dataset: str, budget: Budget, charges: Sequence[Charge]
               ) -> list[ChargeResult]:
        """Charge atomically (refusing over-budget ones), log accepted charges
        to disk, and return one result per charge in order. Rebuilds once if Redis lost it."""
        if not charges:
            return []
        args: list[Any] = [dataset, repr(budget.subject), repr(budget.dataset),
                           repr(budget.delta)]
        for item in charges:
            args += [item.charge_id, item.subject or "", repr(float(item.epsilon)),
                     repr(float(item.rho))]
        raw = self._script(keys=self._keys(dataset), args=args)
        if raw and raw[0] in (b"missing", "missing"):
            if self._log is None:
                raise LedgerMissing("the privacy ledger is missing from Redis")
            self.rebuild()
            raw = self._script(keys=self._keys(dataset), args=args)
        results = [parse_result(c.charge_id, r) for c, r in zip(charges, raw, strict=True)]
        if self._log is not None:
            self._log.append(dataset, list(zip(charges, results, strict=True)))
        return results

    def ready(self) -> bool:
        """True when Redis holds the ledger state."""
        return bool(self._redis.exists(self._key("meta")))

    def ensure_ready(self) -> int:
        """Rebuild from the charge log when Redis lost the ledger; the charges replayed."""
        return 0 if self.ready() else self.rebuild()

    def rebuild(self) -> int:
        """Replace the Redis ledger by the sums of the on-disk charge log; charges replayed."""
        if self._log is None:
            raise LedgerMissing("no charge log to rebuild from")
        charges = self._log.read()
        per_ds: dict[str, dict[str, Any]] = defaultdict(
            lambda: {"eps": 0.0, "rho": 0.0, "n": 0, "s_eps": defaultdict(float),
                     "s_rho": defaultdict(float), "ids": {}})
        for item in charges:
            acc = per_ds[item["dataset"]]
            acc["eps"] += item["eps"]
            acc["rho"] += item["rho"]
            acc["n"] += 1
            if item["subject"]:
                acc["s_eps"][item["subject"]] += item["eps"]
                if item["rho"] > 0:
                    acc["s_rho"][item["subject"]] += item["rho"]
            acc["ids"][item["id"]] = (f"charged|{item['eps']!r}|{item['rho']!r}|"
                                      f"{item.get('over') or ''}")
        known = {m.decode() for m in self._redis.smembers(self._key("datasets"))}
        pipe = self._redis.pipeline(transaction=True)
        for dataset in known | set(per_ds):
            pipe.delete(*self._keys(dataset)[1:5])
        pipe.delete(self._key("datasets"))
        for dataset, acc in per_ds.items():
            _, ids_key, s_eps_key, s_rho_key, totals_key, datasets_key = self._keys(dataset)
            for key, mapping in ((ids_key, acc["ids"]), (s_eps_key, acc["s_eps"]),
                                 (s_rho_key, acc["s_rho"])):
                items = list(mapping.items())
                for start in range(0, len(items), 10_000):
                    pipe.hset(key, mapping={k: _fmt(v) for k, v in items[start:start + 10_000]})
            pipe.hset(totals_key, mapping={"eps": _fmt(acc["eps"]), "rho": _fmt(acc["rho"]),
                                           "charges": acc["n"]})
            pipe.sadd(datasets_key, dataset)
        pipe.set(self._key("meta"), orjson.dumps({
            "rebuilt_at": datetime.now(UTC).isoformat(), "charges": len(charges)}))
        pipe.execute()
        return len(charges)

    def datasets(self) -> list[str]:
        """Datasets with charges."""
        return sorted(m.decode() for m in self._redis.smembers(self._key("datasets")))

    def spend(self, dataset: str) -> Spend:
        """A dataset's total spend."""
        eps, rho, count = self._redis.hmget(self._key(dataset, "totals"), "eps", "rho", "charges")
        return Spend(float(eps or 0), float(rho or 0), int(count or 0))

    def subject_spend(self, dataset: str, subject: str) -> tuple[float, float]:
        """(ε, ρ) charged to one subject for one dataset."""
        eps = self._redis.hget(self._key(dataset, "subject_eps"), subject)
        rho = self._redis.hget(self._key(dataset, "subject_rho"), subject)
        return float(eps or 0), float(rho or 0)

    def subjects(self, dataset: str) -> dict[str, tuple[float, float]]:
        """Every subject's (ε, ρ) for `dataset`."""
        rho = {k.decode(): float(v) for k, v in
               self._redis.hscan_iter(self._key(dataset, "subject_rho"), count=1000)}
        return {k.decode(): (float(v), rho.get(k.decode(), 0.0)) for k, v in
                self._redis.hscan_iter(self._key(dataset, "subject_eps"), count=1000)}

    def top_subjects(self, dataset: str, delta: float, n: int = 10
                     ) -> list[tuple[str, float, float, float]]:
        """The `n` subjects with the largest effective ε: (subject, ε, ρ, effective ε)."""
        rows = ((s, e, r, effective_epsilon(e, r, delta))
                for s, (e, r) in self.subjects(dataset).items())
        return heapq.nlargest(n, rows, key=lambda row: row[3])


def _fmt(value: float | str) -> str:
    return value if isinstance(value, str) else repr(float(value))
