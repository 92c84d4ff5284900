"""The release ledger and the contribution bound against real Redis: RDP composition across a
subject's releases (tighter than a sum, equal to Opacus's conversion), idempotent replay,
all-or-nothing refusal, exhaustion, rebuild from the on-disk log, per-epoch bound."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

from services.governance.bound import ContributionBound
from services.governance.releases import ReleaseCharge, ReleaseLedger
from shared.accounting import ORDERS, compose, epsilon_from_rdp
from shared.config import LeptonSettings
from shared.releases import read_verdict
from tests.conftest import REDIS_URL

DELTA = 1e-5


def _curve(sigma: float, q: float = 0.05, steps: int = 200) -> tuple[float, ...]:
    return tuple(float(v) for v in compute_rdp(q=q, noise_multiplier=sigma, steps=steps,
                                               orders=list(ORDERS)))


@pytest.fixture
def settings(redis_prefix: str) -> LeptonSettings:
    return LeptonSettings(redis_url=REDIS_URL, redis_prefix=redis_prefix)


@pytest.fixture
def ledger(settings: LeptonSettings, redis_client: redis.Redis, tmp_path: Path) -> ReleaseLedger:
    found = ReleaseLedger(redis_client, settings, tmp_path / "releases", fsync=False)
    found.ensure_ready()
    return found


def test_conversion_equals_opacus() -> None:
    curve = _curve(1.1)
    ours = epsilon_from_rdp(curve, DELTA)
    theirs, _ = get_privacy_spent(orders=list(ORDERS), rdp=list(curve), delta=DELTA)
    assert ours == pytest.approx(float(theirs), rel=1e-12)


def test_composes_with_rdp_replays_once_and_refuses_all_or_nothing(
        ledger: ReleaseLedger, settings: LeptonSettings, redis_client: redis.Redis) -> None:
    curve = _curve(1.1)
    one = epsilon_from_rdp(curve, DELTA)
    first = ledger.charge("ds", 10.0, 100.0, DELTA, ReleaseCharge("r1", curve, ("a", "b")))
    assert first.charged and not first.replay
    assert first.data["epsilon"] == pytest.approx(one, rel=1e-9)
    replay = ledger.charge("ds", 10.0, 100.0, DELTA, ReleaseCharge("r1", curve, ("a", "b")))
    assert replay.charged and replay.replay
    assert ledger.subject_epsilons("ds", DELTA)["a"] == pytest.approx(one, rel=1e-9)
    second = ledger.charge("ds", 10.0, 100.0, DELTA, ReleaseCharge("r2", curve, ("a", "c")))
    assert second.charged
    spent = ledger.subject_epsilons("ds", DELTA)
    two = epsilon_from_rdp(compose(curve, curve), DELTA)
    assert spent["a"] == pytest.approx(two, rel=1e-9)
    assert one < two < 2 * one  # RDP composition: tighter than the sum
    assert spent["b"] == pytest.approx(one, rel=1e-9) and spent["c"] == spent["b"]
    assert ledger.epoch("ds") == 2
    # "a" would exceed a budget just below three releases: the whole release is refused
    budget = epsilon_from_rdp(compose(curve, curve, curve), DELTA) * 0.999
    refused = ledger.charge("ds", budget, 100.0, DELTA, ReleaseCharge("r3", curve, ("a", "d")))
    assert not refused.charged and refused.reason == "subject_budget_exhausted"
    assert "d" not in ledger.subject_epsilons("ds", DELTA)  # nothing charged
    assert ledger.epoch("ds") == 2
    verdict = read_verdict(redis_client, settings, "ds", "r3")
    assert verdict is not None and verdict["status"] == "refused"
    over, exhausted = ledger.exhausted("ds", ["a", "b", "zz"], budget, 100.0, DELTA)
    assert not over and exhausted == {"a"}
    dataset_refused = ledger.charge("ds", 10.0, 0.1, DELTA, ReleaseCharge("r4", curve, ("e",)))
    assert dataset_refused.reason == "dataset_budget_exhausted"


def test_invalid_curve_is_refused(ledger: ReleaseLedger) -> None:
    verdict = ledger.charge("ds", 10.0, 100.0, DELTA,
                            ReleaseCharge("bad", (-1.0,) * len(ORDERS), ("a",)))
    assert not verdict.charged and verdict.reason == "invalid_charge"


def test_rebuilds_from_the_log(ledger: ReleaseLedger, settings: LeptonSettings,
                               redis_client: redis.Redis, tmp_path: Path) -> None:
    curve = _curve(2.0)
    ledger.charge("ds", 10.0, 100.0, DELTA, ReleaseCharge("r1", curve, ("a", "b")))
    ledger.charge("ds", 10.0, 100.0, DELTA, ReleaseCharge("r2", curve, ("a",)))
    before = ledger.subject_epsilons("ds", DELTA)
    ledger.close()
    for key in redis_client.scan_iter(match=f"{settings.redis_prefix}*"):
        redis_client.delete(key)
    again = ReleaseLedger(redis_client, settings, tmp_path / "releases", fsync=False)
    assert again.ensure_ready() == 2
    assert again.subject_epsilons("ds", DELTA) == pytest.approx(before)
    assert again.epoch("ds") == 2
    replay = again.charge("ds", 10.0, 100.0, DELTA, ReleaseCharge("r2", curve, ("a",)))
    assert replay.replay and again.subject_epsilons("ds", DELTA) == pytest.approx(before)
    again.close()


def test_bound_admits_k_per_subject_per_epoch_idempotently(
        ledger: ReleaseLedger, settings: LeptonSettings, redis_client: redis.Redis) -> None:
    bound = ContributionBound(redis_client, settings)
    key = ledger.epoch_key("ds")
    events = [("e1", "a"), ("e2", "a"), ("e3", "b"), ("e4", "a")]
    assert bound.admit("ds", key, 2, events) == [True, True, True, False]
    assert bound.admit("ds", key, 2, events) == [True, True, True, False]  # same answers
    ledger.charge("ds", 10.0, 100.0, DELTA, ReleaseCharge("r1", _curve(2.0), ("a", "b")))
    assert bound.admit("ds", key, 2, [("e5", "a"), ("e6", "a"), ("e7", "a")]) == [
        True, True, False]
