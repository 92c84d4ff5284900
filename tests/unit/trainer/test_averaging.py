"""The non-private engine releases the rounds' weighted average: round t weighs
max(1 − decay, 2/(t+1)); with decay 0 it releases the last round's weights."""

from __future__ import annotations

import numpy as np
import torch

from services.trainer.comm import Comm
from services.trainer.train import Engine
from shared.models.nets import architecture, build_model


def _rounds(decay: float, count: int) -> tuple[list[list[torch.Tensor]], list[torch.Tensor]]:
    """The weights after each of `count` rounds, and the released weights."""
    torch.manual_seed(0)
    engine = Engine(build_model(architecture("logistic", 3, [])), Comm(), learning_rate=0.1,
                    minibatch=8, epochs=1, seed=0, average_decay=decay)
    rng = np.random.default_rng(1)
    seen = []
    for _ in range(count):
        x = rng.normal(size=(16, 3)).astype(np.float32)
        engine.train_round(x, (x[:, 0] > 0).astype(np.float32), 16)
        seen.append([p.detach().clone() for p in engine.model.parameters()])
    engine.finish()
    return seen, [p.detach().clone() for p in engine.model.parameters()]


def _expected(seen: list[list[torch.Tensor]], decay: float) -> list[torch.Tensor]:
    average = [p.clone() for p in seen[0]]
    for t, weights in enumerate(seen[1:], start=2):
        w = max(1 - decay, 2 / (t + 1))
        average = [a + (p - a) * w for a, p in zip(average, weights, strict=True)]
    return average


def test_two_rounds_weigh_the_second_twice() -> None:
    seen, released = _rounds(0.9, 2)
    for r, first, second in zip(released, seen[0], seen[1], strict=True):
        torch.testing.assert_close(r, first / 3 + second * 2 / 3)


def test_long_cycles_decay_exponentially() -> None:
    seen, released = _rounds(0.9, 30)
    for r, e in zip(released, _expected(seen, 0.9), strict=True):
        torch.testing.assert_close(r, e)
    assert not torch.allclose(released[0], seen[-1][0])


def test_no_decay_releases_the_last_round() -> None:
    seen, released = _rounds(0.0, 5)
    for r, last in zip(released, seen[-1], strict=True):
        assert torch.equal(r, last)
