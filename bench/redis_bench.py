"""What the stages' per-batch Redis round trips cost the client: ingest's dedup script (1,000
claims and their subjects' forgotten lookups), governance's policy pipeline (forgotten and
consent SMISMEMBERs) and its contribution-bound script, each for a 1,000-event batch, with
redis-py's pure-Python command packer and reply parser (the baseline) against hiredis's (C), in
the same run and interleaved. Needs Redis at LEPTON_REDIS_URL (default 127.0.0.1:6379);
everything it writes lives under a fresh prefix and is deleted. Prints a markdown table."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import redis
from redis.connection import PythonRespSerializer, _HiredisParser, _RESP2Parser

from services.governance.bound import ContributionBound
from services.governance.policy import Policy
from services.ingest.dedup import Claim, Deduper
from shared.config import LeptonSettings

BATCH = 1_000
ROUNDS = 30


def _client(settings: LeptonSettings, hiredis: bool) -> redis.Redis[bytes]:
    """A client with hiredis's packer and parser, or with redis-py's Python ones."""
    extra: dict[str, Any] = {"parser_class": _HiredisParser if hiredis else _RESP2Parser}
    if not hiredis:
        extra["command_packer"] = PythonRespSerializer(6000, redis.connection.Encoder(
            "utf-8", "strict", False).encode)
    return redis.Redis.from_url(settings.redis_url, **extra)


def _work(settings: LeptonSettings, client: redis.Redis[bytes]) -> dict[str, Callable[[int],
                                                                                      object]]:
    """One batch's call per operation, each given the round number (fresh ids each round)."""
    dedup = Deduper(settings, client, 3600)
    policy = Policy(client, settings)
    client.set(policy.ready_key(), 1)
    bound = ContributionBound(client, settings)

    def ids(n: int) -> list[str]:
        return [f"ev-{n:04d}-{i:05d}" for i in range(BATCH)]

    subjects = [f"ps:{i:040d}" for i in range(BATCH)]
    return {
        "ingest: dedup claims + forgotten (one script call)": lambda n: dedup.check(
            [Claim("transactions", e, f"raw/0/{i}") for i, e in enumerate(ids(n))], subjects),
        "governance: policy (pipelined SMISMEMBERs)": lambda n: policy.blocked(
            [("transactions", s) for s in subjects]),
        "governance: contribution bound (one script call)": lambda n: bound.admit(
            "transactions", f"{settings.redis_prefix}bench:epoch:{n}", 1,
            list(zip(ids(n), subjects, strict=True))),
    }


def main() -> None:
    """Print the table."""
    settings = LeptonSettings(redis_prefix=f"bench{uuid.uuid4().hex[:8]}:",
                              kafka_bootstrap="unused:1")
    clients = {name: _client(settings, name == "hiredis") for name in ("python", "hiredis")}
    work = {name: _work(settings, client) for name, client in clients.items()}
    best: dict[tuple[str, str], float] = {}
    try:
        for n in range(ROUNDS):
            for name in clients:
                for op, call in work[name].items():
                    started = time.thread_time()
                    call(n * 2 + (name == "hiredis"))
                    spent = (time.thread_time() - started) / BATCH * 1e6
                    best[op, name] = min(best.get((op, name), float("inf")), spent)
    finally:
        keys = list(clients["python"].scan_iter(f"{settings.redis_prefix}*", count=10_000))
        for start in range(0, len(keys), 1000):
            clients["python"].delete(*keys[start:start + 1000])
    print(f"| batch of {BATCH:,} events, client CPU µs per event (best of {ROUNDS}) | "
          "redis-py Python (baseline) | hiredis | ratio |\n|---|---:|---:|---:|")
    for op in work["python"]:
        python, fast = best[op, "python"], best[op, "hiredis"]
        print(f"| {op} | {python:.2f} | {fast:.2f} | {fast / python:.2f} |")


if __name__ == "__main__":
    main()
