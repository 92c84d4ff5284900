"""The governance audit store's memory and speed, this tree against another commit's store in
the same run: each tree's `AuditStore` runs in its own child process, so peak RSS is its own.

Per tree: N event decisions shaped as governance seals them (uuid event ids, `topic:partition:
offset` sources, the model-mode note), appended in batches of 1,000 over 4 partitions with
fsync off; then the process's RSS growth and tracemalloc's count of what the store still holds,
the append CPU per decision, the time to reopen the store, and the time to look up (and, for a
replay, read back) a leaf sealed long before.

    python bench/audit_store_bench.py --ref HEAD~1 --decisions 300000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

from shared.lifecycle import parent_death

ROOT = Path(__file__).resolve().parent.parent
BATCH = 1000
PARTITIONS = 4
NOTE = ("released un-noised inside the boundary; models trained on it are DP-SGD releases "
        "charged per subject")


def _decision(i: int) -> tuple[int, dict[str, Any]]:
    event_id = str(uuid.UUID(int=i + 1))
    return i % PARTITIONS, {
        "identity": f"event:{event_id}", "kind": "event_released", "actor": "governance",
        "reason": None, "source": f"lepton.events.clean:{i % PARTITIONS}:{i // PARTITIONS}",
        "event_id": event_id, "subject_id": f"subject-{i % 5000:05d}", "dataset": "transactions",
        "occurred_at": "2026-12-06T12:00:00.000000+00:00", "mechanism": "none",
        "dp_enabled": True, "detail": {"privacy_mode": "model", "note": NOTE}}


def _rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**20


def child(count: int, data: Path, trace: bool) -> dict[str, float]:
    """Measure one tree's store (run with that tree first on sys.path): with `trace`, only
    what tracemalloc sees the store hold; without, everything else (tracemalloc slows
    allocation several-fold)."""
    from services.governance.store import AuditStore

    store = AuditStore(data, "bench.audit.log", fsync=False)
    store.open(PARTITIONS)
    rss0 = _rss_mib()
    if trace:
        tracemalloc.start()
    traced0 = tracemalloc.get_traced_memory()[0]
    cpu = 0.0
    for first in range(0, count, BATCH):
        batch = [_decision(i) for i in range(first, min(first + BATCH, count))]
        started = time.process_time()
        store.append_many(batch)
        cpu += time.process_time() - started
    store.sync()
    if trace:
        held = tracemalloc.get_traced_memory()[0] - traced0
        store.close()
        return {"held_b": held / count}
    rss = _rss_mib() - rss0
    old = [_decision(i) for i in range(0, count // 2, max(1, count // 2000))]
    started = time.perf_counter()
    hits = sum(store.lookup(f["identity"]) is not None for _, f in old)
    lookup = (time.perf_counter() - started) / len(old)
    started = time.perf_counter()
    replayed = store.append_many(old[:200])
    replay = (time.perf_counter() - started) / 200
    if hits != len(old) or any(new for _, _, new in replayed):
        raise SystemExit("an old leaf was not found, or was sealed again")
    store.close()
    started = time.perf_counter()
    AuditStore(data, "bench.audit.log", fsync=False).open(PARTITIONS)
    reopen = time.perf_counter() - started
    return {"rss_mib": rss, "append_us": cpu / count * 1e6,
            "lookup_us": lookup * 1e6, "replay_us": replay * 1e6, "reopen_s": reopen,
            "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _run(tree: Path, count: int, scratch: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    for trace in (False, True):
        path = scratch / ("traced" if trace else "timed")
        code = (f"import sys, json, pathlib; sys.path[:0] = [{str(tree)!r}, "
                f"{str(ROOT / 'bench')!r}]; import audit_store_bench as b; print(json.dumps("
                f"b.child({count}, pathlib.Path({str(path)!r}), {trace})))")
        done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                              text=True, cwd=tree, preexec_fn=parent_death())
        out.update(json.loads(done.stdout.strip().splitlines()[-1]))
    return out


def main() -> None:
    """Run both trees, interleaved, and print a markdown table."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--ref", default="HEAD", help="the commit to compare against")
    parser.add_argument("--decisions", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "ref"
        base.mkdir()
        archive = subprocess.run(["git", "archive", args.ref, "services", "shared"], cwd=ROOT,
                                 check=True, capture_output=True,
                                 preexec_fn=parent_death()).stdout
        subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True,
                       preexec_fn=parent_death())
        results: dict[str, list[dict[str, float]]] = {args.ref: [], "this tree": []}
        for round_ in range(args.rounds):
            for name, tree in ((args.ref, base), ("this tree", ROOT)):
                scratch = Path(tmp) / f"{round_}-{name.replace(' ', '_')}"
                results[name].append(_run(tree, args.decisions, scratch))
    print(f"{args.decisions:,} decisions over {PARTITIONS} partitions, {args.rounds} rounds "
          "(each cell: the rounds' values)\n")
    print("| store | held by the store, B/decision (tracemalloc) | RSS growth MiB | peak RSS MiB "
          "| append µs/decision (CPU) | lookup of an old leaf µs | replay of an old leaf µs "
          "| reopen s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    columns = (("held_b", ",.0f"), ("rss_mib", ",.0f"), ("peak_mib", ",.0f"),
               ("append_us", ".1f"), ("lookup_us", ".1f"), ("replay_us", ".1f"),
               ("reopen_s", ".2f"))
    for name, runs in results.items():
        cells = [" / ".join(format(r[key], fmt) for r in runs) for key, fmt in columns]
        print(f"| {name} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
