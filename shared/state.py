"""Redis access: one client factory, one key scheme (every key under the configured prefix, and
the policy keys several services read), and `compact_persistence`, which makes Redis rewrite its
AOF/RDB files after keys were destroyed."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from shared.config import LeptonSettings


def make_redis(settings: LeptonSettings) -> redis.Redis[bytes]:
    """A Redis client for the configured URL, with timeouts and retry on connection errors."""
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=5,
        socket_connect_timeout=5,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=5),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )


def rkey(settings: LeptonSettings, *parts: str) -> str:
    """A Redis key under the configured prefix: `<prefix>part1:part2...`."""
    return settings.redis_prefix + ":".join(parts)


def forgotten_key(settings: LeptonSettings) -> str:
    """The SET of forgotten subjects' pseudonyms (`lepton forget`; read by every stage)."""
    return rkey(settings, "policy", "forgotten")


def policy_ready_key(settings: LeptonSettings) -> str:
    """Present while Redis holds the policy sets; governance sets it when it (re)builds them."""
    return rkey(settings, "policy", "ready")


@dataclass
class Compaction:
    """What `compact_persistence` did to Redis's files: each item is a line for the operator."""

    done: list[str] = field(default_factory=list)
    not_reached: list[str] = field(default_factory=list)
    files: bool = True  # False when Redis keeps no persistence files at all

    @property
    def outcome(self) -> str:
        """`rewritten`, `none` (no files to rewrite) or `not_reached`."""
        if self.not_reached:
            return "not_reached"
        return "rewritten" if self.files else "none"


def compact_persistence(client: redis.Redis[bytes], timeout_s: float = 120.0) -> Compaction:
    """Rewrite Redis's persistence files so deleted keys leave them: BGREWRITEAOF when AOF is
    on, BGSAVE when RDB snapshots are configured or were taken; waits for each to finish.

    A rewrite already running may have forked before the caller's delete, so it is waited out
    and a fresh one started. Servers that refuse (managed Redis without these commands) are
    reported in `not_reached`, never raised.
    """
    report = Compaction()
    try:
        info = client.info("persistence")
        save = client.config_get("save").get("save", "")
    except redis.ResponseError as error:
        report.not_reached.append(f"Redis persistence files (INFO/CONFIG refused: {error})")
        return report
    deadline = time.monotonic() + timeout_s
    if info.get("aof_enabled"):
        _run_fork(client, "BGREWRITEAOF", "aof_rewrite_in_progress", "aof_rewrites",
                  "aof_last_bgrewrite_status", "Redis AOF rewritten (BGREWRITEAOF)",
                  deadline, report)
    if save or info.get("rdb_saves", 0):
        _run_fork(client, "BGSAVE", "rdb_bgsave_in_progress", "rdb_saves",
                  "rdb_last_bgsave_status", "Redis RDB snapshot rewritten (BGSAVE)",
                  deadline, report)
    if not report.done and not report.not_reached:
        report.files = False
        report.done.append("Redis keeps no persistence files (AOF off, no RDB snapshots)")
    return report


def _idle(client: redis.Redis[bytes], deadline: float) -> Mapping[str, Any] | None:
    while time.monotonic() < deadline:
        info = client.info("persistence")
        if not (info.get("aof_rewrite_in_progress") or info.get("aof_rewrite_scheduled")
                or info.get("rdb_bgsave_in_progress")):
            return info
        time.sleep(0.05)
    return None


def _run_fork(client: redis.Redis[bytes], command: str, running: str, counter: str,
              status: str, label: str, deadline: float, report: Compaction) -> None:
    while True:
        before = _idle(client, deadline)
        if before is None:
            report.not_reached.append(f"{label}: timed out waiting for a running fork")
            return
        try:
            client.execute_command(command)
            break
        except redis.ResponseError as error:
            if "in progress" not in str(error):
                report.not_reached.append(f"{label}: refused ({error})")
                return
    after = _idle(client, deadline)
    if after is None:
        report.not_reached.append(f"{label}: still running at the timeout")
    elif after.get(counter, 0) <= before.get(counter, 0) or after.get(status) != "ok":
        report.not_reached.append(f"{label}: {status}={after.get(status)}")
    else:
        report.done.append(label)
