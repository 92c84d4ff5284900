"""Scaling advice on the embedded broker and real Redis: with lag growing at a known rate the
advice rises; a group that consumed everything of a transactional topic, whose committed
offsets trail only the commit markers, stays at the minimum; capacity is what full batches do,
small ones only bounding it; KEDA ScaledObjects take their lag threshold from the same
capacity."""

from __future__ import annotations

import itertools
import time
import uuid
from pathlib import Path

import pytest
import yaml
from confluent_kafka import Consumer, Producer, TopicPartition

from services.monitor import lag
from services.monitor.lag import sample_group
from services.monitor.scaling import advise, consumers, keda_scaled_object
from shared.config import LeptonSettings
from shared.kafka import ensure_topics
from shared.positions import InputPositions
from shared.service_record import ServiceRecord, count_work, note_consumer
from shared.state import make_redis
from tests.helpers import lepton


def _record(settings: LeptonSettings, group: str, topic: str, per_s: float) -> None:
    """A live ingest process record: one replica that did `per_s` events per busy second."""
    record = ServiceRecord("ingest", settings).start()
    try:
        note_consumer(group, [topic])
        count_work(1000, 1000 / per_s)
    finally:
        record.close()


def test_markers_only_stay_at_the_minimum(lepton_env: LeptonSettings) -> None:
    settings = lepton_env
    topic, group = f"{settings.topic_prefix}tx-{uuid.uuid4().hex[:6]}", "g-markers"
    ensure_topics(settings, [topic])
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers(),
                         "transactional.id": f"tx-{uuid.uuid4().hex}"})
    producer.init_transactions()
    for _ in range(5):
        producer.begin_transaction()
        for p in range(4):
            producer.produce(topic, value=b"x", partition=p)
        producer.commit_transaction()
    consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers(), "group.id": group,
                         "isolation.level": "read_committed", "enable.auto.commit": False,
                         "fetch.wait.max.ms": 20})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(4)])
    last: dict[int, int] = {}
    deadline = time.monotonic() + 20
    while sum(1 for o in last.values() if o >= 8) < 4 and time.monotonic() < deadline:
        for msg in consumer.consume(100, 0.2):
            if not msg.error():
                last[msg.partition() or 0] = msg.offset() or 0
    consumer.commit(offsets=[TopicPartition(topic, p, o + 1) for p, o in last.items()],
                    asynchronous=False)
    consumer.close()
    _record(settings, group, topic, per_s=100.0)
    before = sample_group(settings, group, [topic])
    # what a plain committed-offset lag would see: one marker per partition
    assert sum(before.end[s] - before.committed[s] for s in before.end) == 4
    assert before.total_lag == 0
    time.sleep(1.0)
    after = sample_group(settings, group, [topic])
    (found,) = consumers(make_redis(settings), settings)
    advice = advise(found, before, after)
    assert (advice.lag, advice.recommended) == (0, 1)


def test_growing_lag_raises_the_advice(lepton_env: LeptonSettings) -> None:
    settings = lepton_env
    topic, group = f"{settings.topic_prefix}grow-{uuid.uuid4().hex[:6]}", "g-grow"
    ensure_topics(settings, [topic])
    _record(settings, group, topic, per_s=100.0)
    (found,) = consumers(make_redis(settings), settings)
    assert found.capacity == 100.0 and found.replicas == 1
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers()})
    samples = [sample_group(settings, group, [topic])]
    for _ in range(3):  # 40 records a second, nothing consumed
        began = time.monotonic()
        for i in range(40):
            producer.produce(topic, value=b"x", partition=i % 4)
        producer.flush(10)
        time.sleep(max(0.0, 1.0 - (time.monotonic() - began)))
        samples.append(sample_group(settings, group, [topic]))
    pairs = list(itertools.pairwise(samples))
    advice = [advise(found, a, b, drain_s=2.0) for a, b in pairs]
    assert [a.lag for a in advice] == [40, 80, 120]
    for item, (a, b) in zip(advice, pairs, strict=True):
        assert item.arrival_per_s * (b.at - a.at) == pytest.approx(40)  # the known rate
        assert item.lag_growth_per_s > 0
    # one replica does 80/s at 80 %: 40/s plus a 40-record backlog fits, 120 does not
    recommended = [a.recommended for a in advice]
    assert recommended[0] == 1 and recommended[2] == 2 and recommended == sorted(recommended)
    scaled = yaml.safe_load(keda_scaled_object(advice[2], settings.bootstrap_servers()))
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["metadata"]["consumerGroup"] == group
    assert trigger["metadata"]["lagThreshold"] == str(round(100.0 * 0.8 * 30))
    assert trigger["metadata"]["excludePersistentLag"] == "true"
    assert scaled["spec"]["maxReplicaCount"] == 4


def test_capacity_is_measured_in_full_batches_and_small_ones_only_bound_it(
        lepton_env: LeptonSettings) -> None:
    """A stage under light load commits small batches, each paying a whole transaction: their
    work per busy second (here 500/s) is a lower bound, not what a replica does under load."""
    settings = lepton_env
    record = ServiceRecord("governance", settings).start()
    try:
        note_consumer("g-batches", ["t"], batch_size=1000)
        for _ in range(50):
            count_work(10, 0.02)  # a light load: 10 events a batch, 20 ms of commit each
        assert record.write()
        (light,) = consumers(make_redis(settings), settings)
        assert (light.capacity, light.floor) == (None, pytest.approx(500.0))
        for _ in range(3):
            count_work(1000, 0.1)  # under load: full batches, 10k events per busy second
        assert record.write()
        (loaded,) = consumers(make_redis(settings), settings)
        assert loaded.capacity == pytest.approx(10_000.0)
        assert loaded.floor == pytest.approx(3500 / 1.3)
    finally:
        record.close()


def test_a_checkpoint_deep_in_the_positions_topic_is_found_or_reported_unread(
        lepton_env: LeptonSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Input positions are read backwards in growing chunks: a checkpoint deep in the log is
    found across chunk boundaries, beside those the latest transactions wrote; a lag sample
    whose read timeout passes first leaves those partitions' lag out (`unread`) instead of
    failing the whole sample."""
    settings = lepton_env
    tag = uuid.uuid4().hex[:6]
    topic, group = f"{settings.topic_prefix}in-{tag}", f"g-deep-{tag}"
    positions_topic = f"{settings.topic_prefix}pos-{tag}"
    ensure_topics(settings, [topic, positions_topic])
    positions = InputPositions(settings, positions_topic, group)
    deep, recent = (topic, 0), [(topic, p) for p in (1, 2, 3)]
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers(), "linger.ms": 20})
    for p in range(4):
        for _ in range(10):
            producer.produce(topic, value=b"x", partition=p)
    for partition, key, value in positions.records({deep: 5}):
        producer.produce(positions_topic, key=key, value=value, partition=partition)
    # past the 64-, 256- and 1,024-record chunks, into a 2,000 one: other groups' checkpoints
    for _ in range(3_000):
        producer.produce(positions_topic, key=b"other", value=b'{"offset": 1}',
                         partition=positions.partition_of(deep))
    for partition, key, value in positions.records(dict.fromkeys(recent, 7)):
        producer.produce(positions_topic, key=key, value=value, partition=partition)
    assert producer.flush(30) == 0
    assert {s: o for s, (o, _) in positions.load([deep, *recent]).items()} == \
        {deep: 5, **dict.fromkeys(recent, 7)}
    positions.close()

    sample = sample_group(settings, group, [topic], positions_topic)
    assert sample.unread == ()
    assert sample.lag == {deep: 5, **dict.fromkeys(recent, 3)}
    monkeypatch.setattr(lag, "PROBE_TIMEOUT_S", 0.0)  # no time to read any checkpoint
    sample = sample_group(settings, group, [topic], positions_topic)
    assert sample.unread == (deep, *recent)
    assert sample.lag == {}

    # partitions that hold no record need no position: nothing is read, even with no time
    empty = f"{settings.topic_prefix}empty-{tag}"
    ensure_topics(settings, [empty])
    for partition in range(4):  # every checkpoint partition holds records to read
        producer.produce(positions_topic, key=b"other", value=b'{"offset": 1}',
                         partition=partition)
    assert producer.flush(30) == 0
    hasty = InputPositions(settings, positions_topic, group, read_timeout=0.0)
    assert hasty.load([(empty, p) for p in range(4)]) == {}
    hasty.close()
    sample = sample_group(settings, group, [empty], positions_topic)
    assert (sample.unread, sample.lag) == ((), dict.fromkeys([(empty, p) for p in range(4)], 0))


def test_the_trainer_is_advised_but_never_given_a_lag_trigger(lepton_env: LeptonSettings,
                                                              tmp_path: Path) -> None:
    """The trainer commits once per release, so its lag (here 300 records) is the cycle in
    progress: `lepton scale advise` keeps its workers and `--keda` writes it no ScaledObject,
    while the lag-scaled services get theirs."""
    settings = lepton_env
    tag = uuid.uuid4().hex[:6]
    topic = f"{settings.topic_prefix}gov-{tag}"
    ensure_topics(settings, [topic])
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers()})
    for i in range(300):
        producer.produce(topic, value=b"x", partition=i % 4)
    assert producer.flush(10) == 0
    trainer = ServiceRecord("trainer", settings).start()
    try:
        note_consumer(f"g-trainer-{tag}", [topic], lag_scaled=False)
        count_work(300)
    finally:
        trainer.close()
    _record(settings, f"g-ingest-{tag}", topic, per_s=100.0)

    keda = tmp_path / "keda"
    result = lepton("scale", "advise", "--interval", "0.5", "--keda", str(keda))
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert lines["trainer"].startswith("trainer     1 running -> 1 (partitions 4, lag 300,")
    assert "not scaled by lag: it commits once per release" in lines["trainer"]
    assert sorted(p.name for p in keda.iterdir()) == ["ingest.yaml"]
    # a --keda that cannot be a directory fails at once, before any lag is sampled
    refused = lepton("scale", "advise", "--interval", "30", "--keda",
                     str(keda / "ingest.yaml"), check=False)
    assert refused.returncode == 73 and "cannot write" in refused.stderr
