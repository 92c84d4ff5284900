"""Compressed models for serving: a transactions MLP (hidden 32-16, trained quickly) with its
int8 and fp16 variants written by the trainer's compression step; then, in the same run:

- sizes and held-out F1 / ROC-AUC of each variant (the card's numbers);
- serving throughput of the same version with LEPTON_SERVING_VARIANT=full and =int8 (two
  server processes, measured round-robin): PredictBatch ×32 at concurrency 1 and 8, rows/s,
  p50/p99, server CPU µs per row;
- the forward pass alone at 32-row batches (µs per row): the NumPy float32 path serving uses
  for full models, the NumPy int8 path, torch float32 and torch's dynamic int8 kernels, for
  this MLP and for a wide one (512-512) where int8 kernels can pay off.

Run `python bench/compression_bench.py [--seconds 2 --rounds 2]`; prints markdown. Uses the
serving benchmark's platform (its own embedded broker unless LEPTON_KAFKA_BOOTSTRAP is set).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from serving_bench import MODEL, Platform, Point, _load, _measure  # noqa: E402


def _release(settings: Any) -> Any:
    import numpy as np
    import torch

    from services.trainer.compress import compress_release
    from services.trainer.evaluate import quality, tune_threshold
    from shared.datasets import load_spec
    from shared.models.nets import build_model
    from shared.models.registry import ModelCard, Registry
    from tests.unit.trainer.trained import trained_mlp

    arch, state, transform, _, held = trained_mlp()
    spec = load_spec("transactions")
    net = build_model(arch)
    net.load_state_dict(state)
    x = transform.transform(held)
    labels = transform.labels(held).astype(np.float64)
    with torch.inference_mode():
        probs = torch.sigmoid(net.eval()(torch.from_numpy(x))).numpy().astype(np.float64)
    threshold = tune_threshold(probs, labels)
    metrics = quality(probs, labels, threshold)
    entries, accepted = compress_release(spec.compression, arch, state, net, x, labels,
                                         threshold, metrics)
    registry = Registry(settings)
    card = registry.save(ModelCard(
        model=MODEL, dataset="transactions", spec_hash=spec.spec_hash(), architecture=arch,
        feature_transform=transform.to_dict(), metrics=metrics, status="promoted",
        variants=entries), state, accepted)
    registry.set_live(MODEL, card.version)
    return card, x


def _per_row(fn: Any, rows: Any, runs: int = 2000) -> float:
    for _ in range(50):
        fn(rows)
    began = time.perf_counter()
    for _ in range(runs):
        fn(rows)
    return (time.perf_counter() - began) / runs / len(rows) * 1e6


def _forwards(hidden: tuple[int, ...], x: Any) -> dict[str, float]:
    import torch

    from services.serving.fastpath import compile_numpy
    from shared.models.nets import architecture, build_model
    from shared.models.variants import build_variant, compress, int8_forward, logits

    torch.manual_seed(0)
    arch = architecture("mlp", x.shape[1], hidden)
    net = build_model(arch).eval()
    tensors = compress("int8", arch, net.state_dict())
    quantized = build_variant("int8", arch, tensors)
    fp32 = compile_numpy(net)
    assert fp32 is not None
    rows = x[:32].copy()
    tensor = torch.from_numpy(rows)
    return {"numpy float32 (serving's full path)": _per_row(fp32, rows),
            "numpy int8 (serving's int8 path)": _per_row(int8_forward(arch, tensors), rows),
            "torch float32": _per_row(lambda _: logits(net, tensor), rows),
            "torch dynamic int8 kernels": _per_row(lambda _: logits(quantized, tensor), rows)}


def main() -> None:
    """Release the model with its variants, measure both servers and the forward passes."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    import asyncio

    import torch

    torch.set_num_threads(1)
    platform = Platform()
    try:
        settings = platform.settings()
        card, x = _release(settings)
        servers = {name: platform.server(LEPTON_SERVING_VARIANT=name)
                   for name in ("full", "int8")}
        for _, addr in servers.values():
            asyncio.run(_load(addr, 8, 0.5, 32))
        points: dict[tuple[str, int], Point] = {}
        for _ in range(args.rounds):
            for conc in (1, 8):
                for name, (proc, addr) in servers.items():
                    result, cpu = _measure(addr, proc.pid, conc, args.seconds, 32)
                    points.setdefault((name, conc), Point()).add(result, cpu)
        for proc, _ in servers.values():
            platform.stop(proc)
    finally:
        platform.close()
    variants = card.variants
    print("## Compressed models (`bench/compression_bench.py`)\n")
    print(f"transactions MLP (hidden 32-16), {int(card.metrics['validation_rows'])} held-out "
          "rows; sizes and metrics from the signed card.\n")
    print("| variant | bytes | F1 | ROC-AUC | max \\|Δscore\\| vs full | status |")
    print("|---|---|---|---|---|---|")
    print(f"| full (float32) | {variants['full']['bytes']:,} | {card.metrics['f1']:.4f} | "
          f"{card.metrics['roc_auc']:.4f} | 0 | — |")
    for name in ("int8", "fp16"):
        entry = variants[name]
        print(f"| {name} | {entry.get('bytes', 0):,} | {entry['metrics']['f1']:.4f} | "
              f"{entry['metrics']['roc_auc']:.4f} | {entry['score_diff']['max']:.2e} | "
              f"{entry['status']} |")
    print(f"\nServing, PredictBatch ×32 ({args.rounds} interleaved rounds × {args.seconds:g} s; "
          "server and load generator are separate processes):\n")
    print("| variant | concurrency | rows/s | p50 ms | p99 ms | server CPU µs/row | "
          "rows/s vs full |")
    print("|---|---|---|---|---|---|---|")
    for conc in (1, 8):
        base = points[("full", conc)]
        for name in ("full", "int8"):
            point = points[(name, conc)]
            print(f"| {name} | {conc} | {point.rows / point.seconds:,.0f} | {point.pct(0.5):.2f} "
                  f"| {point.pct(0.99):.2f} | {point.cpu / point.rows * 1e6:,.1f} | "
                  f"{(point.rows / point.seconds) / (base.rows / base.seconds):.2f} |")
    print("\nForward pass alone, 32-row batches, one thread (µs per row):\n")
    print("| path | MLP 32-16 | MLP 512-512 |")
    print("|---|---|---|")
    small, wide = _forwards((32, 16), x), _forwards((512, 512), x)
    for path in small:
        print(f"| {path} | {small[path]:.2f} | {wide[path]:.2f} |")


if __name__ == "__main__":
    main()
