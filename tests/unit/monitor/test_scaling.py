"""The scaling formula on given lag samples: throughput only bounds a replica's capacity from
below, so a group that keeps up is never advised more replicas on it; partitions whose lag is
unknown are named in the reason."""

from __future__ import annotations

from services.monitor.lag import GroupSample, backlog
from services.monitor.scaling import Consumes, advise

TOPIC = "lepton.predictions.requests"


def _sample(at: float, end: int, committed: int, unread: tuple[int, ...] = ()) -> GroupSample:
    sources = [(TOPIC, p) for p in range(4)]
    return GroupSample(at, dict.fromkeys(sources, end), dict.fromkeys(sources, committed),
                       {s: end - committed for s in sources if s[1] not in unread},
                       tuple((TOPIC, p) for p in unread))


def _serving(capacity: float | None) -> Consumes:
    return Consumes("serving", "g", [TOPIC], None, replicas=1, capacity=capacity)


def test_a_group_that_keeps_up_with_unmeasured_capacity_keeps_its_replicas() -> None:
    # 0.6 records/s arrive and are done by one replica with no backlog: done/s is all we know
    advice = advise(_serving(None), _sample(0.0, 100, 100), _sample(10.0, 103, 103))
    assert advice.recommended == 1
    assert advice.reason.startswith("keeping up (backlog 0, not growing)")


def test_a_growing_backlog_with_unmeasured_capacity_still_scales_out() -> None:
    advice = advise(_serving(None), _sample(0.0, 100, 100), _sample(10.0, 400, 200))
    assert advice.recommended > 1


def test_a_measured_capacity_decides_as_before() -> None:
    advice = advise(_serving(1.0), _sample(0.0, 100, 100), _sample(10.0, 140, 140))
    assert advice.recommended == 4  # 4 records/s at 80 % of 1/s: 5, capped at 4 partitions


def test_partitions_whose_lag_is_unknown_are_named() -> None:
    advice = advise(_serving(100.0), _sample(0.0, 100, 100, unread=(2,)),
                    _sample(10.0, 110, 110, unread=(2,)))
    assert advice.reason.endswith("lag of 1 of 4 partitions unknown (their positions were not "
                                  "read in time)")


def test_a_position_read_past_the_end_snapshot_is_no_lag() -> None:
    assert backlog(end=100, committed=105) == 0  # the group consumed on while positions were read
    assert backlog(end=100, committed=90) == 10
    assert backlog(end=100, committed=-1) == 100  # nothing committed: from the start
