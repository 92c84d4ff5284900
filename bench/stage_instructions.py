"""Instructions per event of a stage's `process()` (ingest or governance), counted by
valgrind's callgrind: repeatable whatever else the machine is doing, where its seconds swing
2-3× within minutes. The stage's processor runs in one process on real Redis (the server's
own work is not counted) over fixed `transactions` events, each carrying an unsampled
`traceparent` as a traced producer's would, with 1 % of traces sampled. A child process counts
a warm-up batch then K measured batches of 1,000 events, another the warm-up then one; their
difference over (K − 1) · 1,000 events is the count per event, start-up and warm-up cancelling
out. Ingest's warm-up mints the data keys of the customers the measured batches reuse;
governance's input is clean events this tree's ingest made. With `--ref REV` the same is
counted for a `git archive` of REV in the same run (its processors must take the arguments
this script passes).

Run: `.venv/bin/python bench/stage_instructions.py ingest|governance [--ref REV]
[--batches 5]`. Needs valgrind.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BATCH = 1000
CUSTOMERS = 500
REFS = re.compile(rb"I\s+refs:\s+([\d,]+)")


def _messages(topic: str, values: list[bytes], start: int) -> list[Any]:
    from confluent_kafka import Message

    return [Message(topic=topic, partition=i % 4, offset=start + i, key=b"k", value=value,
                    headers=[("traceparent",
                              f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-00".encode())],
                    timestamp=(1, 1_767_225_600_000)) for i, value in enumerate(values)]


def _tracer() -> Any:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import ParentBasedTraceIdRatio

    from shared.tracing import PrimedIds

    provider = TracerProvider(sampler=ParentBasedTraceIdRatio(0.01), id_generator=PrimedIds())
    return provider.get_tracer("bench")


def _ingest(data: Path, prefix: str) -> tuple[Any, str]:
    from services.ingest.config import IngestSettings
    from services.ingest.worker import build_processor

    settings = IngestSettings(redis_prefix=prefix, topic_prefix="si.",
                              data_dir=data, kafka_bootstrap="unused:1")
    return build_processor(settings, _tracer()), "si.events.raw"


def _governance(data: Path, prefix: str) -> tuple[Any, str]:
    import redis

    from services.governance.charge_log import ChargeLog
    from services.governance.config import GovernanceSettings
    from services.governance.ledger import Ledger
    from services.governance.policy import Policy
    from services.governance.processor import Processor
    from services.governance.releases import ReleaseLedger
    from services.governance.store import AuditStore
    from services.governance.telemetry import GovernanceMetrics

    s = GovernanceSettings(redis_prefix=prefix, topic_prefix="si.",
                           data_dir=data, kafka_bootstrap="unused:1", governance_fsync=False)
    client = redis.Redis.from_url(s.redis_url)
    charges = ChargeLog(s.ledger_dir(), segment_bytes=s.governance_segment_bytes, fsync=False)
    charges.open()
    ledger = Ledger(client, s, charges)
    ledger.ensure_ready()
    releases = ReleaseLedger(client, s, s.ledger_dir() / "releases", fsync=False)
    releases.ensure_ready()
    store = AuditStore(s.audit_dir(), "si.audit.log", fsync=False)
    store.open(4)
    return Processor(s, store, ledger, Policy(client, s, s.audit_dir()), GovernanceMetrics(), 4,
                     _tracer(), releases), "si.events.clean"


def child(stage: str, source: Path, measured: int, prefix: str, data: Path) -> None:
    """Process the warm-up batch, then `measured` batches of `source`'s events."""
    values = source.read_bytes().split(b"\n")
    processor, topic = (_ingest if stage == "ingest" else _governance)(data, prefix)
    for number in range(measured + 1):
        processor.process(_messages(topic, values[number * BATCH:(number + 1) * BATCH],
                                    number * BATCH))


def _inputs(stage: str, batches: int, prefix: str, work: Path) -> Path:
    """The events both trees process: raw (ingest) or clean ones this tree's ingest made."""
    from lepton.generators import transactions
    from shared.events import encode

    values = [encode(e) for e in transactions(BATCH * (batches + 1), seed=11,
                                              customers=CUSTOMERS)]
    if stage == "governance":
        processor, topic = _ingest(work / "input", f"{prefix}input")
        clean = []
        for start in range(0, len(values), BATCH):
            outputs = processor.process(_messages(topic, values[start:start + BATCH], start))
            clean += [o.value for o in outputs.outputs if o.topic.endswith("events.clean")]
        assert len(clean) == len(values), f"ingest made {len(clean)} of {len(values)}"
        values = clean
    path = work / "events"
    path.write_bytes(b"\n".join(values))
    return path


def _count(tree: Path, stage: str, source: Path, measured: int, prefix: str) -> int:
    """Instructions of one child run over `tree`'s code (hash seed fixed: same dict orders)."""
    from shared.lifecycle import parent_death

    run = uuid.uuid4().hex[:8]
    done = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
         str(Path(__file__).resolve()), stage, "--child", str(source), "--batches",
         str(measured), "--prefix", f"{prefix}{run}", "--data", str(source.parent / run)],
        cwd=tree, env={**os.environ, "PYTHONPATH": str(tree), "PYTHONHASHSEED": "0"},
        capture_output=True, check=True, preexec_fn=parent_death())
    found = REFS.search(done.stderr)
    assert found, done.stderr[-2000:].decode(errors="replace")
    return int(found.group(1).replace(b",", b""))


def _forget(prefix: str) -> None:
    """Delete every Redis key the runs made."""
    from shared.config import LeptonSettings
    from shared.state import make_redis

    client = make_redis(LeptonSettings())
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    for start in range(0, len(keys), 1000):
        client.delete(*keys[start:start + 1000])


def main() -> None:
    """Count each tree's instructions per event and print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=["ingest", "governance"])
    parser.add_argument("--ref", help="a commit to count in the same run")
    parser.add_argument("--batches", type=int, default=5, help="measured batches (K ≥ 2)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.stage, args.child, args.batches, args.prefix, args.data)
        return
    sys.path.insert(0, str(ROOT))  # the parent only: a child imports its own tree's code
    from ref_tree import extract
    prefix = f"stage-instructions-{uuid.uuid4().hex[:8]}-"
    work = Path(tempfile.mkdtemp(prefix="stage-instructions-"))
    try:
        source = _inputs(args.stage, args.batches, prefix, work)
        trees = {"this tree": ROOT,
                 **({f"ref {args.ref}": extract(args.ref, work / "ref")} if args.ref else {})}
        with ThreadPoolExecutor(2) as pool:
            runs = {(name, k): pool.submit(_count, tree, args.stage, source, k, prefix)
                    for name, tree in trees.items() for k in (args.batches, 1)}
            per_event = {name: (runs[name, args.batches].result() - runs[name, 1].result())
                         / ((args.batches - 1) * BATCH) for name in trees}
    finally:
        _forget(prefix)
        shutil.rmtree(work, ignore_errors=True)
    base = per_event[next(reversed(per_event))]
    print(f"\n{args.stage} process(), instructions per event (callgrind, "
          f"{args.batches - 1} × {BATCH:,} events)\n")
    print("| tree | instructions per event | ratio |\n|---|---:|---:|")
    for name, count in per_event.items():
        print(f"| {name} | {count:,.0f} | {count / base:.3f} |")


if __name__ == "__main__":
    main()
