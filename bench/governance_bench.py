"""Governance throughput: events/s through the governance loop (DP on and off) beside a
passthrough transactional batch loop on the same broker in the same run; audit appends/s,
proof verifications/s, ledger charges/s and DP release cost. Prints a markdown section.

    python bench/governance_bench.py [--events 20000]

Starts its own embedded broker when LEPTON_KAFKA_BOOTSTRAP is unset; uses Redis at
LEPTON_REDIS_URL (default 127.0.0.1:6379/0) under a throwaway key prefix.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from confluent_kafka import TopicPartition

from lepton.generators import transactions
from services.governance.charge_log import ChargeLog
from services.governance.charges import Budget, Charge
from services.governance.config import GovernanceSettings
from services.governance.ledger import Ledger
from services.governance.merkle import (
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_of,
    verify_inclusion,
)
from services.governance.privacy import DatasetPrivacy
from services.governance.service import GovernanceService
from services.governance.store import AuditStore
from services.governance.verify import build_inclusion, check_inclusion
from shared.config import LeptonSettings
from shared.datasets import load_spec
from shared.events import CONTENT_TYPE_JSON, Header, encode
from shared.kafka import ensure_topics, make_consumer, make_producer
from shared.lifecycle import parent_death
from shared.signing import load_or_create_private_key
from shared.state import make_redis
from shared.topics import Topics

BATCH = 500


def start_broker() -> tuple[subprocess.Popen[bytes], str]:
    """A `lepton broker` child process and its bootstrap address."""
    path = Path(tempfile.mkdtemp()) / "bootstrap"
    proc = subprocess.Popen([sys.executable, "-m", "lepton", "broker", "--bootstrap-file",
                             str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             preexec_fn=parent_death())
    deadline = time.monotonic() + 30
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("embedded broker did not start")
        time.sleep(0.05)
    return proc, path.read_text().strip()


def _settings(bootstrap: str, data: Path, **extra: object) -> GovernanceSettings:
    prefix = f"b{uuid.uuid4().hex[:8]}."
    return GovernanceSettings(
        kafka_bootstrap=bootstrap, topic_prefix=prefix, redis_prefix=f"bench:{prefix}",
        data_dir=data / prefix, redis_url=os.environ.get("LEPTON_REDIS_URL",
                                                         "redis://127.0.0.1:6379/0"),
        governance_batch_size=BATCH, **extra)  # type: ignore[arg-type]


def _feed(settings: LeptonSettings, count: int, topic: str | None = None) -> None:
    topics = Topics(settings.topic_prefix)
    ensure_topics(settings, [*topics.all(), *([topic] if topic else [])])
    # uncompressed: aiokafka (under faust) has no lz4 codec here
    producer = make_producer(settings, **{"compression.type": "none"})
    for event in transactions(count, seed=1, customers=max(50, count // 10)):
        while True:
            try:
                producer.produce(topic or topics.clean, key=event.subject_id.encode(),
                                 value=encode(event),
                                 headers=[(Header.CONTENT_TYPE, CONTENT_TYPE_JSON)])
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(60)


def passthrough(settings: LeptonSettings, count: int) -> float:
    """Events/s of a consume → produce → send_offsets → commit loop doing nothing else."""
    topics = Topics(settings.topic_prefix)
    out = f"{settings.topic_prefix}passthrough"
    ensure_topics(settings, [out])
    producer = make_producer(settings, transactional_id=f"{settings.topic_prefix}pass")
    consumer = make_consumer(settings, f"{settings.topic_prefix}pass")
    consumer.subscribe([topics.clean])
    done, started = 0, 0.0
    while done < count:
        msgs = [m for m in consumer.consume(BATCH, 0.5) if m.error() is None]
        if not msgs:
            continue
        if not started:
            started = time.perf_counter()
        producer.begin_transaction()
        offsets: dict[tuple[str, int], int] = {}
        for msg in msgs:
            producer.produce(out, key=msg.key(), value=msg.value(), headers=msg.headers())
            offsets[(msg.topic() or "", msg.partition() or 0)] = (msg.offset() or 0) + 1
        producer.send_offsets_to_transaction(
            [TopicPartition(t, p, o) for (t, p), o in offsets.items()],
            consumer.consumer_group_metadata(), 30)
        producer.commit_transaction(30)
        done += len(msgs)
    elapsed = time.perf_counter() - started
    consumer.close()
    return count / elapsed


def faust_child(bootstrap: str, source: str, target: str, group: str) -> None:
    """Child process: a faust-streaming agent forwarding every record unchanged."""
    import faust

    from shared.kafka import faust_settings

    settings = LeptonSettings(kafka_bootstrap=bootstrap)
    app = faust.App(**{**faust_settings(settings, group),
                       "consumer_auto_offset_reset": "earliest"})
    inbound = app.topic(source, value_serializer="raw", key_serializer="raw")
    outbound = app.topic(target, value_serializer="raw", key_serializer="raw")

    @app.agent(inbound)
    async def forward(stream):  # type: ignore[no-untyped-def]
        async for key, value in stream.items():
            await outbound.send(key=key, value=value)

    sys.argv = [sys.argv[0], "worker", "-l", "warn", "--without-web"]
    app.main()


def faust_passthrough(settings: LeptonSettings, count: int) -> float:
    """Events/s of a faust agent forwarding events.clean, read back from its output topic."""
    source, out = f"{settings.topic_prefix}faust-in", f"{settings.topic_prefix}faust-out"
    _feed(settings, count, source)
    ensure_topics(settings, [out])
    reader = make_consumer(settings, f"{settings.topic_prefix}faust-reader",
                           **{"isolation.level": "read_uncommitted"})
    reader.subscribe([out])
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--faust-child",
         settings.bootstrap_servers(), source, out, f"{settings.topic_prefix}faust"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tempfile.mkdtemp(),
        preexec_fn=parent_death())
    seen, started = 0, 0.0
    deadline = time.monotonic() + 300
    try:
        while seen < count and time.monotonic() < deadline:
            got = sum(1 for m in reader.consume(1000, 0.2) if m.error() is None)
            if got and not started:
                started = time.perf_counter()
            seen += got
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        reader.close()
    return seen / (time.perf_counter() - started)


def governance(settings: GovernanceSettings, count: int) -> float:
    """Events/s through the governance loop, from its first batch to the last commit."""
    stop = threading.Event()
    service = GovernanceService(settings, stop)
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    while service.processed == 0:
        time.sleep(0.001)
    started, first = time.perf_counter(), service.processed
    while service.processed < count:
        time.sleep(0.005)
    elapsed = time.perf_counter() - started
    stop.set()
    thread.join(60)
    return (count - first) / elapsed


def audit_appends(root: Path, count: int, fsync: bool) -> float:
    """Audit records appended per second (synced every BATCH, as the loop does)."""
    key = load_or_create_private_key(root / "k" / "audit-signing.key")
    store = AuditStore(root / f"audit-{fsync}", "bench.audit.log", fsync=fsync)
    store.open(1)
    started = time.perf_counter()
    for i in range(count):
        store.append(0, {"identity": f"event:e{i}", "kind": "event_released",
                         "actor": "governance", "event_id": f"e{i}", "subject_id": "s",
                         "dataset": "transactions", "epsilon": 1.0, "source": f"t/0/{i}"})
        if i % BATCH == BATCH - 1:
            store.sync()
    store.checkpoint(0, key)
    elapsed = time.perf_counter() - started
    store.close()
    return count / elapsed


def proofs(root: Path, size: int, count: int) -> tuple[float, float]:
    """Inclusion verifications/s (Merkle path only; and with checkpoint signature check)."""
    hashes = [leaf_hash(i.to_bytes(8, "big")) for i in range(size)]
    levels = [hashes]
    while len(levels[-1]) > 1:  # size is a power of two: a perfect tree
        below = levels[-1]
        levels.append([node_hash(below[i], below[i + 1]) for i in range(0, len(below), 2)])
    root_hash = levels[-1][0]
    assert root_hash == root_of(hashes)
    step = size // count
    paths = [(i, [levels[h][(i >> h) ^ 1] for h in range(len(levels) - 1)])
             for i in range(0, size, step)][:count]
    assert paths[1][1] == inclusion_proof(paths[1][0], hashes)
    started = time.perf_counter()
    for index, path in paths:
        verify_inclusion(index, size, hashes[index], path, root_hash)
    merkle_rate = len(paths) / (time.perf_counter() - started)
    key = load_or_create_private_key(root / "k" / "audit-signing.key")
    full = build_inclusion(root / "audit-False", 0, 12345)
    started = time.perf_counter()
    for _ in range(500):
        check_inclusion(full, key.public_key())
    return merkle_rate, 500 / (time.perf_counter() - started)


def ledger_rate(settings: LeptonSettings, root: Path, count: int) -> float:
    """Ledger charges/s in Lua batches of BATCH (with the on-disk charge log)."""
    log = ChargeLog(root / "ledger", fsync=True)
    log.open()
    ledger = Ledger(make_redis(settings), settings, log)
    ledger.ensure_ready()
    budget = Budget(subject=1e9, dataset=1e12)
    started = time.perf_counter()
    for start in range(0, count, BATCH):
        ledger.charge("bench", budget, [Charge(f"e{i}", f"s{i % 997}", 1.0)
                                        for i in range(start, start + BATCH)])
    return count / (time.perf_counter() - started)


def dp_cost() -> float:
    """Microseconds per event of the OpenDP release of the transactions features."""
    privacy = DatasetPrivacy(load_spec("transactions"))
    payloads = [e.payload for e in transactions(BATCH, seed=2)]
    privacy.release(payloads)
    times = []
    for _ in range(10):
        started = time.perf_counter()
        privacy.release(payloads)
        times.append((time.perf_counter() - started) / BATCH * 1e6)
    return statistics.median(times)


def main() -> None:
    """Run every measurement and print the markdown section."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--faust-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.faust_child:
        faust_child(*args.faust_child)
        return
    broker = None
    bootstrap = os.environ.get("LEPTON_KAFKA_BOOTSTRAP")
    if not bootstrap:
        broker, bootstrap = start_broker()
    n = args.events
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        rows = []
        base = _settings(bootstrap, data)
        _feed(base, n)
        pass_rate = passthrough(base, n)
        faust_rate = faust_passthrough(base, n)
        for label, extra in (("DP on (Laplace), fsync", {}),
                             ("DP off, fsync", {"governance_dp_enabled": False}),
                             ("DP on, no fsync", {"governance_fsync": False})):
            settings = _settings(bootstrap, data, **extra)
            _feed(settings, n)
            rate = governance(settings, n)
            rows.append((label, rate))
        appends = audit_appends(data, 50_000, fsync=False)
        appends_sync = audit_appends(data, 50_000, fsync=True)
        merkle_rate, signed_rate = proofs(data, 1 << 20, 2000)
        charges = ledger_rate(base, data, 50_000)
        dp_us = dp_cost()
    if broker is not None:
        broker.send_signal(signal.SIGTERM)
        broker.wait(20)
    print(f"## Governance\n\n{n} transactions events, batches of {BATCH}, embedded broker, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores.\n")
    print("| loop | events/s | ratio to passthrough |\n|---|---:|---:|")
    print(f"| passthrough (consume → produce → commit txn) | {pass_rate:,.0f} | 1.00 |")
    print(f"| faust agent forwarding each record (no work) | {faust_rate:,.0f} | "
          f"{faust_rate / pass_rate:.2f} |")
    for label, rate in rows:
        print(f"| governance, {label} | {rate:,.0f} | {rate / pass_rate:.2f} |")
    print("\n| operation | rate |\n|---|---:|")
    print(f"| audit appends (fsync per {BATCH}) | {appends_sync:,.0f}/s |")
    print(f"| audit appends (no fsync) | {appends:,.0f}/s |")
    print(f"| inclusion proof verifications, 2^20-leaf tree (Merkle path) | "
          f"{merkle_rate:,.0f}/s |")
    print(f"| `check-proof` verifications (path + Ed25519 checkpoint) | {signed_rate:,.0f}/s |")
    print(f"| ledger charges (Lua batches of {BATCH} + charge log) | {charges:,.0f}/s |")
    print(f"| OpenDP release, 6 transactions features | {dp_us:.1f} µs/event |")


if __name__ == "__main__":
    main()
