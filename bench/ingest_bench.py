"""Ingest throughput and latency against a bare passthrough and a faust no-op agent.

Every pipeline runs as its own process on the same embedded broker in the same run, reading
`events.raw` and writing one output topic with Kafka transactions and read_committed:

- passthrough: confluent-kafka consume → produce the same bytes, one transaction per batch;
- ingest: `python -m services.ingest` (validate, clean, dedup in Redis, AES-GCM + HMAC, one
  OTel span per event with the SDK installed and every span sampled, no exporter);
- ingest, 1% traced: the same with `OTEL_TRACES_SAMPLER=traceidratio` at 0.01;
- faust-noop: a faust-streaming agent that forwards each value (exactly_once guarantee).

Throughput: N preloaded events, timed from the first to the last committed output (so group
join and start-up are excluded). Latency: events published at a fixed rate to the running
pipeline; end-to-end time from `produce()` to the output being readable (read_committed);
"added" is the difference to the passthrough at the same percentile.

Run: `.venv/bin/python bench/ingest_bench.py [--events 30000] [--rate 1000] [--seconds 8]`.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import orjson
import psutil
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lepton.generators import transactions  # noqa: E402
from shared.config import LeptonSettings  # noqa: E402
from shared.events import encode  # noqa: E402
from shared.kafka import ensure_topics  # noqa: E402
from shared.lifecycle import parent_death  # noqa: E402
from shared.topics import Topics  # noqa: E402

BATCH = 1000
WAIT_MS = 50
WARMUP_S = 1.0
PREFIXES: list[str] = []


def _forget_redis_keys(prefixes: list[str]) -> None:
    from shared.state import make_redis

    client = make_redis(LeptonSettings())
    for prefix in prefixes:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start:start + 1000])


def run_passthrough(bootstrap: str, source: str, target: str, group: str) -> None:
    """Child process: a bare transactional consume → produce loop (the baseline)."""
    stop = _stop_flag()
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                         "enable.auto.commit": False, "auto.offset.reset": "earliest",
                         "isolation.level": "read_committed", "fetch.wait.max.ms": 50,
                         "log_level": 3})
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"{group}.tx",
                         "linger.ms": 5, "compression.type": "lz4", "log_level": 3})
    producer.init_transactions(30)
    consumer.subscribe([source])
    while not stop:
        batch = [m for m in consumer.consume(BATCH, WAIT_MS / 1000) if m.error() is None]
        if not batch:
            continue
        producer.begin_transaction()
        offsets: dict[tuple[str, int], int] = {}
        for msg in batch:
            producer.produce(target, value=msg.value(), key=msg.key(), headers=msg.headers())
            offsets[(msg.topic() or "", msg.partition() or 0)] = (msg.offset() or 0) + 1
        producer.send_offsets_to_transaction(
            [TopicPartition(t, p, o) for (t, p), o in offsets.items()],
            consumer.consumer_group_metadata())
        producer.commit_transaction()
    consumer.close()


def run_faust(bootstrap: str, source: str, target: str, group: str) -> None:
    """Child process: a faust-streaming agent forwarding every value unchanged."""
    import faust

    from shared.kafka import faust_settings

    settings = LeptonSettings(kafka_bootstrap=bootstrap)
    app = faust.App(**{**faust_settings(settings, group), "consumer_auto_offset_reset": "earliest"})
    inbound = app.topic(source, value_serializer="raw", key_serializer="raw")
    outbound = app.topic(target, value_serializer="raw", key_serializer="raw")

    @app.agent(inbound)
    async def forward(stream):  # type: ignore[no-untyped-def]
        async for key, value in stream.items():
            await outbound.send(key=key, value=value)

    level = os.environ.get("FAUST_LOG", "warn")
    sys.argv = [sys.argv[0], "worker", "-l", level, "--without-web"]
    app.main()


def _stop_flag() -> list[int]:
    flag: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: flag.append(1))
    signal.signal(signal.SIGINT, lambda *_: flag.append(1))
    return flag


def start_broker() -> tuple[subprocess.Popen[bytes], str]:
    """A `lepton broker` child process and its bootstrap address."""
    path = Path(tempfile.mkdtemp()) / "bootstrap"
    proc = subprocess.Popen([sys.executable, "-m", "lepton", "broker", "--bootstrap-file",
                             str(path)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, preexec_fn=parent_death())
    deadline = time.monotonic() + 30
    while not path.exists():
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError("embedded broker did not start")
        time.sleep(0.05)
    return proc, path.read_text().strip()


def publish(bootstrap: str, topic: str, values: list[bytes], rate: float | None = None,
            into: dict[bytes, float] | None = None) -> dict[bytes, float]:
    """Send values (at `rate` a second when given); event id → send time, in `into` if given."""
    # Uncompressed input: aiokafka (under faust) cannot read lz4 without the `lz4` package.
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5,
                         "enable.idempotence": True, "log_level": 3})
    sent: dict[bytes, float] = {} if into is None else into
    started = time.monotonic()
    for index, value in enumerate(values):
        if rate is not None:
            ahead = index / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
        event_id = orjson.loads(value)["event_id"].encode()
        sent[event_id] = time.time()
        while True:
            try:
                producer.produce(topic, value=value, key=event_id[-4:])
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    producer.flush(30)
    return sent


def reader(bootstrap: str, topic: str) -> Consumer:
    """A read_committed consumer of every partition of `topic` from the beginning."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4()}",
                         "isolation.level": "read_committed", "enable.auto.commit": False,
                         "fetch.wait.max.ms": 5, "log_level": 3})
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    return consumer


def throughput(consumer: Consumer, count: int, pid: int, timeout: float) -> tuple[float, float]:
    """(events a second from the produce timestamps of the first and last of `count` outputs,
    the pipeline process's CPU µs per event while it worked through them)."""
    process = psutil.Process(pid)
    stamps: list[int] = []
    cpu_from, seen_from = 0.0, 0
    deadline = time.monotonic() + timeout
    while len(stamps) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(stamps)} of {count} outputs arrived")
        stamps.extend(m.timestamp()[1] for m in consumer.consume(5000, 0.1)
                      if m.error() is None)
        if stamps and not seen_from:
            cpu_from, seen_from = _cpu(process), len(stamps)
    cpu_us = (_cpu(process) - cpu_from) * 1e6 / max(count - seen_from, 1)
    return (count - 1) / max((max(stamps) - min(stamps)) / 1000, 1e-3), cpu_us


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def latencies(consumer: Consumer, sent: dict[bytes, float], expect: int, rate: float,
              timeout: float) -> list[float]:
    """Milliseconds from send to committed output, per event (read while sending goes on),
    leaving out the first WARMUP_S of sending: every pipeline, the bare passthrough included,
    stalls ≈ 0.5 s when traffic resumes after idling on the embedded broker."""
    out: list[float] = []
    first_sent = 0.0
    deadline = time.monotonic() + timeout
    while len(out) < expect - WARMUP_S * rate and time.monotonic() < deadline:
        for msg in consumer.consume(1000, 0.01):
            if msg.error() is None:
                arrived = time.time()
                event_id = orjson.loads(msg.value() or b"{}").get("event_id", "").encode()
                sent_at = sent.get(event_id)
                first_sent = first_sent or min(sent.values(), default=0.0)
                if sent_at is not None and sent_at >= first_sent + WARMUP_S:
                    out.append((arrived - sent_at) * 1000)
    return out


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0..100)."""
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if values else 0.0


def measure(name: str, launch: Callable[[str, Topics], subprocess.Popen[bytes]],
            output: Callable[[Topics], str], bootstrap: str, args: argparse.Namespace,
            seed: int) -> dict[str, float | str]:
    """Throughput then latency of one pipeline in its own topics."""
    topics = Topics(f"bench{uuid.uuid4().hex[:8]}.")
    PREFIXES.append(f"{topics.prefix}:")
    settings = LeptonSettings(kafka_bootstrap=bootstrap, topic_prefix=topics.prefix)
    ensure_topics(settings, [*topics.all(), f"{topics.prefix}out"])
    latency_events = int(args.rate * (args.seconds + WARMUP_S))
    values = [encode(e) for e in transactions(args.events + latency_events,
                                              seed=seed)]
    publish(bootstrap, topics.raw, values[: args.events])
    out = reader(bootstrap, output(topics))
    proc = launch(bootstrap, topics)
    try:
        rate, cpu_us = throughput(out, args.events, proc.pid, timeout=300)
        sent: dict[bytes, float] = {}
        sender = threading.Thread(target=lambda: sent.update(
            publish(bootstrap, topics.raw, values[args.events:], rate=args.rate, into=sent)))
        sender.start()
        lat = latencies(out, sent, len(values) - args.events, args.rate,
                        timeout=args.seconds + 60)
        sender.join()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        out.close()
    print(f"  {name}: {rate:,.0f} ev/s, {cpu_us:.0f} CPU µs/event, p50 {pct(lat, 50):.1f} ms, "
          f"p99 {pct(lat, 99):.1f} ms ({len(lat)}/{len(sent)} latency samples)", file=sys.stderr)
    return {"name": name, "rate": rate, "cpu": cpu_us, "p50": pct(lat, 50), "p99": pct(lat, 99)}


def child(mode: str, bootstrap: str, topics: Topics, env: dict[str, str] | None = None
          ) -> subprocess.Popen[bytes]:
    """Start a pipeline process."""
    if mode == "ingest":
        command = [sys.executable, "-m", "services.ingest"]
    else:
        command = [sys.executable, __file__, f"--{mode}", bootstrap, topics.raw,
                   f"{topics.prefix}out", f"{topics.prefix}{mode}"]
    full_env = {**os.environ, "LEPTON_KAFKA_BOOTSTRAP": bootstrap,
                "LEPTON_TOPIC_PREFIX": topics.prefix, "LEPTON_REDIS_PREFIX": f"{topics.prefix}:",
                "LEPTON_DATA_DIR": tempfile.mkdtemp(), "LEPTON_INGEST_INSTANCE": "bench",
                "LEPTON_LOG_LEVEL": "WARNING", **(env or {})}
    return subprocess.Popen(command, cwd=ROOT, env=full_env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, preexec_fn=parent_death())


def main() -> None:
    """Run every pipeline and print the markdown section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=15_000,
                        help="preloaded events (the embedded broker keeps ~4 MB a partition)")
    parser.add_argument("--rate", type=float, default=1000.0, help="latency phase, events/s")
    parser.add_argument("--seconds", type=float, default=8.0, help="latency phase length")
    parser.add_argument("--skip-faust", action="store_true")
    args = parser.parse_args()
    broker = None
    bootstrap = os.environ.get("LEPTON_KAFKA_BOOTSTRAP")
    if not bootstrap:
        broker, bootstrap = start_broker()
    sampled = {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"}
    runs: list[tuple[str, Callable[[str, Topics], subprocess.Popen[bytes]],
                     Callable[[Topics], str]]] = [
        ("passthrough", lambda b, t: child("passthrough", b, t), lambda t: f"{t.prefix}out"),
        ("ingest", lambda b, t: child("ingest", b, t), lambda t: t.clean),
        ("ingest, 1% traced", lambda b, t: child("ingest", b, t, sampled), lambda t: t.clean),
    ]
    if not args.skip_faust:
        runs.append(("faust-noop", lambda b, t: child("faust", b, t),
                     lambda t: f"{t.prefix}out"))
    try:
        results = [measure(name, launch, output, bootstrap, args, seed)
                   for seed, (name, launch, output) in enumerate(runs, start=100)]
    finally:
        if broker is not None:
            broker.send_signal(signal.SIGTERM)
            broker.wait(20)
        _forget_redis_keys(PREFIXES)
    base = results[0]
    print(f"\n{args.events:,} transactions events preloaded; latency at {args.rate:,.0f} ev/s "
          f"for {args.seconds:.0f} s after {WARMUP_S:.0f} s warm-up; batch {BATCH}, "
          f"max wait {WAIT_MS} ms.\n")
    print("| pipeline | events/s | × passthrough | CPU µs/event | p50 ms | p99 ms "
          "| added p50 ms | added p99 ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in results:
        rate, p50, p99 = float(row["rate"]), float(row["p50"]), float(row["p99"])
        print(f"| {row['name']} | {rate:,.0f} | {rate / float(base['rate']):.2f} | "
              f"{float(row['cpu']):.0f} | {p50:.1f} | {p99:.1f} | {p50 - float(base['p50']):.1f} "
              f"| {p99 - float(base['p99']):.1f} |")


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] in ("--passthrough", "--faust"):
        runner = run_passthrough if sys.argv[1] == "--passthrough" else run_faust
        runner(*sys.argv[2:6])
    else:
        main()
