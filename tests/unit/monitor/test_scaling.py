"""The scaling formula on given lag samples: throughput, and work per busy second in batches a
light load left small, only bound a replica's capacity from below, so a group that keeps up is
never advised more replicas on them; partitions whose lag is unknown are named in the reason."""

from __future__ import annotations

from services.monitor.lag import GroupSample, backlog
from services.monitor.scaling import Consumes, advise

TOPIC = "lepton.predictions.requests"


def _sample(at: float, end: int, committed: int, unread: tuple[int, ...] = ()) -> GroupSample:
    sources = [(TOPIC, p) for p in range(4)]
    return GroupSample(at, dict.fromkeys(sources, end), dict.fromkeys(sources, committed),
                       {s: end - committed for s in sources if s[1] not in unread},
                       tuple((TOPIC, p) for p in unread))


def _serving(capacity: float | None, floor: float | None = None) -> Consumes:
    return Consumes("serving", "g", [TOPIC], None, replicas=1, capacity=capacity, floor=floor)


def test_a_group_that_keeps_up_with_unmeasured_capacity_keeps_its_replicas() -> None:
    # 0.6 records/s arrive and are done by one replica with no backlog: done/s is all we know
    advice = advise(_serving(None), _sample(0.0, 100, 100), _sample(10.0, 103, 103))
    assert advice.recommended == 1
    assert advice.reason.startswith("keeping up (backlog 0, within 64)")


def test_a_growing_backlog_with_unmeasured_capacity_still_scales_out() -> None:
    advice = advise(_serving(None), _sample(0.0, 100, 100), _sample(10.0, 400, 200))
    assert advice.recommended > 1


def test_a_light_load_bound_never_scales_a_group_that_keeps_up() -> None:
    # small batches each paying a transaction: 400/s per busy second bounds capacity from below;
    # 346 records/s arrive and are done, so 346 / (400 × 80 %) must not ask for 2 replicas
    advice = advise(_serving(None, floor=400.0), _sample(0.0, 1, 0), _sample(10.0, 866, 865))
    assert advice.arrival_per_s == 346.0
    assert advice.recommended == 1
    assert advice.reason == ("keeping up (backlog 4, within 64); capacity not measured under "
                             "load, at least 400.0/s a replica")
    # a backlog that moved by a few records between the samples is still one poll's worth
    jitter = advise(_serving(None, floor=400.0), _sample(0.0, 1, 0), _sample(10.0, 868, 865))
    assert (jitter.lag_growth_per_s, jitter.recommended) == (0.8, 1)


def test_a_growing_backlog_on_a_bound_says_at_least() -> None:
    # 100/s arrive, 50/s are done: 100/s + 500 over 30 s at 80 % of at least 50/s
    advice = advise(_serving(None, floor=50.0), _sample(0.0, 0, 0), _sample(10.0, 250, 125))
    assert advice.recommended == 3
    assert "one replica does at least 50.0/s at 80%" in advice.reason
    assert advice.to_dict()["capacity_is_lower_bound"] is True


def test_a_measured_capacity_decides_as_before() -> None:
    advice = advise(_serving(1.0), _sample(0.0, 100, 100), _sample(10.0, 140, 140))
    assert advice.recommended == 4  # 4 records/s at 80 % of 1/s: 5, capped at 4 partitions
    assert advice.to_dict()["capacity_is_lower_bound"] is False


def test_partitions_whose_lag_is_unknown_are_named() -> None:
    advice = advise(_serving(100.0), _sample(0.0, 100, 100, unread=(2,)),
                    _sample(10.0, 110, 110, unread=(2,)))
    assert advice.reason.endswith("lag of 1 of 4 partitions unknown (their positions were not "
                                  "read in time)")


def test_a_position_read_past_the_end_snapshot_is_no_lag() -> None:
    assert backlog(end=100, committed=105) == 0  # the group consumed on while positions were read
    assert backlog(end=100, committed=90) == 10
    assert backlog(end=100, committed=-1) == 100  # nothing committed: from the start


def test_a_consumer_whose_commits_are_not_a_backlog_is_not_scaled_by_lag() -> None:
    # the trainer commits once per release: a lag that grows by the cycle in progress
    trainer = Consumes("trainer", "g", [TOPIC], None, replicas=2, capacity=None,
                       lag_scaled=False)
    advice = advise(trainer, _sample(0.0, 100, 100), _sample(10.0, 3000, 100))
    assert advice.recommended == 2
    assert advice.reason.startswith("not scaled by lag: it commits once per release")
