"""The privacy ledger against real Redis: a hypothesis state machine (spend never exceeds a
budget, bad ε rejected, replays return the first result, Redis loss rebuilt from disk) and
concurrent charging from threads."""

from __future__ import annotations

import math
import shutil
import tempfile
import threading
import uuid
from pathlib import Path

import pytest
import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from services.governance.charge_log import ChargeLog
from services.governance.charges import Budget, Charge, LedgerMissing, effective_epsilon
from services.governance.ledger import Ledger
from shared.config import LeptonSettings
from tests.conftest import REDIS_URL

BUDGET = Budget(subject=3.0, dataset=8.0, delta=1e-5)
SUBJECTS = ["alice", "bob", "carol"]
amounts = st.one_of(
    st.floats(min_value=0, max_value=2.5, allow_nan=False),
    st.sampled_from([0.0, 0.5, 1.0, math.nan, math.inf, -math.inf, -1.0, -1e-9]),
)


def _settings(prefix: str) -> LeptonSettings:
    return LeptonSettings(redis_url=REDIS_URL, redis_prefix=prefix)


def _cleanup(client: redis.Redis, prefix: str) -> None:
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)


class LedgerMachine(RuleBasedStateMachine):
    """Drive the ledger with random charges and compare to a plain model."""

    def __init__(self) -> None:
        super().__init__()
        self.prefix = f"test:{uuid.uuid4().hex[:12]}:"
        self.dir = Path(tempfile.mkdtemp(prefix="ledger-"))
        self.client = redis.Redis.from_url(REDIS_URL)
        self.log = ChargeLog(self.dir, fsync=False)
        self.log.open()
        self.ledger = Ledger(self.client, _settings(self.prefix), self.log)
        self.ledger.ensure_ready()
        self.results: dict[str, tuple[str, float, float]] = {}
        self.subject: dict[str, list[float]] = {s: [0.0, 0.0] for s in SUBJECTS}
        self.dataset = [0.0, 0.0]
        self.next_id = 0

    def teardown(self) -> None:
        self.log.close()
        _cleanup(self.client, self.prefix)
        self.client.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _expect(self, charge: Charge) -> tuple[str, float, float]:
        if charge.charge_id in self.results:
            return self.results[charge.charge_id]
        eps, rho = charge.epsilon, charge.rho
        if any(math.isnan(x) or math.isinf(x) or x < 0 for x in (eps, rho)):
            return ("invalid", 0.0, 0.0)
        s = self.subject[charge.subject] if charge.subject else None
        over_subject = s is not None and effective_epsilon(
            s[0] + eps, s[1] + rho, BUDGET.delta) > 3.0
        over_dataset = effective_epsilon(
            self.dataset[0] + eps, self.dataset[1] + rho, BUDGET.delta) > 8.0
        if over_subject or over_dataset:
            outcome = ("refused", 0.0, 0.0)
        else:
            outcome = ("charged", eps, rho)
            if s is not None:
                s[0] += eps
                s[1] += rho
            self.dataset[0] += eps
            self.dataset[1] += rho
        self.results[charge.charge_id] = outcome
        return outcome

    def _check(self, charges: list[Charge]) -> None:
        got = self.ledger.charge("ds", BUDGET, charges)
        for charge, result in zip(charges, got, strict=True):
            replay = charge.charge_id in self.results
            status, eps, rho = self._expect(charge)
            assert result.status == status, (charge, result)
            if status != "invalid":
                assert result.replay == replay
            if status == "invalid":
                self.results.pop(charge.charge_id, None)
            if status == "charged":
                assert (result.epsilon, result.rho) == (eps, rho)

    @rule(subject=st.sampled_from([*SUBJECTS, None]), eps=amounts,
          rho=st.sampled_from([0.0, 0.0, 0.001, 0.01]))
    def charge_new(self, subject: str | None, eps: float, rho: float) -> None:
        self.next_id += 1
        self._check([Charge(f"c{self.next_id}", subject, eps, rho)])

    @precondition(lambda self: self.results)
    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        charge_id = data.draw(st.sampled_from(sorted(self.results)))
        self._check([Charge(charge_id, "alice", 0.1)])

    @rule(eps=st.lists(amounts, min_size=1, max_size=6))
    def batch(self, eps: list[float]) -> None:
        charges = []
        for i, amount in enumerate(eps):
            self.next_id += 1
            charges.append(Charge(f"c{self.next_id}", SUBJECTS[i % 3], amount))
        self._check(charges)

    @rule()
    def redis_loses_the_ledger(self) -> None:
        _cleanup(self.client, self.prefix)
        # refusals are not durable; a replayed refusal is refused afresh (spend only grows)
        self.results = {k: v for k, v in self.results.items() if v[0] == "charged"}
        assert not self.ledger.ready()

    @invariant()
    def spend_within_budget_and_matching_model(self) -> None:
        if not self.ledger.ready():
            return
        total = self.ledger.spend("ds")
        assert math.isclose(total.epsilon, self.dataset[0], rel_tol=1e-12, abs_tol=1e-12)
        assert effective_epsilon(total.epsilon, total.rho, BUDGET.delta) <= 8.0 + 1e-12
        for name in SUBJECTS:
            eps, rho = self.ledger.subject_spend("ds", name)
            assert math.isclose(eps, self.subject[name][0], rel_tol=1e-12, abs_tol=1e-12)
            assert effective_epsilon(eps, rho, BUDGET.delta) <= 3.0 + 1e-12


TestLedgerMachine = LedgerMachine.TestCase
TestLedgerMachine.settings = settings(
    max_examples=40, stateful_step_count=25, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture
def ledger(redis_client: redis.Redis, redis_prefix: str, tmp_path: Path) -> Ledger:
    log = ChargeLog(tmp_path / "ledger", fsync=False)
    log.open()
    led = Ledger(redis_client, _settings(redis_prefix), log)
    led.ensure_ready()
    return led


def test_concurrent_charges_from_threads_never_overspend(ledger: Ledger,
                                                         redis_prefix: str) -> None:
    budget = Budget(subject=50.0, dataset=1e9)
    results: list[tuple[str, str, bool]] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        client = redis.Redis.from_url(REDIS_URL)
        mine = Ledger(client, _settings(redis_prefix))
        for i in range(40):
            # ids overlap between threads: each id must be charged once only
            charge_id = f"e{(n * 40 + i) % 120}"
            [res] = mine.charge("ds", budget, [Charge(charge_id, "alice", 1.0)])
            with lock:
                results.append((charge_id, res.status, res.replay))
        client.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    first = {}
    for charge_id, status, replay in results:
        if not replay:
            assert charge_id not in first
            first[charge_id] = status
    assert all(first[c] == s for c, s, _ in results)
    assert sum(s == "charged" for s in first.values()) == 50
    assert ledger.subject_spend("ds", "alice") == (50.0, 0.0)
    assert ledger.spend("ds").charges == 50


def test_missing_redis_state_is_rebuilt_from_the_charge_log(
        ledger: Ledger, redis_client: redis.Redis, redis_prefix: str) -> None:
    budget = Budget(subject=10.0, dataset=100.0)
    ledger.charge("ds", budget, [Charge(f"e{i}", f"s{i % 3}", 0.5) for i in range(9)])
    ledger.charge("ds", budget, [Charge("train-1", None, 2.0)])
    before = (ledger.spend("ds"), ledger.subjects("ds"))
    _cleanup(redis_client, redis_prefix)
    [again] = ledger.charge("ds", budget, [Charge("e0", "s0", 0.5)])
    assert again.replay and again.charged
    assert (ledger.spend("ds"), ledger.subjects("ds")) == before
    plain = Ledger(redis_client, _settings(redis_prefix))
    _cleanup(redis_client, redis_prefix)
    with pytest.raises(LedgerMissing):
        plain.charge("ds", budget, [Charge("e1", "s1", 0.5)])
