"""The non-private engine releases the rounds' weighted average: round t weighs
max(1 − decay, w_t / (w_1 + … + w_t)), w_t = its rows × the rows trained through it (2/(t+1)
for equal rounds); with decay 0 it releases the last round's weights."""

from __future__ import annotations

import numpy as np
import torch

from services.trainer.comm import Comm
from services.trainer.train import Engine
from shared.models.nets import architecture, build_model


def _rounds(decay: float, count: int, sizes: tuple[int, ...] = (16,)
            ) -> tuple[list[list[torch.Tensor]], list[torch.Tensor]]:
    """The weights after each of `count` rounds (of `sizes` rows, cycled), and the released
    weights."""
    torch.manual_seed(0)
    engine = Engine(build_model(architecture("logistic", 3, [])), Comm(), learning_rate=0.1,
                    minibatch=8, epochs=1, seed=0, average_decay=decay)
    rng = np.random.default_rng(1)
    seen = []
    for t in range(count):
        rows = sizes[t % len(sizes)]
        x = rng.normal(size=(rows, 3)).astype(np.float32)
        engine.train_round(x, (x[:, 0] > 0).astype(np.float32), rows)
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


def test_a_short_last_round_weighs_by_its_rows() -> None:
    # 64 rows then 4: w = 64·64 and 4·68, so the tail's share is 272 / 4,368 (≈ 0.06), which
    # the decay's floor raises to 0.1; equal rounds would have given it 2/3
    seen, released = _rounds(0.9, 2, sizes=(64, 4))
    for r, first, second in zip(released, seen[0], seen[1], strict=True):
        torch.testing.assert_close(r, first * 0.9 + second * 0.1)
    seen, released = _rounds(0.5, 2, sizes=(64, 4))
    for r, first, second in zip(released, seen[0], seen[1], strict=True):
        torch.testing.assert_close(r, first * 0.5 + second * 0.5)
    seen, released = _rounds(0.99, 3, sizes=(64, 4, 32))
    w = [64 * 64, 4 * 68, 32 * 100]
    expected = [p.clone() for p in seen[0]]
    for t, weights in ((1, seen[1]), (2, seen[2])):
        share = w[t] / sum(w[:t + 1])
        expected = [a + (p - a) * share for a, p in zip(expected, weights, strict=True)]
    for r, e in zip(released, expected, strict=True):
        torch.testing.assert_close(r, e)


def test_no_decay_releases_the_last_round() -> None:
    seen, released = _rounds(0.0, 5)
    for r, last in zip(released, seen[-1], strict=True):
        assert torch.equal(r, last)
