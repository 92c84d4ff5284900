"""DP-SGD: per-sample clipping in one backward pass (services/trainer/clipping.py: the clipped
sum of per-sample gradients without materialising them), then Opacus's public API for the
rest: Gaussian noise and scaling (DPOptimizerFastGradientClipping, the optimizer of Opacus's
own ghost clipping; its Distributed variant across ranks adds the noise on rank 0 only, so
each step has exactly one noise draw), Poisson sampling (UniformWithReplacementSampler on each
rank's rows: every row of the release's data is in a step's batch independently with
probability q), and RDP accounting.

One release = one DP-SGD run over the cycle's rows. Its noise multiplier is calibrated to the
spec's `epsilon_per_release` at `delta` for the subject, not the event: with at most k = 2^c
events per subject the user-level curve is RDP group privacy (Mironov 2017, Prop. 2: ε'(α) =
3^c·ε(2^c·α), for α ≥ 2), computed at the ledger's orders (shared/accounting.py).

A release may also publish a reference (shared/models/reference.py: DP histograms in the card);
its RDP curve is composed with DP-SGD's, and σ is calibrated so that the whole release stays
within `epsilon_per_release`.

Secure RNG: Opacus's `secure_mode` needs torchcsprng; without it the noise and the sampling
come from torch generators seeded from the OS CSPRNG each release, and the card says
`secure_rng: false`.
"""

from __future__ import annotations

import importlib.util
import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from opacus.accountants.analysis.rdp import compute_rdp
from opacus.optimizers import (
    DistributedDPOptimizerFastGradientClipping,
    DPOptimizerFastGradientClipping,
)
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from torch import nn

from services.trainer.clipping import LinearClipper
from shared.accounting import ACCOUNTANT, ORDERS, compose, epsilon_from_rdp, group_exponent

MAX_SIGMA = 500.0


def secure_rng_available() -> bool:
    """True when torchcsprng (Opacus's secure generator) is installed."""
    return importlib.util.find_spec("torchcsprng") is not None


def _generator(device: torch.device) -> torch.Generator:
    if secure_rng_available():
        import torchcsprng

        generator: torch.Generator = torchcsprng.create_random_device_generator("/dev/urandom")
        return generator
    generator = torch.Generator(device=device)
    generator.manual_seed(secrets.randbits(63))
    return generator


def user_curve(sigma: float, sample_rate: float, steps: int, events_per_subject: int
               ) -> list[float]:
    """The per-subject RDP curve at the ledger's orders (inf where group privacy gives none)."""
    c = group_exponent(events_per_subject)
    if c == 0:
        return [float(v) for v in compute_rdp(q=sample_rate, noise_multiplier=sigma,
                                              steps=steps, orders=list(ORDERS))]
    scale = 2 ** c
    usable = [a for a in ORDERS if a >= 2]
    event = compute_rdp(q=sample_rate, noise_multiplier=sigma, steps=steps,
                        orders=[scale * a for a in usable])
    by_order = {a: float(3 ** c * v) for a, v in zip(usable, event, strict=True)}
    return [by_order.get(a, math.inf) for a in ORDERS]


def calibrate(epsilon: float, delta: float, sample_rate: float, steps: int,
              events_per_subject: int, extra: Sequence[float] = ()) -> float:
    """The smallest noise multiplier (to 0.1 %) whose user-level ε, composed with the `extra`
    RDP curve (the release's other mechanisms), is at most `epsilon`."""
    def total(sigma: float) -> float:
        curve = user_curve(sigma, sample_rate, steps, events_per_subject)
        return epsilon_from_rdp(compose(curve, extra) if extra else curve, delta)

    if extra and epsilon_from_rdp(extra, delta) >= epsilon:
        raise ValueError("the reference's ε leaves no budget for DP-SGD")
    low, high = 0.0, 1.0
    while total(high) > epsilon:
        low, high = high, high * 2
        if high > MAX_SIGMA:
            raise ValueError("the privacy budget is too small for this many steps")
    while high - low > 1e-3 * high:
        mid = (low + high) / 2
        if total(mid) > epsilon:
            low = mid
        else:
            high = mid
    return high


@dataclass(frozen=True)
class Plan:
    """One release's DP-SGD settings, identical on every rank."""

    rows: int
    sample_rate: float
    steps: int
    noise_multiplier: float
    max_grad_norm: float
    delta: float
    events_per_subject: int
    target_epsilon: float
    extra_rdp: tuple[float, ...] = ()
    extra_epsilon: float = 0.0

    @classmethod
    def make(cls, rows: int, minibatch: int, epochs: int, epsilon: float, delta: float,
             max_grad_norm: float, events_per_subject: int,
             extra: tuple[Sequence[float], float] | None = None) -> Plan:
        """Poisson rate = minibatch/rows, `epochs` passes in expectation, σ calibrated so the
        release (with `extra`: another mechanism's RDP curve and its pure ε) meets `epsilon`."""
        sample_rate = min(1.0, minibatch / rows)
        steps = max(1, round(epochs / sample_rate))
        curve = tuple(extra[0]) if extra else ()
        sigma = calibrate(epsilon, delta, sample_rate, steps, events_per_subject, curve)
        return cls(rows, sample_rate, steps, sigma, max_grad_norm, delta, events_per_subject,
                   epsilon, curve, extra[1] if extra else 0.0)

    def sgd_curve(self) -> list[float]:
        """DP-SGD's own per-subject RDP curve."""
        return user_curve(self.noise_multiplier, self.sample_rate, self.steps,
                          self.events_per_subject)

    def curve(self) -> list[float]:
        """The release's per-subject RDP curve (DP-SGD composed with the reference's)."""
        sgd = self.sgd_curve()
        return compose(sgd, self.extra_rdp) if self.extra_rdp else sgd

    def epsilon(self) -> float:
        """The release's per-subject ε at δ."""
        return epsilon_from_rdp(self.curve(), self.delta)

    def describe(self) -> dict[str, Any]:
        """The card's `privacy` facts about this release's DP-SGD."""
        c = group_exponent(self.events_per_subject)
        return {
            "mode": "model", "mechanism": "dp-sgd",
            "library": "opacus (noise, Poisson sampling, accountant)",
            "clipping": "per sample, in one backward pass (book-keeping ghost clipping)",
            "epsilon": self.epsilon(), "delta": self.delta, "target_epsilon":
                self.target_epsilon, "accountant": f"{ACCOUNTANT} (Opacus compute_rdp, "
                "Balle et al. 2020 conversion)", "orders": list(ORDERS),
            "sampling": "poisson", "sample_rate": self.sample_rate, "steps": self.steps,
            "rows": self.rows, "noise_multiplier": self.noise_multiplier,
            "max_grad_norm": self.max_grad_norm,
            "max_events_per_subject": self.events_per_subject,
            "group_privacy": "none needed (one event per subject)" if c == 0 else
                f"RDP group privacy for up to {2 ** c} events: 3^{c}·ε(2^{c}·α) "
                "(Mironov 2017, Prop. 2)",
            "secure_rng": secure_rng_available(),
            "dp_sgd_epsilon": epsilon_from_rdp(self.sgd_curve(), self.delta),
            "reference_epsilon": self.extra_epsilon,
            "noise": "rank 0 only (one draw per step)",
            "scaling": "spec public bounds (no data statistics)",
        }


def _take_grads(self: Any) -> None:
    """Opacus's `accumulate` without its deep copy of `.grad`, which the clipper makes anew
    each step (the copy cost ≈ 150 µs, a fifth of a DP step on the trainer's small nets)."""
    for p in self.params:
        p.summed_grad = p.grad if p.summed_grad is None else p.summed_grad + p.grad


class _Optimizer(DPOptimizerFastGradientClipping):  # type: ignore[misc]
    accumulate = _take_grads


class _DistributedOptimizer(DistributedDPOptimizerFastGradientClipping):  # type: ignore[misc]
    accumulate = _take_grads


def private_optimizer(optimizer: torch.optim.Optimizer, plan: Plan, world: int,
                      device: torch.device) -> Any:
    """Opacus's optimizer that adds the plan's noise to `.grad` (the clipped sum) and scales;
    across ranks the noise is drawn on rank 0 only."""
    wrapper = _DistributedOptimizer if world > 1 else _Optimizer
    # per rank: the Distributed optimizer divides by it and then again by the world size, so
    # the update is (clipped sum + one noise draw) / the release's expected batch, as on one
    # worker
    return wrapper(optimizer, noise_multiplier=plan.noise_multiplier,
                   max_grad_norm=plan.max_grad_norm,
                   expected_batch_size=plan.sample_rate * plan.rows / world,
                   loss_reduction="mean", generator=_generator(device),
                   secure_mode=secure_rng_available())


def fit_private(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                y: torch.Tensor, plan: Plan, world: int) -> float:
    """Run the plan's DP-SGD steps on this rank's rows (`x`, `y`); every rank calls it with
    the same plan. Returns the mean training loss of the sampled rows."""
    device = x.device
    clipper = LinearClipper(model, plan.max_grad_norm)
    dp_optimizer = private_optimizer(optimizer, plan, world, device)
    loss_fn = nn.BCEWithLogitsLoss(reduction="sum")
    sampling = _generator(torch.device("cpu"))
    batches: Any = UniformWithReplacementSampler(
        num_samples=len(x), sample_rate=plan.sample_rate, generator=sampling,
        steps=plan.steps) if len(x) else [[] for _ in range(plan.steps)]
    total, seen = torch.zeros((), device=device), 0  # summed on the device: no sync per step
    params = [p for p in model.parameters() if p.requires_grad]
    average = [torch.zeros_like(p) for p in params]
    start = plan.steps // 2
    model.train()
    try:
        for step, indices in enumerate(batches):
            dp_optimizer.zero_grad(set_to_none=True)
            if indices:
                index = torch.tensor(indices, dtype=torch.long, device=device)
                loss = loss_fn(model(x[index]), y[index])
                clipper.backward(loss)
                total += loss.detach()
                seen += len(indices)
            else:  # an empty Poisson batch: a zero sum, and the step still adds its noise
                for p in params:
                    p.grad = torch.zeros_like(p)
            dp_optimizer.step()
            if step >= start:
                with torch.no_grad():
                    for mean, p in zip(average, params, strict=True):
                        mean.add_(p.detach(), alpha=1 / (plan.steps - start))
    finally:
        clipper.close()
    with torch.no_grad():  # the average of the later iterates: post-processing, no privacy cost
        for mean, p in zip(average, params, strict=True):
            p.copy_(mean)
    return float(total) / max(seen, 1)
