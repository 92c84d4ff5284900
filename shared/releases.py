"""Release charges between the trainer and governance: the `release_charge` decision's id, the
contributing subjects (too many for a decision: the trainer stores them in Redis under the
release id, the signed decision carries their count and sha256, governance checks both), and
where governance records its verdict (Redis HASH per dataset: release id → verdict JSON),
which the trainer waits for before it announces a model."""

from __future__ import annotations

import hashlib
import threading
import time
from typing import Any

import orjson
import redis

from shared.config import LeptonSettings
from shared.state import rkey

RELEASE_CHARGE = "release_charge"
SUBJECTS_TTL_S = 7 * 24 * 3600
SITE_ACTOR = "trainer:site:"  # + the site's name: the actor of a federated site's charge


def subjects_key(settings: LeptonSettings, dataset: str, release: str) -> str:
    """The STRING holding a release's subject ids (newline-separated, sorted)."""
    return rkey(settings, "trainer", "releases", dataset, release, "subjects")


def subjects_digest(subjects: list[str] | tuple[str, ...]) -> str:
    """sha256 (hex) of the sorted, distinct subject ids joined by newlines."""
    return hashlib.sha256("\n".join(sorted(set(subjects))).encode()).hexdigest()


def store_subjects(client: redis.Redis[bytes], settings: LeptonSettings, dataset: str,
                   release: str, subjects: list[str]) -> None:
    """Put a release's subject ids where governance reads them (kept a week)."""
    client.set(subjects_key(settings, dataset, release), "\n".join(sorted(set(subjects))),
               ex=SUBJECTS_TTL_S)


def load_subjects(client: redis.Redis[bytes], settings: LeptonSettings, dataset: str,
                  release: str) -> list[str] | None:
    """A release's subject ids, or None when they are not (or no longer) stored."""
    raw = client.get(subjects_key(settings, dataset, release))
    return None if raw is None else [s for s in raw.decode().split("\n") if s]


def verdicts_key(settings: LeptonSettings, dataset: str) -> str:
    """The HASH of release verdicts of `dataset`."""
    return rkey(settings, "governance", "releases", dataset, "verdicts")


def release_id(model: str, *parts: str) -> str:
    """A deterministic release id: the model name and a digest of what identifies the
    candidate (weights digest, lineage)."""
    digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]
    return f"release-{model}-{digest}"


def read_verdict(client: redis.Redis[bytes], settings: LeptonSettings, dataset: str,
                 release: str) -> dict[str, Any] | None:
    """Governance's verdict on a release charge, or None while it has not decided."""
    raw = client.hget(verdicts_key(settings, dataset), release)
    return None if raw is None else dict(orjson.loads(raw))


def wait_verdict(client: redis.Redis[bytes], settings: LeptonSettings, dataset: str,
                 release: str, timeout_s: float, stop: threading.Event | None = None
                 ) -> dict[str, Any] | None:
    """Poll for the verdict until `timeout_s` passes (or `stop` is set); None on time-out."""
    deadline = time.monotonic() + timeout_s
    wait = 0.05
    while True:
        verdict = read_verdict(client, settings, dataset, release)
        if verdict is not None or time.monotonic() >= deadline:
            return verdict
        if stop is not None and stop.wait(wait):
            return read_verdict(client, settings, dataset, release)
        if stop is None:
            time.sleep(wait)
        wait = min(wait * 2, 0.5)
