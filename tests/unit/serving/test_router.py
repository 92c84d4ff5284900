"""Rollout state transitions and routing: promote/rollback history, canary share, shadow,
pinned versions, sticky canary by request id."""

from __future__ import annotations

import pytest

from services.serving.errors import NotReady
from services.serving.router import Mode, ModelHost, PinMiss, Rollout, Route, canary_draw
from tests.unit.serving.models import loaded


def test_promote_keeps_previous_and_rollback_walks_history() -> None:
    v1, v2, v3 = loaded(1), loaded(2), loaded(3)
    state = Rollout(live=v1).promote(v2).promote(v3)
    assert (state.live, state.previous, state.history) == (v3, v2, (1, 2))
    assert state.promote(v3) is state
    back = state.rolled_back(v2)
    assert (back.live.version, back.previous, back.history) == (2, None, (1,))
    assert back.rollback_target() == 1
    assert back.rolled_back(v1).rollback_target() is None


def test_candidate_modes() -> None:
    v1, v2 = loaded(1), loaded(2)
    canary = Rollout(live=v1).with_candidate(v2, Mode.CANARY, 0.3)
    assert (canary.candidate, canary.share) == (v2, 0.3)
    shadow = canary.with_candidate(v2, Mode.SHADOW, 0.3)
    assert shadow.share == 0.0
    assert shadow.without_candidate().candidate is None
    assert canary.promote(v2).candidate is None


def test_routing_canary_share_over_ten_thousand_requests() -> None:
    host = ModelHost("fraud")
    host.rollout = Rollout(live=loaded(1)).with_candidate(loaded(2), Mode.CANARY, 0.2)
    routes = [host.choose(f"req-{i}", None)[1] for i in range(10_000)]
    share = routes.count(Route.CANARY) / len(routes)
    assert abs(share - 0.2) < 0.02
    assert [host.choose("req-7", None)[1] for _ in range(5)] == [routes[7]] * 5


def test_shadow_pinned_and_not_ready() -> None:
    host = ModelHost("fraud", pinned_cache=1)
    with pytest.raises(NotReady):
        host.choose("r", None)
    v1, v2 = loaded(1), loaded(2)
    host.rollout = Rollout(live=v1).with_candidate(v2, Mode.SHADOW, 0.0)
    assert host.choose("r", None) == (v1, Route.LIVE, v2)
    assert host.choose("r", 2) == (v2, Route.PINNED, None)
    with pytest.raises(PinMiss):
        host.choose("r", 5)
    host.add_pinned(loaded(5))
    assert host.choose("r", 5)[0].version == 5
    host.add_pinned(loaded(6))
    with pytest.raises(PinMiss):
        host.choose("r", 5)
    assert sorted(m.version for m in host.loaded()) == [1, 2, 6]


def test_canary_draw_is_uniform_and_stable() -> None:
    draws = [canary_draw(f"id-{i}") for i in range(4000)]
    assert all(0.0 <= d < 1.0 for d in draws)
    assert abs(sum(draws) / len(draws) - 0.5) < 0.03
    assert canary_draw("same") == canary_draw("same")
