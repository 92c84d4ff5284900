"""Data-parallel training of one round's batch across workers, with optional DP-SGD.

Every rank runs the same number of optimiser steps (derived from the global row count, so
uneven or empty local batches never hang a collective). Each step sums the local loss
gradient (of per-sample clipped gradients under DP), all-reduces the sums together with the
row count, and divides by the global count: the update equals one worker training on the
union of the chunks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from services.trainer.comm import Comm
from services.trainer.dp import DpSgd


@dataclass
class RoundStats:
    """What one round of training did."""

    rows: int
    steps: int
    loss: float


class Engine:
    """Optimiser state and the training step for one cycle's model."""

    def __init__(self, model: nn.Module, comm: Comm, *, learning_rate: float, minibatch: int,
                 epochs: int, seed: int, dp: DpSgd | None = None) -> None:
        self.model = model
        self.comm = comm
        self.minibatch = minibatch
        self.epochs = epochs
        self.dp = dp
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.params, lr=learning_rate)
        self.rng = np.random.default_rng(seed + 7919 * comm.rank)
        self.module: nn.Module = dp.wrap(model) if dp is not None else model
        self.loss = nn.BCEWithLogitsLoss(reduction="sum")
        self.rows = 0
        self.steps = 0

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
                total_loss += self._step(xs, ys, chunk, global_rows / steps_per_epoch)
        if self.dp is not None:
            self.dp.account(1.0 / steps_per_epoch, steps_per_epoch * self.epochs)
        self.rows += global_rows
        self.steps += steps_per_epoch * self.epochs
        return RoundStats(global_rows, steps_per_epoch * self.epochs,
                          total_loss / max(1, global_rows * self.epochs))

    def _step(self, xs: torch.Tensor, ys: torch.Tensor, chunk: npt.NDArray[np.int64],
              expected: float) -> float:
        grads: list[torch.Tensor]
        loss_value = torch.zeros(1, device=self.comm.device)
        if len(chunk):
            index = torch.from_numpy(chunk).to(self.comm.device)
            loss = self.loss(self.module(xs[index]), ys[index])
            self.optimizer.zero_grad(set_to_none=True)
            if self.dp is not None:
                self.dp.backward(loss)
            else:
                loss.backward()
            loss_value = loss.detach().reshape(1)
            if self.dp is not None:
                grads = self.dp.clipped_sum(self.params)
            else:
                grads = [p.grad if p.grad is not None else torch.zeros_like(p)
                         for p in self.params]
        else:
            grads = [torch.zeros_like(p) for p in self.params]
        if self.dp is not None and self.comm.leader:
            self.dp.noise_(grads)
        count = torch.tensor([float(len(chunk))], device=self.comm.device)
        self.comm.sum_([*grads, count, loss_value])
        denominator = expected if self.dp is not None else max(count.item(), 1.0)
        for p, g in zip(self.params, grads, strict=True):
            p.grad = g / denominator
        self.optimizer.step()
        return float(loss_value.item())
