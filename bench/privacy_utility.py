"""Privacy against utility, through the trainer's own code: held-out F1 and ROC-AUC against
ε ∈ {0.5, 1, 3, 8, ∞} for breast_cancer and transactions.

Rows: `model` mode (DP-SGD with Poisson sampling and calibrated noise, services/trainer/dp.py),
`local` mode (governance's OpenDP release of every field, then non-private training on the
noised rows), non-private (the trainer's Engine), and scikit-learn's LogisticRegression on the
same split and the same public-bound features. ε = ∞ is the non-private row. Also the training
throughput of DP-SGD against its non-private twin: the same loop over the same Poisson batches
without per-sample gradients, clipping or noise.

    .venv/bin/python bench/privacy_utility.py [--seeds 3] [--small-seeds 30] [--transactions 20000]
        [--out DIR]

Writes `privacy_utility.json`, a markdown table on stdout and `privacy_utility.png`.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, roc_auc_score

from lepton.generators import breast_cancer, transactions
from services.governance.privacy import DatasetPrivacy
from services.trainer import dp
from services.trainer.comm import Comm
from services.trainer.evaluate import tune_threshold
from services.trainer.split import is_validation
from services.trainer.train import Engine
from shared.datasets import DatasetSpec, load_spec
from shared.models.features import FeatureTransform
from shared.models.nets import architecture, build_model, predict_proba

EPSILONS = (0.5, 1.0, 3.0, 8.0)
Rows = list[dict[str, Any]]


def _data(name: str, count: int) -> tuple[DatasetSpec, Rows, Rows]:
    spec = load_spec(name)
    # transactions: one transaction per customer, so a subject's bound k = 1 keeps every row
    events = list(breast_cancer(None, seed=0)) if name == "breast_cancer" else list(
        transactions(count, seed=3, customers=count * 4))
    train = [dict(e.payload) for e in events if not is_validation(e.event_id, 20)]
    held = [dict(e.payload) for e in events if is_validation(e.event_id, 20)]
    return spec, train, held


def _score(spec: DatasetSpec, probs: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    chosen = spec.model.decision_threshold
    threshold = tune_threshold(probs, labels) if chosen == "tune" else float(chosen)
    return (float(f1_score(labels, probs >= threshold)), float(roc_auc_score(labels, probs)))


def _net(spec: DatasetSpec, dim: int) -> torch.nn.Module:
    return build_model(architecture(spec.model.kind, dim, spec.model.hidden))


def _plain(spec: DatasetSpec, x: np.ndarray, y: np.ndarray, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    engine = Engine(_net(spec, x.shape[1]), Comm(), learning_rate=spec.model.learning_rate,
                    minibatch=32, epochs=spec.model.epochs_per_batch, seed=seed,
                    average_decay=spec.model.average_decay)
    for start in range(0, len(x), 512):
        engine.train_round(x[start:start + 512], y[start:start + 512],
                           len(x[start:start + 512]))
    engine.finish()
    return engine.model


def _plan(spec: DatasetSpec, rows: int, eps: float) -> dp.Plan:
    model = spec.model  # the spec's DP-SGD settings, with the trainer's defaults behind them
    return dp.Plan.make(rows, model.dp_minibatch or 32, model.dp_epochs or model.epochs_per_batch,
                        eps, spec.privacy.delta, model.dp_max_grad_norm or 1.0,
                        spec.privacy.max_events_per_subject)


def _same_loop_rate(spec: DatasetSpec, x: np.ndarray, y: np.ndarray, plan: dp.Plan) -> float:
    """Samples/s of the DP-SGD loop's non-private twin: the same Poisson batches, model and
    Adam steps, without per-sample gradients, clipping or noise (the baseline for the
    slowdown)."""
    net = _net(spec, x.shape[1])
    optimizer = torch.optim.Adam(net.parameters(), lr=spec.model.dp_learning_rate or 0.05)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    sampled = 0
    started = time.perf_counter()
    for indices in UniformWithReplacementSampler(num_samples=len(x), sample_rate=plan.sample_rate,
                                                 steps=plan.steps):
        index = torch.tensor(indices, dtype=torch.long)
        optimizer.zero_grad(set_to_none=True)
        loss_fn(net(xs[index]), ys[index]).backward()
        optimizer.step()
        sampled += len(indices)
    return sampled / (time.perf_counter() - started)


def _private(spec: DatasetSpec, x: np.ndarray, y: np.ndarray, eps: float, seed: int
             ) -> tuple[torch.nn.Module, float, float]:
    torch.manual_seed(seed)
    net = _net(spec, x.shape[1])
    lr = spec.model.dp_learning_rate or spec.model.learning_rate
    plan = _plan(spec, len(x), eps)
    started = time.perf_counter()
    dp.fit_private(net, torch.optim.Adam(net.parameters(), lr=lr), torch.from_numpy(x),
                   torch.from_numpy(y), plan, world=1)
    rate = plan.rows * plan.steps * plan.sample_rate / (time.perf_counter() - started)
    return net, rate, plan.epsilon()


def _local(spec: DatasetSpec, train: Rows, eps: float) -> Rows:
    local = spec.model_copy(update={"privacy": spec.privacy.model_copy(
        update={"mode": "local", "epsilon_per_event": eps})})
    return [p for p, _ in DatasetPrivacy(local).release(train)]


def run(name: str, seeds: int, count: int) -> dict[str, Any]:
    """Every row of the table for one dataset."""
    spec, train, held = _data(name, count)
    transform = FeatureTransform.from_spec(spec)
    x, y = transform.transform(train), transform.labels(train)
    xv, yv = torch.from_numpy(transform.transform(held)), transform.labels(held)
    out: dict[str, Any] = {"dataset": name, "train_rows": len(train), "held_out": len(held),
                           "rows": {}}

    def record(row: str, eps: float | None, scores: list[tuple[float, float]]) -> None:
        f1s, aucs = zip(*scores, strict=True)
        out["rows"].setdefault(row, {})["inf" if eps is None else str(eps)] = {
            "f1": float(np.mean(f1s)), "f1_min": float(np.min(f1s)),
            "roc_auc": float(np.mean(aucs))}

    sk = LogisticRegression(max_iter=5000).fit(x, y)
    record("scikit-learn LR", None, [_score(spec, sk.predict_proba(xv.numpy())[:, 1], yv)])
    plain_rates, dp_rates = [], []
    scores = []
    for seed in range(seeds):
        net = _plain(spec, x, y, seed)
        torch.manual_seed(seed)
        plain_rates.append(_same_loop_rate(spec, x, y, _plan(spec, len(x), 1.0)))
        scores.append(_score(spec, predict_proba(net.eval(), xv).numpy(), yv))
    record("non-private (trainer)", None, scores)
    for eps in EPSILONS:
        private, local = [], []
        for seed in range(seeds):
            net, rate, spent = _private(spec, x, y, eps, seed)
            assert spent <= eps
            dp_rates.append(rate)
            private.append(_score(spec, predict_proba(net.eval(), xv).numpy(), yv))
            noised = _local(spec, train, eps)
            lx, ly = transform.transform(noised), transform.labels(noised)
            keep = ~np.isnan(ly)
            lnet = _plain(spec, lx[keep], ly[keep], seed)
            local.append(_score(spec, predict_proba(lnet.eval(), xv).numpy(), yv))
        record("model mode (DP-SGD)", eps, private)
        record("local mode", eps, local)
    out["samples_per_s"] = {"non_private": float(np.median(plain_rates)),
                            "dp_sgd": float(np.median(dp_rates))}
    out["dp_slowdown"] = out["samples_per_s"]["non_private"] / out["samples_per_s"]["dp_sgd"]
    return out


def table(results: list[dict[str, Any]]) -> str:
    """Markdown: one row per dataset and method, F1 / AUC per ε."""
    columns = [*(str(e) for e in EPSILONS), "inf"]
    lines = ["| dataset | method | " + " | ".join(f"ε={c}" for c in columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    for result in results:
        for row, cells in result["rows"].items():
            shown = [f"{cells[c]['f1']:.3f} / {cells[c]['roc_auc']:.3f}" if c in cells else ""
                     for c in columns]
            lines.append(f"| {result['dataset']} | {row} | " + " | ".join(shown) + " |")
    for result in results:
        rates = result["samples_per_s"]
        lines.append(f"\n{result['dataset']}: non-private {rates['non_private']:,.0f} "
                     f"samples/s, DP-SGD {rates['dp_sgd']:,.0f} samples/s "
                     f"(slowdown {result['dp_slowdown']:.2f}x)")
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], path: Path) -> bool:
    """F1 against ε per dataset and method (False when matplotlib is not installed)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4))
    for ax, result in zip(np.atleast_1d(axes), results, strict=True):
        for row in ("model mode (DP-SGD)", "local mode"):
            cells = result["rows"][row]
            ax.plot(EPSILONS, [cells[str(e)]["f1"] for e in EPSILONS], marker="o", label=row)
        for row, style in (("non-private (trainer)", "--"), ("scikit-learn LR", ":")):
            ax.axhline(result["rows"][row]["inf"]["f1"], linestyle=style, color="grey",
                       label=f"{row} (ε=∞)")
        ax.set_xscale("log")
        ax.set_xlabel("ε per release (model) / per event (local)")
        ax.set_ylabel("held-out F1")
        ax.set_title(result["dataset"])
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main() -> None:
    """Run the benchmark and write its results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--small-seeds", type=int, default=30,
                        help="seeds for breast_cancer (114 held-out rows: one patient moves F1 "
                        "by about 0.012, so a few seeds cannot resolve 0.01)")
    parser.add_argument("--transactions", type=int, default=20_000)
    parser.add_argument("--out", type=Path, default=Path("bench"))
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    results = [run("breast_cancer", args.small_seeds, 0),
               run("transactions", args.seeds, args.transactions)]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "privacy_utility.json").write_text(json.dumps(results, indent=2))
    print(table(results))
    if plot(results, args.out / "privacy_utility.png"):
        print(f"\nplot: {args.out / 'privacy_utility.png'}")


if __name__ == "__main__":
    main()
