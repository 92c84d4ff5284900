"""Serving before/after: the same load point against this tree's serving process and one
extracted from a git ref (`git archive`), beside the protocol's echo server, measured round
by round so that load from other processes on the box hits all three alike. Prints the
bench's markdown rows (server µs/call = the server process's CPU time per call).

Run `python bench/serving_ab.py --ref <commit> [--kind v2|http|lepton] [--seconds 2
--rounds 4 --concurrency 8] [--env KEY=VALUE ...]` (`--env` sets this tree's server only, so
`--ref HEAD --env LEPTON_SERVING_LOG_SAMPLE=0` measures what one setting costs). Broker,
registry and Redis as in serving_bench.py."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import serving_bench as bench  # noqa: E402
from ref_tree import extract  # noqa: E402

ECHO = {"v2": "--v2-echo-server", "http": "--http-echo-server", "lepton": "--echo-server"}


def main() -> None:
    """Start echo, this tree's serving and the ref's serving; measure them interleaved."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--ref", required=True, help="The commit to compare with.")
    parser.add_argument("--kind", choices=sorted(ECHO), default="v2")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="A setting for this tree's server only (e.g. "
                        "LEPTON_SERVING_LOG_SAMPLE=0 against --ref HEAD: its cost).")
    args = parser.parse_args()
    extra = dict(item.split("=", 1) for item in args.env)
    from shared.models.registry import Registry
    from tests.unit.serving.support import save_model

    old_tree = extract(args.ref)
    platform = bench.Platform()
    try:
        settings = platform.settings()
        Registry(settings).set_live(bench.MODEL, save_model(settings, seed=0).version)
        echo, echo_addr = platform.echo(ECHO[args.kind])
        new, new_addr = platform.server(**{"LEPTON_SERVING_BATCHING": "false", **extra})
        bench.ROOT = old_tree  # cwd and PYTHONPATH of the next server
        old, old_addr = platform.server(LEPTON_SERVING_BATCHING="false",
                                        PYTHONPATH=str(old_tree))
        bench.ROOT = ROOT
        http = args.kind == "http"
        targets = {"echo": (echo.pid, platform.http[echo_addr] if http else echo_addr),
                   f"serving at {args.ref}": (old.pid, platform.http[old_addr] if http
                                              else old_addr),
                   "serving, this tree": (new.pid, platform.http[new_addr] if http
                                          else new_addr)}
        for pid, target in targets.values():
            bench._measure(target, pid, args.concurrency, 0.7, 1, args.kind)
        points: dict[str, bench.Point] = {}
        for _ in range(args.rounds):
            for name, (pid, target) in targets.items():
                result, cpu = bench._measure(target, pid, args.concurrency, args.seconds, 1,
                                             args.kind)
                points.setdefault(name, bench.Point()).add(result, cpu)
        print("| server | concurrency | calls/s | rows/s | p50 ms | p99 ms | server µs/call "
              "| ratio to echo | errors |")
        print("|---|---|---|---|---|---|---|---|---|")
        for name, point in points.items():
            print(bench._row(f"{args.kind} {name}", args.concurrency, point,
                             None if name == "echo" else points["echo"]))
    finally:
        platform.close()
        shutil.rmtree(old_tree, ignore_errors=True)


if __name__ == "__main__":
    main()
