"""The release ledger of `model` privacy mode: what each model release costs each subject.

A release charge names the subjects whose events trained the model and the release's per-subject
RDP curve (orders in shared/accounting.py). One Redis Lua script per release, atomic and
idempotent per release id: it adds the curve to the dataset's curve and to each subject's, and
accepts the release only when every subject's composed ε (RDP composition, converted at the
dataset's δ) and the dataset's stay within their budgets; otherwise nothing is charged and the
release is refused. Accepted releases are appended to `<data_dir>/governance/ledger/releases/`
first-hand, from which Redis is rebuilt when it lost the ledger. Each accepted release also
advances the dataset's release epoch, which resets the per-release contribution bound.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import redis

from services.governance.release_script import CHARGE_SCRIPT
from services.governance.segments import SegmentLog
from shared.accounting import ORDERS, compose, epsilon_from_rdp
from shared.config import LeptonSettings
from shared.releases import verdicts_key
from shared.state import rkey

INFINITE = 1e308  # how an unbounded RDP order travels (Lua reads no 'inf')


class ReleaseLedgerMissing(RuntimeError):
    """Redis has no release-ledger state and there is no log to rebuild it from."""


@dataclass(frozen=True, slots=True)
class ReleaseCharge:
    """A model release to charge: its id, per-subject RDP curve and contributing subjects."""

    release_id: str
    curve: tuple[float, ...]
    subjects: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the ledger did with a release charge."""

    status: str  # charged | refused
    replay: bool
    reason: str | None
    data: dict[str, Any]

    @property
    def charged(self) -> bool:
        """True when the release is (or already was) on the ledger."""
        return self.status == "charged"


def _fmt(curve: Iterable[float]) -> str:
    return ",".join(repr(min(float(v), INFINITE)) for v in curve)


def _curve(text: bytes | str | None) -> list[float] | None:
    if text is None:
        return None
    raw = text.decode() if isinstance(text, bytes) else text
    return [math.inf if float(v) >= 1e300 else float(v) for v in raw.split(",")]


def subject_releases(directory: Path, subject: str) -> list[str]:
    """The ids of the accepted releases in the log under `directory` that charged `subject`."""
    if not (directory / "segments").is_dir():
        return []
    return [item["id"] for line in SegmentLog(directory / "segments").scan()
            if subject in (item := orjson.loads(line))["subjects"]]


class ReleaseLedger:
    """Per-subject RDP composition of model releases, in Redis, backed by an on-disk log."""

    def __init__(self, client: redis.Redis[bytes], settings: LeptonSettings,
                 directory: Path | None = None, *, fsync: bool = True) -> None:
        self._redis = client
        self._settings = settings
        self.client, self.settings = client, settings
        self._script = client.register_script(CHARGE_SCRIPT)
        self._log = SegmentLog(directory / "segments", fsync=fsync) if directory else None
        self._ids: set[str] = set()
        if self._log is not None:
            self._ids = {orjson.loads(line)["id"] for line in self._log.scan()}
            self._log.open_for_append()

    def _key(self, *parts: str) -> str:
        return rkey(self._settings, "governance", "releases", *parts)

    def _keys(self, dataset: str) -> list[str]:
        return [self._key("meta"), verdicts_key(self._settings, dataset),
                self._key(dataset, "subjects"), self._key(dataset, "totals"),
                self._key("datasets")]

    def charge(self, dataset: str, subject_budget: float, dataset_budget: float, delta: float,
               release: ReleaseCharge) -> Verdict:
        """Charge a release atomically (all subjects and the dataset, or nothing)."""
        subjects = sorted(set(release.subjects))
        args: list[Any] = [dataset, repr(subject_budget), repr(dataset_budget), repr(delta),
                           release.release_id, _fmt(release.curve),
                           ",".join(repr(a) for a in ORDERS), *subjects]
        raw = self._script(keys=self._keys(dataset), args=args)
        if raw and raw[0] in (b"missing", "missing"):
            self.rebuild()
            raw = self._script(keys=self._keys(dataset), args=args)
        origin, text = (x.decode() if isinstance(x, bytes) else x for x in raw)
        data = orjson.loads(text)
        verdict = Verdict(data["status"], origin == "replay", data.get("reason"), data)
        if verdict.charged and self._log is not None and release.release_id not in self._ids:
            self._log.append(orjson.dumps({
                "id": release.release_id, "dataset": dataset, "curve": _fmt(release.curve),
                "subjects": subjects, "verdict": data,
                "at": datetime.now(UTC).isoformat(timespec="milliseconds")}))
            self._log.sync()
            self._ids.add(release.release_id)
        return verdict

    def refuse(self, dataset: str, release_id: str, reason: str, error: str) -> None:
        """Record a refusal for a charge that could not be checked (first verdict wins)."""
        self._redis.hsetnx(verdicts_key(self._settings, dataset), release_id, orjson.dumps(
            {"status": "refused", "reason": reason, "error": error}))

    def ensure_ready(self) -> int:
        """Rebuild from the log when Redis lost the release ledger; releases replayed."""
        return 0 if self._redis.exists(self._key("meta")) else self.rebuild()

    def rebuild(self) -> int:
        """Replace the Redis release ledger by the composition of the on-disk log."""
        if self._log is None:
            raise ReleaseLedgerMissing("no release log to rebuild from")
        lines = [orjson.loads(line) for line in SegmentLog(self._log.directory).scan()]
        per_ds: dict[str, dict[str, Any]] = defaultdict(
            lambda: {"curve": [0.0] * len(ORDERS), "subjects": {}, "verdicts": {},
                     "epoch": 0, "last": None})
        for item in lines:
            acc = per_ds[item["dataset"]]
            curve = _curve(item["curve"]) or []
            acc["curve"] = compose(acc["curve"], curve)
            for subject in item["subjects"]:
                acc["subjects"][subject] = compose(
                    acc["subjects"].get(subject, [0.0] * len(ORDERS)), curve)
            acc["verdicts"][item["id"]] = orjson.dumps(item["verdict"])
            acc["epoch"] += 1
            acc["last"] = item["curve"]
        known = {m.decode() for m in self._redis.smembers(self._key("datasets"))}
        pipe = self._redis.pipeline(transaction=True)
        for dataset in known | set(per_ds):
            pipe.delete(*self._keys(dataset)[1:4])
        pipe.delete(self._key("datasets"))
        for dataset, acc in per_ds.items():
            _, verdicts, subjects, totals, datasets = self._keys(dataset)
            if acc["verdicts"]:
                pipe.hset(verdicts, mapping=acc["verdicts"])
            items = [(s, _fmt(c)) for s, c in acc["subjects"].items()]
            for start in range(0, len(items), 10_000):
                pipe.hset(subjects, mapping=dict(items[start:start + 10_000]))
            pipe.hset(totals, mapping={"curve": _fmt(acc["curve"]), "epoch": acc["epoch"],
                                       "last": acc["last"] or ""})
            pipe.sadd(datasets, dataset)
        pipe.set(self._key("meta"), orjson.dumps({"rebuilt_at": datetime.now(UTC).isoformat(),
                                                  "releases": len(lines)}))
        pipe.execute()
        return len(lines)

    def epoch_key(self, dataset: str) -> str:
        """The HASH whose `epoch` field counts the dataset's charged releases."""
        return self._key(dataset, "totals")

    def epoch(self, dataset: str) -> int:
        """How many releases of `dataset` were charged."""
        return int(self._redis.hget(self.epoch_key(dataset), "epoch") or 0)

    def exhausted(self, dataset: str, subjects: Sequence[str], subject_budget: float,
                  dataset_budget: float, delta: float) -> tuple[bool, set[str]]:
        """Whether one more release like the last one would overspend the dataset, and which
        of `subjects` it would overspend (nothing before the first release)."""
        last, total = self._redis.hmget(self._key(dataset, "totals"), "last", "curve")
        reference = _curve(last) if last else None
        if reference is None or not subjects:
            return False, set()
        dataset_over = epsilon_from_rdp(compose(_curve(total) or [0.0] * len(ORDERS),
                                                reference), delta) > dataset_budget
        order = sorted(set(subjects))
        curves = self._redis.hmget(self._key(dataset, "subjects"), order)
        over = {s for s, c in zip(order, curves, strict=True) if c is not None
                and epsilon_from_rdp(compose(_curve(c) or [], reference), delta) > subject_budget}
        return dataset_over, over

    def datasets(self) -> list[str]:
        """Datasets with charged releases."""
        return sorted(m.decode() for m in self._redis.smembers(self._key("datasets")))

    def subject_epsilons(self, dataset: str, delta: float) -> dict[str, float]:
        """Every charged subject's composed ε at `delta`."""
        return {k.decode(): epsilon_from_rdp(_curve(v) or [], delta) for k, v in
                self._redis.hscan_iter(self._key(dataset, "subjects"), count=1000)}

    def dataset_epsilon(self, dataset: str, delta: float) -> float:
        """The composed ε of all of the dataset's releases (a bound for any one subject)."""
        curve = _curve(self._redis.hget(self._key(dataset, "totals"), "curve"))
        return epsilon_from_rdp(curve, delta) if curve else 0.0

    def verdicts(self, dataset: str) -> dict[str, dict[str, Any]]:
        """Every release charge's verdict, by release id."""
        return {k.decode(): orjson.loads(v) for k, v in
                self._redis.hgetall(verdicts_key(self._settings, dataset)).items()}

    def max_subject_epsilon(self, dataset: str) -> float | None:
        """The largest ε any one subject of `dataset` has spent through charged releases (None
        before the first): each charged verdict holds the largest composed ε among its subjects,
        and a subject's ε only grows, so the maximum over verdicts is the maximum over
        subjects."""
        spent = [float(v["max_subject_epsilon"]) for v in self.verdicts(dataset).values()
                 if v.get("status") == "charged" and v.get("max_subject_epsilon") is not None]
        return max(spent, default=None)

    def close(self) -> None:
        """Sync and close the log."""
        if self._log is not None:
            self._log.close()
