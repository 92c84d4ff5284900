"""Data-parallel training across workers: non-private rounds as batches arrive, or one DP-SGD
release over the cycle's rows (dp.py).

Every rank runs the same number of optimiser steps (derived from the global row count, so
uneven or empty local batches never hang a collective). A non-private step sums the local loss
gradient, all-reduces the sums together with the row count, and divides by the global count:
the update equals one worker training on the union of the chunks. Non-private rounds also keep
an average of the weights (torch.optim.swa_utils, one update per round), and the cycle releases
that average: the last round alone over-weights the latest batch. Round t enters the average
with the share max(1 − decay, w_t / (w_1 + … + w_t)), where w_t = (rows of round t) × (rows
trained through round t). Equal rounds give 2/(t+1), so weights grow linearly with t early in a
cycle and decay exponentially later; a short round (the tail of a stream) weighs by its rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from services.trainer.comm import Comm
from services.trainer.dp import Plan, fit_private


@dataclass
class RoundStats:
    """What one round of training did."""

    rows: int
    steps: int
    loss: float


class Engine:
    """Optimiser state and the training step for one cycle's model."""

    def __init__(self, model: nn.Module, comm: Comm, *, learning_rate: float, minibatch: int,
                 epochs: int, seed: int, average_decay: float = 0.0) -> None:
        self.model = model
        self.comm = comm
        self.minibatch = minibatch
        self.epochs = epochs
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.params, lr=learning_rate)
        self.rng = np.random.default_rng(seed + 7919 * comm.rank)
        self.module: nn.Module = model
        self.loss = nn.BCEWithLogitsLoss(reduction="sum")
        self.rows = 0
        self.steps = 0
        self.average_decay = average_decay
        self._averaged_weight = 0.0
        self._round_share = 1.0
        self.average = AveragedModel(model, avg_fn=self._average_step,
                                     use_buffers=True) if average_decay > 0 else None

    def _average_step(self, averaged: torch.Tensor, current: torch.Tensor,
                      _averaged_rounds: torch.Tensor | int) -> torch.Tensor:
        return averaged + (current - averaged) * max(1.0 - self.average_decay, self._round_share)

    def train_round(self, x: npt.NDArray[np.float32], y: npt.NDArray[np.float32],
                    global_rows: int) -> RoundStats:
        """Train `epochs` passes over this round's rows (`x`, `y` local; `global_rows` total)."""
        if global_rows == 0:
            return RoundStats(0, 0, 0.0)
        device = self.comm.device
        xs = torch.from_numpy(x).to(device)
        ys = torch.from_numpy(y).to(device)
        steps_per_epoch = math.ceil(global_rows / self.minibatch)
        self.module.train()
        total_loss = 0.0
        for _ in range(self.epochs):
            order = self.rng.permutation(len(x))
            for chunk in np.array_split(order, steps_per_epoch):
                total_loss += self._step(xs, ys, chunk)
        self.rows += global_rows
        self.steps += steps_per_epoch * self.epochs
        if self.average is not None:
            weight = float(global_rows) * self.rows
            self._averaged_weight += weight
            self._round_share = weight / self._averaged_weight
            self.average.update_parameters(self.model)
        return RoundStats(global_rows, steps_per_epoch * self.epochs,
                          total_loss / max(1, global_rows * self.epochs))

    def train_private(self, x: npt.NDArray[np.float32], y: npt.NDArray[np.float32],
                      plan: Plan) -> RoundStats:
        """One DP-SGD release over the cycle's rows (this rank's `x`, `y`); collective."""
        device = self.comm.device
        loss = fit_private(self.model, self.optimizer, torch.from_numpy(x).to(device),
                           torch.from_numpy(y).to(device), plan, self.comm.world)
        self.rows += plan.rows
        self.steps += plan.steps
        return RoundStats(plan.rows, plan.steps, loss)

    def finish(self) -> None:
        """End the cycle: the model takes the rounds' weighted average (if any rounds ran)."""
        if self.average is None or not int(self.average.n_averaged):
            return
        with torch.no_grad():
            for mine, averaged in zip(self.model.state_dict().values(),
                                      self.average.module.state_dict().values(), strict=True):
                mine.copy_(averaged)

    def _step(self, xs: torch.Tensor, ys: torch.Tensor, chunk: npt.NDArray[np.int64]
              ) -> float:
        grads: list[torch.Tensor]
        loss_value = torch.zeros(1, device=self.comm.device)
        if len(chunk):
            index = torch.from_numpy(chunk).to(self.comm.device)
            loss = self.loss(self.module(xs[index]), ys[index])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            loss_value = loss.detach().reshape(1)
            grads = [p.grad if p.grad is not None else torch.zeros_like(p)
                     for p in self.params]
        else:
            grads = [torch.zeros_like(p) for p in self.params]
        count = torch.tensor([float(len(chunk))], device=self.comm.device)
        self.comm.sum_([*grads, count, loss_value])
        denominator = max(count.item(), 1.0)
        for p, g in zip(self.params, grads, strict=True):
            p.grad = g / denominator
        self.optimizer.step()
        return float(loss_value.item())
