"""One DP-SGD step, five ways, in one run: the µs a step costs for each dataset's shipped model
and expected Poisson batch (spec `dp_minibatch`), against the same step without DP.

Rows: plain (no DP: the baseline); Opacus's hooks (`GradSampleModule` + `DPOptimizer`);
torch's expanded weights (`GradSampleModuleExpandedWeights` + `DPOptimizer`, the trainer's
previous path); Opacus's ghost clipping (`GradSampleModuleFastGradientClipping` +
`DPLossFastGradientClipping`, two backward passes); and the trainer's one-pass clipping
(services/trainer/clipping.py + `dp.private_optimizer`). Every method runs the same batches
from the same start, single-threaded, rounds interleaved; the table keeps each method's
median step.

    .venv/bin/python bench/dp_step_bench.py [--steps 300] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import torch
from opacus.grad_sample import (
    GradSampleModule,
    GradSampleModuleExpandedWeights,
    GradSampleModuleFastGradientClipping,
)
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping

from services.trainer import dp
from services.trainer.clipping import LinearClipper
from shared.datasets import load_spec
from shared.models.features import FeatureTransform
from shared.models.nets import architecture, build_model

Step = Callable[[torch.Tensor, torch.Tensor], None]
METHODS = ("plain (no DP)", "Opacus hooks", "expanded weights", "Opacus ghost clipping",
           "one-pass clipping (trainer)")


def _setup(method: str, net: torch.nn.Module, plan: dp.Plan) -> Step:
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    loss_fn = torch.nn.BCEWithLogitsLoss(reduction="sum")
    opacus = {"noise_multiplier": plan.noise_multiplier, "max_grad_norm": plan.max_grad_norm,
              "expected_batch_size": plan.sample_rate * plan.rows, "loss_reduction": "mean"}
    if method == "plain (no DP)":
        def plain(x: torch.Tensor, y: torch.Tensor) -> None:
            optimizer.zero_grad(set_to_none=True)
            loss_fn(net(x), y).backward()
            optimizer.step()
        return plain
    if method in ("Opacus hooks", "expanded weights"):
        module = GradSampleModule(net, loss_reduction="sum") if method == "Opacus hooks" \
            else GradSampleModuleExpandedWeights(net, loss_reduction="sum")
        wrapped = DPOptimizer(optimizer, **opacus)

        def per_sample(x: torch.Tensor, y: torch.Tensor) -> None:
            wrapped.zero_grad(set_to_none=True)
            loss_fn(module(x), y).backward()
            wrapped.step()
        return per_sample
    if method == "Opacus ghost clipping":
        ghost = GradSampleModuleFastGradientClipping(
            net, max_grad_norm=plan.max_grad_norm, use_ghost_clipping=True, loss_reduction="mean")
        fast = DPOptimizerFastGradientClipping(optimizer, **opacus)
        criterion = DPLossFastGradientClipping(
            ghost, fast, torch.nn.BCEWithLogitsLoss(reduction="mean"), loss_reduction="mean")

        def two_pass(x: torch.Tensor, y: torch.Tensor) -> None:
            fast.zero_grad(set_to_none=True)
            criterion(ghost(x), y).backward()
            fast.step()
        return two_pass
    clipper = LinearClipper(net, plan.max_grad_norm)
    ours = dp.private_optimizer(optimizer, plan, 1, torch.device("cpu"))

    def one_pass(x: torch.Tensor, y: torch.Tensor) -> None:
        ours.zero_grad(set_to_none=True)
        clipper.backward(loss_fn(net(x), y))
        ours.step()
    return one_pass


def run(name: str, steps: int, rounds: int) -> list[str]:
    """The table rows for one dataset."""
    spec = load_spec(name)
    dim = FeatureTransform.from_spec(spec).dim
    batch = spec.model.dp_minibatch or 32
    rows = batch * 4
    plan = dp.Plan.make(rows, batch, 10, 1.0, spec.privacy.delta,
                        spec.model.dp_max_grad_norm or 1.0, 1)
    generator = torch.Generator().manual_seed(0)
    xs = torch.randn(steps, batch, dim, generator=generator)
    ys = (torch.rand(steps, batch, generator=generator) > 0.5).float()
    timings: dict[str, list[float]] = {m: [] for m in METHODS}
    for _ in range(rounds):
        for method in METHODS:
            torch.manual_seed(0)
            net = build_model(architecture(spec.model.kind, dim, spec.model.hidden))
            step = _setup(method, net, plan)
            step(xs[0], ys[0])  # warm-up: first-call allocations
            started = time.perf_counter()
            for i in range(steps):
                step(xs[i], ys[i])
            timings[method].append((time.perf_counter() - started) / steps * 1e6)
    base = statistics.median(timings[METHODS[0]])
    hidden = "–".join(str(h) for h in spec.model.hidden) if spec.model.kind == "mlp" else ""
    model = f"{spec.model.kind} {dim}→{hidden + '→' if hidden else ''}1, batch {batch}"
    out = []
    for method in METHODS:
        mid = statistics.median(timings[method])
        spread = f"{min(timings[method]):,.0f}–{max(timings[method]):,.0f}"
        out.append(f"| {name} ({model}) | {method} | {mid:,.0f} | {spread} | {mid / base:.2f} |")
    return out


def main() -> None:
    """Print the markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")  # Opacus's notes on secure RNG and hooks
    print("| dataset (model, batch) | method | µs/step (median) | range over rounds | × plain |")
    print("|---|---|---:|---|---:|")
    for name in ("breast_cancer", "transactions"):
        for line in run(name, args.steps, args.rounds):
            print(line)


if __name__ == "__main__":
    main()
