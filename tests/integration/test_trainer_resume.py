"""SIGKILL the trainer mid-training, restart it: it continues from the last committed batch and
no record is trained twice (the offset ranges in the signed cards tile every partition exactly
once) — including a version whose post-save steps the kill may have cut short."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time

import orjson
import pytest

from shared.config import LeptonSettings
from shared.lifecycle import parent_death
from shared.models.registry import Registry
from shared.topics import Topics
from tests.helpers import read_topic
from tests.unit.trainer.governed import governed_breast_cancer, non_private_env, publish_governed

TOTAL = 1707


def _start(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "services.trainer"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, preexec_fn=parent_death())


def _kill(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.slow
def test_sigkill_then_restart_trains_every_batch_once(lepton_env: LeptonSettings) -> None:
    publish_governed(lepton_env, governed_breast_cancer(TOTAL))
    env = {**os.environ, **non_private_env(), "LEPTON_TRAINER_DATASET": "breast_cancer",
           "LEPTON_TRAINER_CYCLE_ROWS": "200", "LEPTON_TRAINER_BATCH_SIZE": "100",
           "LEPTON_TRAINER_EPOCHS": "20", "LEPTON_TRAINER_MAX_WAIT_S": "0.5",
           "LEPTON_TRAINER_EXIT_WHEN_IDLE_S": "2"}
    registry = Registry(lepton_env)
    first = _start(env)
    try:
        deadline = time.monotonic() + 60
        while len(registry.versions("breast_cancer")) < 2:
            assert first.poll() is None, first.communicate()[0][-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        _kill(first)
    assert first.returncode == -signal.SIGKILL
    before = registry.versions("breast_cancer")
    assert len(before) < 8  # killed with most of the stream still untrained

    second = _start(env)
    try:
        output, _ = second.communicate(timeout=120)
    finally:
        _kill(second)
    assert second.returncode == 0, output[-3000:]

    versions = registry.versions("breast_cancer")
    assert len(versions) > len(before)
    cards = [registry.load("breast_cancer", v)[0] for v in versions]
    high = {}
    for record in read_topic(lepton_env, Topics(lepton_env.topic_prefix).governed,
                             expect=TOTAL):
        high[record.partition] = max(high.get(record.partition, -1), record.offset)
    for partition, last in high.items():
        ranges = sorted(tuple(c.lineage["partitions"][str(partition)]) for c in cards
                        if str(partition) in c.lineage["partitions"])
        assert ranges[0][0] == 0
        assert ranges[-1][1] == last
        for (_, end), (start, _) in itertools.pairwise(ranges):
            assert start == end + 1, f"partition {partition}: {ranges}"
    assert sum(c.lineage["rows"]["consumed"] for c in cards) == TOTAL
    # each version's release decision exists, under one id (a replay after the kill reuses it)
    ids: dict[int, set[str]] = {}
    for record in read_topic(lepton_env, Topics(lepton_env.topic_prefix).audit_requests,
                             idle=1.0):
        decision = orjson.loads(record.value)
        if decision["kind"] in ("model_promoted", "model_refused"):
            ids.setdefault(decision["detail"]["version"], set()).add(decision["decision_id"])
    assert sorted(ids) == versions
    assert all(len(found) == 1 for found in ids.values())
    print(f"\nkilled after v{before[-1]}; restart released v{before[-1] + 1}..v{versions[-1]}")


def test_sigterm_finishes_the_cycle_commits_and_exits_zero(lepton_env: LeptonSettings) -> None:
    from confluent_kafka import Consumer, TopicPartition

    from shared.readiness import ready_path

    publish_governed(lepton_env, governed_breast_cancer(TOTAL))
    env = {**os.environ, **non_private_env(), "LEPTON_TRAINER_DATASET": "breast_cancer",
           "LEPTON_TRAINER_CYCLE_ROWS": "200", "LEPTON_TRAINER_BATCH_SIZE": "100",
           "LEPTON_TRAINER_EPOCHS": "20", "LEPTON_TRAINER_MAX_WAIT_S": "0.5"}
    registry = Registry(lepton_env)
    proc = _start(env)
    try:
        deadline = time.monotonic() + 60
        while not registry.versions("breast_cancer"):
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert ready_path(lepton_env, "trainer").exists()
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=20)
    finally:
        _kill(proc)
    assert proc.returncode == 0, output[-3000:]
    assert not ready_path(lepton_env, "trainer").exists()
    last = registry.card("breast_cancer", registry.versions("breast_cancer")[-1])
    consumer = Consumer({"bootstrap.servers": lepton_env.bootstrap_servers(),
                         "group.id": "lepton-trainer-breast_cancer"})
    try:
        topic = Topics(lepton_env.topic_prefix).governed
        committed = consumer.committed([TopicPartition(topic, p) for p in range(4)], timeout=10)
    finally:
        consumer.close()
    assert {str(tp.partition): tp.offset for tp in committed if tp.offset >= 0} == (
        last.lineage["resume_offsets"])
    assert sum(last.lineage["resume_offsets"].values()) < TOTAL  # stopped mid-stream
