"""Data-parallel training over two gloo ranks (real torch.distributed, two processes): with one
full-batch step per epoch it equals one worker on the union of the data, also when the
ranks' batches are uneven or one is empty; under DP-SGD (Opacus's
DistributedDPOptimizerFastGradientClipping, noise on rank 0 only) both ranks run the same
Poisson-sampled plan and stay in lockstep, also when one rank holds no rows."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from services.trainer.comm import Comm
from services.trainer.dp import Plan
from services.trainer.train import Engine
from services.trainer.worker import free_port
from shared.models.nets import architecture, build_model

ROUNDS = ((slice(0, 30), slice(30, 40)), (slice(40, 50), slice(50, 50)))


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(50, 5)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5, 0.0, 1.5]) > 0).astype(np.float32)
    return x, y


def _engine(comm: Comm) -> Engine:
    torch.manual_seed(0)
    net = build_model(architecture("mlp", 5, [4]))
    return Engine(net, comm, learning_rate=0.1, minibatch=1000, epochs=3, seed=0)


def _rank(rank: int, port: int, out: str) -> None:
    comm = Comm.init(rank, 2, "127.0.0.1", port, torch.device("cpu"), 60)
    try:
        x, y = _data()
        engine = _engine(comm)
        for parts in ROUNDS:
            local = parts[rank]
            total = int(comm.sum([local.stop - local.start])[0])
            engine.train_round(x[local], y[local], total)
        save_file(engine.model.state_dict(), f"{out}/plain-{rank}.safetensors")
        plan = Plan.make(50, 10, 3, 2.0, 1e-5, 1.0, 1)
        for name, local in (("dp", ROUNDS[0][rank]), ("dp-empty", ROUNDS[1][1 - rank])):
            engine = _engine(comm)
            stats = engine.train_private(x[local], y[local], plan)
            save_file(engine.model.state_dict(), f"{out}/{name}-{rank}.safetensors")
            assert stats.steps == plan.steps
    finally:
        comm.close()


def test_two_gloo_ranks_equal_one_worker(tmp_path: Path) -> None:
    port = free_port()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_rank, args=(r, port, str(tmp_path))) for r in range(2)]
    for proc in procs:
        proc.start()
    try:
        for proc in procs:
            proc.join(120)
            assert proc.exitcode == 0
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
    x, y = _data()
    single = _engine(Comm())
    for parts in ROUNDS:
        rows = np.r_[parts[0], parts[1]]
        single.train_round(x[rows], y[rows], len(rows))
    expected = single.model.state_dict()
    for rank in range(2):
        got = load_file(str(tmp_path / f"plain-{rank}.safetensors"))
        for key, value in expected.items():
            torch.testing.assert_close(got[key], value, atol=1e-5, rtol=1e-5)
    initial = _engine(Comm()).model.state_dict()
    assert not torch.equal(initial["layers.0.weight"], expected["layers.0.weight"])
    for name in ("dp", "dp-empty"):
        dp0 = load_file(str(tmp_path / f"{name}-0.safetensors"))
        dp1 = load_file(str(tmp_path / f"{name}-1.safetensors"))
        for key in dp0:
            assert torch.equal(dp0[key], dp1[key])
            assert bool(torch.isfinite(dp0[key]).all())
            assert not torch.equal(dp0[key], initial[key])


WIDE = 4000  # coordinates: the update's spread is measured to about 1 %


class _Linear(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(WIDE, 1, bias=False)
        torch.nn.init.zeros_(self.layer.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x).squeeze(-1)


def _noise_rank(rank: int, world: int, port: int, rows: tuple[int, ...], out: str) -> None:
    from services.trainer.dp import fit_private

    comm = Comm.init(rank, world, "127.0.0.1", port, torch.device("cpu"), 60) \
        if world > 1 else Comm()
    try:
        mine = rows[rank]
        x, y = torch.zeros(mine, WIDE), torch.ones(mine)  # every gradient is exactly zero
        plan = Plan.make(sum(rows), sum(rows), 1, 2.0, 1e-5, 1.0, 1)  # q = 1, one step
        model = _Linear()
        fit_private(model, torch.optim.SGD(model.parameters(), lr=1.0), x, y, plan, world)
        save_file({"w": model.layer.weight.detach(),
                   "sigma": torch.tensor([plan.noise_multiplier, plan.sample_rate])},
                  f"{out}/noise-{world}-{rank}.safetensors")
    finally:
        comm.close()


def test_dp_sgd_adds_one_noise_draw_per_step_across_ranks(tmp_path: Path) -> None:
    """With zero gradients one DP-SGD step moves the weights by the noise alone: one Gaussian
    draw of std σ·C divided by the release's expected batch, on one worker and on two ranks
    alike (a draw per rank would give √2 times that, a per-rank batch counted twice half)."""
    rows = (30, 20)
    port = free_port()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_noise_rank, args=(r, 2, port, rows, str(tmp_path)))
             for r in range(2)]
    procs.append(ctx.Process(target=_noise_rank, args=(0, 1, 0, (sum(rows),), str(tmp_path))))
    for proc in procs:
        proc.start()
    try:
        for proc in procs:
            proc.join(120)
            assert proc.exitcode == 0
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
    two = [load_file(str(tmp_path / f"noise-2-{r}.safetensors")) for r in range(2)]
    one = load_file(str(tmp_path / "noise-1-0.safetensors"))
    assert torch.equal(two[0]["w"], two[1]["w"])  # the ranks applied the same update
    sigma, rate = (float(v) for v in one["sigma"])
    expected = sigma * 1.0 / (rate * sum(rows))  # σ·C / expected batch, lr 1
    for weights in (one["w"], two[0]["w"]):
        spread = float(weights.std())
        assert abs(spread / expected - 1) < 0.08, (spread, expected)
        assert abs(float(weights.mean())) < 4 * expected / WIDE ** 0.5
