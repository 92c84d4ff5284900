"""10k hostile records on events.raw (fuzzed and truncated JSON, invalid UTF-8, huge fields,
records over the size limit, deep nesting, wrong types, duplicate ids) beside valid events: the
ingest process keeps running, every hostile record is dead-lettered with a reason, duplicates
are dropped, every valid event comes out once, and the process's memory stays bounded."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable

import orjson
import psutil
from confluent_kafka import Producer

from shared.events import Envelope, Header, encode
from tests.faults.conftest import FaultReport, Pipeline, ScenarioLine
from tests.helpers import TopicCollector

VALID = 1000
DUPLICATES = 300
HOSTILE = 10_000 - VALID - DUPLICATES


def _hostile(rng: random.Random, base: Envelope, i: int) -> bytes:
    doc = orjson.loads(encode(base))
    doc["event_id"] = f"hostile-{i:05d}"
    text = orjson.dumps(doc)
    kind = i % 9
    if kind == 0:  # truncated JSON
        return text[: rng.randrange(1, len(text) - 1)]
    if kind == 1:  # invalid UTF-8 somewhere
        data = bytearray(text)
        data[rng.randrange(len(data))] = rng.randrange(0x80, 0x100)
        return bytes(data)
    if kind == 2:  # random bytes
        return rng.randbytes(rng.randrange(1, 400))
    if kind == 3:  # deep nesting (beyond any JSON parser's depth limit, or just nested)
        depth = rng.choice((50, 2000))
        return text[:-1] + b',"extra":' + b"[" * depth + b"]" * depth + b"}"
    if kind == 4:  # wrong types
        field, value = rng.choice([("amount", {"x": 1}), ("hour", "noon"), ("payload", [1, 2]),
                                   ("subject_id", 7), ("dataset", None), ("occurred_at", "soon"),
                                   ("region", 3.5), ("card_present", "maybe")])
        target = doc if field in doc else doc["payload"]
        target[field] = value
        return orjson.dumps(doc)
    if kind == 5:  # huge field
        doc["payload"]["name"] = "x" * 5_000
        return orjson.dumps(doc)
    if kind == 6:  # not an object
        return rng.choice([b"[]", b"null", b"42", b'"text"', b"", b"{", b"}{"])
    if kind == 7:  # out of range / not allowed
        doc["payload"][rng.choice(["hour", "amount"])] = -5
        return orjson.dumps(doc)
    # unknown dataset
    doc["dataset"] = f"no-such-{i}"
    return orjson.dumps(doc)


def test_ten_thousand_hostile_records(broker: str, make_pipeline: Callable[..., Pipeline],
                                      fault_report: FaultReport) -> None:
    rng = random.Random(8)
    pipeline = make_pipeline(broker)
    valid = pipeline.events(VALID, seed=44)
    records = [encode(e) for e in valid]
    records += [records[rng.randrange(VALID)] for _ in range(DUPLICATES)]
    records += [_hostile(rng, valid[i % VALID], i) for i in range(HOSTILE - 17)]
    records += [b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"] * 5
    # the embedded broker keeps ~5 MB a partition: the biggest records go one at a time, each
    # after the previous one was dead-lettered, and a collector keeps every output it reads
    big = orjson.loads(records[0])
    bigs = []
    for n, size in enumerate([300_000] * 10 + [1_200_000] * 2):
        big["event_id"], big["payload"]["name"] = f"huge-{n}", "y" * size
        bigs.append(orjson.dumps(big))
    warmup, rest = records[:200], records[200:]
    rng.shuffle(rest)

    producer = Producer({"bootstrap.servers": pipeline.settings.bootstrap_servers(),
                         "message.max.bytes": 4_000_000, "linger.ms": 5})

    def send(batch: list[bytes]) -> None:
        for n, value in enumerate(batch):
            producer.produce(pipeline.topics.raw, value=value, key=str(n % 13).encode())
            producer.poll(0)
        assert producer.flush(30) == 0

    topics = pipeline.topics
    collector = TopicCollector(pipeline.settings, [topics.clean, topics.rejected])
    try:
        pipeline.start("ingest")
        send(warmup)
        collector.wait_for(topics.clean, 200, timeout=60)
        proc = psutil.Process(pipeline.processes.procs["ingest"].pid)
        before = proc.memory_info().rss
        send(rest)
        expected_rejected = HOSTILE
        small_rejected = expected_rejected - len(bigs)
        collector.wait_for(topics.rejected, small_rejected, timeout=120)
        for n, value in enumerate(bigs, start=1):
            send([value])
            collector.wait_for(topics.rejected, small_rejected + n, timeout=60)
        rejected = collector.wait_for(topics.rejected, expected_rejected, timeout=10)
        clean = collector.wait_for(topics.clean, VALID, timeout=60)
    finally:
        collector.stop()
    pipeline.processes.check_alive("ingest")
    after = proc.memory_info().rss
    clean_ids = Counter(orjson.loads(r.value)["event_id"] for r in clean)
    reasons = Counter(r.headers.get(Header.DLQ_REASON, b"").decode() for r in rejected)
    lost = len({e.event_id for e in valid} - set(clean_ids))
    dup = sum(n - 1 for n in clean_ids.values())
    fault_report.add(ScenarioLine("bad input (ingest)", len(records) + len(bigs), len(clean),
                                  lost, dup, 0,
                                  f"{len(rejected)} dead-lettered {dict(reasons)}; "
                                  f"RSS {before >> 20}→{after >> 20} MB"))
    assert lost == 0
    assert dup == 0
    assert set(clean_ids) == {e.event_id for e in valid}
    assert len(rejected) == expected_rejected
    assert "" not in reasons, "a dead letter without a reason"
    assert "internal_error" not in reasons, reasons
    assert after < before + (300 << 20), (before, after)
    assert pipeline.processes.stop("ingest") == 0
