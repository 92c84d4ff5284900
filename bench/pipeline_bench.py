"""raw → governed against a bare transactional batch pipeline, all in one run on one broker.

Rows:
- bare: confluent-kafka consume 1000 → `json.loads` → AES-GCM one field → `json.dumps` →
  produce → commit, one transaction per batch (the baseline);
- ingest alone and governance alone, each at 1 % and 100 % of traces sampled (governance
  reads the clean events ingest wrote in a previous step);
- ingest + governance together, raw → governed.

Throughput: N preloaded events, timed by the output records' timestamps (first to last), so
start-up and group joins are excluded; CPU µs per event is the stage processes' CPU time
over the same stretch. Rows that end in governance count its decisions (the `audit.log`
records, one per event whether released or withheld): the transactions stream repeats
subjects, and the per-release contribution bound withholds all but one event per subject, so
`events.governed` alone would undercount the work. Latency: events published at `--rate` a
second to the running pipeline, produce → committed output; "added" is the difference to the
bare pipeline.

Run: `.venv/bin/python bench/pipeline_bench.py [--events 15000] [--rate 1000] [--seconds 8]`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psutil
from confluent_kafka import Consumer, Message, Producer, TopicPartition
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from ingest_bench import (  # noqa: E402
    PREFIXES,
    _forget_redis_keys,
    latencies,
    pct,
    publish,
    reader,
    start_broker,
)

from lepton.generators import transactions  # noqa: E402
from services.governance.sealing import AUDIT_TYPE_HEADER  # noqa: E402
from shared.config import LeptonSettings  # noqa: E402
from shared.events import encode  # noqa: E402
from shared.kafka import ensure_topics  # noqa: E402
from shared.lifecycle import parent_death  # noqa: E402
from shared.topics import Topics  # noqa: E402

BATCH = 1000
SAMPLED_1 = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"}
SAMPLED_100 = {"OTEL_TRACES_SAMPLER": "parentbased_always_on"}


def run_bare(bootstrap: str, source: str, target: str, group: str) -> None:
    """Child process: the bare transactional batch pipeline (json + AES-GCM of one field)."""
    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    aead = AESGCM(AESGCM.generate_key(bit_length=256))
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                         "enable.auto.commit": False, "auto.offset.reset": "earliest",
                         "isolation.level": "read_committed", "fetch.wait.max.ms": 50,
                         "log_level": 3})
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"{group}.tx",
                         "linger.ms": 5, "compression.type": "lz4", "log_level": 3})
    producer.init_transactions(30)
    consumer.subscribe([source])
    while not stop:
        batch = [m for m in consumer.consume(BATCH, 0.05) if m.error() is None]
        if not batch:
            continue
        producer.begin_transaction()
        offsets: dict[tuple[str, int], int] = {}
        for msg in batch:
            event = json.loads(msg.value() or b"{}")
            payload = event["payload"]
            payload["email"] = aead.encrypt(os.urandom(12), str(payload.get("email")).encode(),
                                            None).hex()
            producer.produce(target, value=json.dumps(event).encode(), key=msg.key(),
                             headers=msg.headers())
            offsets[(msg.topic() or "", msg.partition() or 0)] = (msg.offset() or 0) + 1
        producer.send_offsets_to_transaction(
            [TopicPartition(t, p, o) for (t, p), o in offsets.items()],
            consumer.consumer_group_metadata())
        producer.commit_transaction()
    consumer.close()


def start(stages: list[str], bootstrap: str, topics: Topics, env: dict[str, str], data: str
          ) -> list[subprocess.Popen[bytes]]:
    """Start the stage processes (`bare`, `ingest`, `governance`) on `topics`, with `data` as
    their data directory (keys, audit log)."""
    full = {**os.environ, "LEPTON_KAFKA_BOOTSTRAP": bootstrap,
            "LEPTON_TOPIC_PREFIX": topics.prefix, "LEPTON_REDIS_PREFIX": f"{topics.prefix}:",
            "LEPTON_DATA_DIR": data, "LEPTON_INGEST_INSTANCE": "bench",
            "LEPTON_INGEST_BATCH_SIZE": str(BATCH), "LEPTON_GOVERNANCE_BATCH_SIZE": str(BATCH),
            "LEPTON_LOG_LEVEL": "WARNING", **env}
    procs = []
    for stage in stages:
        command = ([sys.executable, __file__, "--bare-child", bootstrap, topics.raw,
                    f"{topics.prefix}out", f"{topics.prefix}bare"] if stage == "bare"
                   else [sys.executable, "-m", f"services.{stage}"])
        procs.append(subprocess.Popen(command, cwd=ROOT, env=full, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, preexec_fn=parent_death()))
    return procs


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every stage process and wait for it."""
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _cpu(procs: list[subprocess.Popen[bytes]]) -> float:
    total = 0.0
    for proc in procs:
        times = psutil.Process(proc.pid).cpu_times()
        total += times.user + times.system
    return total


def _decision(msg: Message) -> bool:
    """An audit.log record (not a signed checkpoint)."""
    return dict(msg.headers() or []).get(AUDIT_TYPE_HEADER) == b"record"


def throughput(out: Consumer, count: int, procs: list[subprocess.Popen[bytes]],
               timeout: float = 300.0, keep: Callable[[Message], bool] = lambda m: True
               ) -> tuple[float, float]:
    """(events/s between the first and last of `count` outputs that `keep` selects, stage CPU
    µs per event). Ends early once most outputs are in and none came for 3 s."""
    stamps: list[int] = []
    cpu_from, cpu_to, seen_from = 0.0, 0.0, 0
    deadline = time.monotonic() + timeout
    last = time.monotonic()
    while len(stamps) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(stamps)} of {count} outputs arrived")
        got = [m.timestamp()[1] for m in out.consume(5000, 0.1)
               if m.error() is None and keep(m)]
        if got:
            stamps.extend(got)
            last, cpu_to = time.monotonic(), _cpu(procs)
        elif len(stamps) > count // 2 and time.monotonic() - last > 3.0:
            break
        if stamps and not seen_from:
            cpu_from, seen_from = _cpu(procs), len(stamps)
    cpu_us = ((cpu_to or _cpu(procs)) - cpu_from) * 1e6 / max(len(stamps) - seen_from, 1)
    return (len(stamps) - 1) / max((max(stamps) - min(stamps)) / 1000, 1e-3), cpu_us


def measure(name: str, stages: list[str], output: str, env: dict[str, str], bootstrap: str,
            args: argparse.Namespace, seed: int, *, latency: bool = True,
            pre: list[str] | None = None, warm: bool = False) -> dict[str, float | str]:
    """One row: throughput over preloaded events, then latency at a fixed rate. `pre`: stages
    that first turn the events into this row's input; `warm`: ingest first runs over as many
    other events of the same customers, so most subjects already have data keys."""
    topics = Topics(f"bench{uuid.uuid4().hex[:8]}.")
    PREFIXES.append(f"{topics.prefix}:")
    data = tempfile.mkdtemp()
    settings = LeptonSettings(kafka_bootstrap=bootstrap, topic_prefix=topics.prefix)
    ensure_topics(settings, [*topics.all(), f"{topics.prefix}out"])
    n_latency = int(args.rate * (args.seconds + 1)) if latency else 0
    n_warm = args.events if warm else 0
    customers = args.events // 4 if warm else (args.events + n_latency) // 2
    values = [encode(e) for e in transactions(n_warm + args.events + n_latency, seed=seed,
                                              customers=customers)]
    clean = reader(bootstrap, topics.clean)
    if warm:
        publish(bootstrap, topics.raw, values[:n_warm])
        before = start(["ingest"], bootstrap, topics, SAMPLED_1, data)
        throughput(clean, n_warm, before)
        stop_all(before)
    values = values[n_warm:]
    publish(bootstrap, topics.raw, values[: args.events])
    if pre:  # earlier stages run to completion first (their output is this row's input), at
        # this row's sampling: a parent-based sampler follows their decisions
        before = start(pre, bootstrap, topics, env, data)
        throughput(clean, args.events, before)
        stop_all(before)
    out = clean if output == "clean" else reader(
        bootstrap, {"out": f"{topics.prefix}out", "decided": topics.audit_log}[output])
    keep = _decision if output == "decided" else (lambda m: True)
    procs = start(stages, bootstrap, topics, env, data)
    row: dict[str, float | str] = {"name": name}
    try:
        row["rate"], row["cpu"] = throughput(out, args.events, procs, keep=keep)
        if latency:
            sent: dict[bytes, float] = {}
            sender = threading.Thread(target=lambda: publish(
                bootstrap, topics.raw, values[args.events:], rate=args.rate, into=sent))
            sender.start()
            lat = latencies(out, sent, n_latency, args.rate, timeout=args.seconds + 60)
            sender.join()
            row["p50"], row["p99"] = pct(lat, 50), pct(lat, 99)
    finally:
        stop_all(procs)
        out.close()
        if out is not clean:
            clean.close()
    print(f"  {row}", file=sys.stderr)
    return row


def main() -> None:
    """Run every row and print the markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=15_000)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--only", default="", help="Run only the rows whose name holds this "
                        "text (and the bare pipeline, the baseline).")
    args = parser.parse_args()
    broker, bootstrap = None, os.environ.get("LEPTON_KAFKA_BOOTSTRAP")
    if not bootstrap:
        broker, bootstrap = start_broker()
    rows: list[tuple[str, list[str], str, dict[str, str], bool, list[str] | None, bool]] = [
        ("bare batch pipeline", ["bare"], "out", {}, True, None, False),
        ("ingest alone, 1 % sampled", ["ingest"], "clean", SAMPLED_1, False, None, False),
        ("ingest alone, 100 % sampled", ["ingest"], "clean", SAMPLED_100, False, None, False),
        ("ingest alone, 1 % sampled, data keys minted before", ["ingest"], "clean", SAMPLED_1,
         False, None, True),
        ("governance alone, 1 % sampled", ["governance"], "decided", SAMPLED_1, False,
         ["ingest"], False),
        ("governance alone, 100 % sampled", ["governance"], "decided", SAMPLED_100, False,
         ["ingest"], False),
        ("ingest + governance, 1 % sampled", ["ingest", "governance"], "decided", SAMPLED_1,
         True, None, False),
        ("ingest + governance, 100 % sampled", ["ingest", "governance"], "decided",
         SAMPLED_100, False, None, False),
    ]
    try:
        results = [measure(name, stages, output, env, bootstrap, args, seed, latency=lat,
                           pre=pre, warm=warm)
                   for seed, (name, stages, output, env, lat, pre, warm) in enumerate(rows, 300)
                   if seed == 300 or args.only in name]
    finally:
        if broker is not None:
            broker.send_signal(signal.SIGTERM)
            broker.wait(20)
        _forget_redis_keys(PREFIXES)
    base = results[0]
    print(f"\n{args.events:,} transactions events preloaded; latency at {args.rate:,.0f} ev/s "
          f"for {args.seconds:.0f} s; batch {BATCH}.\n")
    print("| pipeline | events/s | × bare | CPU µs/event | p50 ms | p99 ms | added p99 ms |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in results:
        rate = float(row["rate"])
        lat = (f"{float(row['p50']):.1f} | {float(row['p99']):.1f} | "
               f"{float(row['p99']) - float(base['p99']):.1f}") if "p50" in row else "– | – | –"
        print(f"| {row['name']} | {rate:,.0f} | {rate / float(base['rate']):.2f} | "
              f"{float(row['cpu']):.0f} | {lat} |")


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--bare-child":
        run_bare(*sys.argv[2:6])
    else:
        main()
