"""DP-SGD pieces from Opacus: per-sample gradients (GradSampleModule), clipping, Gaussian noise
hardened against floating-point attacks, and the RDP accountant whose history is kept in the
model card so ε composes across incremental versions.

Secure RNG: Opacus's `secure_mode` needs torchcsprng for its generator; when that is not
installed the noise comes from a torch generator seeded from the OS CSPRNG each cycle, and
the card says `secure_rng: false`.
"""

from __future__ import annotations

import importlib.util
import secrets
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from opacus import GradSampleModule
from opacus.accountants import RDPAccountant
from opacus.optimizers.optimizer import _generate_noise
from torch import nn

History = list[tuple[float, float, int]]


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


def merge_history(*histories: Iterable[Sequence[float]]) -> History:
    """Combine accountant histories: steps with the same (σ, q) add up (RDP composes additively,
    so order does not matter)."""
    steps: dict[tuple[float, float], int] = {}
    for history in histories:
        for sigma, rate, count in history:
            key = (float(sigma), float(rate))
            steps[key] = steps.get(key, 0) + int(count)
    return [(s, q, n) for (s, q), n in sorted(steps.items())]


def epsilon(history: History, delta: float) -> float:
    """ε at `delta` of everything in `history` (0 for an empty history)."""
    if not history:
        return 0.0
    accountant = RDPAccountant()
    accountant.history = list(history)
    return float(accountant.get_epsilon(delta=delta))


@dataclass
class DpSgd:
    """Clip per-sample gradients to `max_grad_norm`, add N(0, (σ·C)²) once per global step."""

    noise_multiplier: float
    max_grad_norm: float
    device: torch.device
    history: History = field(default_factory=list)
    _generator: torch.Generator | None = None

    def wrap(self, model: nn.Module) -> GradSampleModule:
        """A module that records per-sample gradients of a summed loss."""
        self._generator = _generator(self.device)
        return GradSampleModule(model, loss_reduction="sum")

    @staticmethod
    def backward(loss: torch.Tensor) -> None:
        """Backpropagate, recording per-sample gradients (the hook warning about the first
        layer's input needing no gradient is expected and silenced)."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            loss.backward()  # type: ignore[no-untyped-call]

    def clipped_sum(self, params: Sequence[nn.Parameter]) -> list[torch.Tensor]:
        """Σ over samples of each per-sample gradient clipped to norm C; clears grad_sample."""
        samples = [p.grad_sample for p in params]  # type: ignore[attr-defined]
        norms = torch.stack([g.reshape(g.shape[0], -1).norm(2, dim=1) for g in samples],
                            dim=1).norm(2, dim=1)
        factor = (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
        sums = [torch.einsum("i,i...->...", factor, g) for g in samples]
        for p in params:
            p.grad_sample = None  # type: ignore[attr-defined]
        return sums

    def noise_(self, sums: list[torch.Tensor]) -> None:
        """Add calibrated Gaussian noise to summed gradients (call on exactly one rank)."""
        std = self.noise_multiplier * self.max_grad_norm
        for tensor in sums:
            tensor.add_(_generate_noise(std, tensor, self._generator, secure_mode=True))

    def account(self, sample_rate: float, steps: int) -> None:
        """Record `steps` noisy steps at sampling rate `sample_rate`."""
        self.history = merge_history(self.history,
                                     [(self.noise_multiplier, sample_rate, steps)])
