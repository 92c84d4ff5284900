"""A stage's transaction cut off by a broker freeze leaves nothing visible once the broker
resumes. The embedded broker keeps no transaction state: it shows every record it received to
read_committed readers, aborted or never committed ones included. A stage that gave up on its
commit (SIGTERM with the broker frozen) left its batch's records in the frozen broker's socket;
on resume the broker applied part of them, without the input positions of the same transaction,
and the restarted stage processed the batch again (seen in the fault suite's SIGTERM scenario:
119 and 356 governed events twice, in 2 of 11 runs).

Now a transactional producer holds a batch's records until commit_transaction sends them
together, and a process that exits unfinished resets its connections (shared/abandon.py), so
the broker discards what it still buffered. Here a child process produces 2,000 records of a
transaction across four partitions and its positions record, pausing half-way as a slow batch
would; the broker is frozen then; the child's commit times out and it exits as an unfinished
stage does. Sending records as they were produced showed the first half (1,000 records); a
plain exit showed the first request of the commit (500)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from shared.config import LeptonSettings
from shared.kafka import consumer_config, ensure_topics, make_producer
from shared.lifecycle import parent_death
from tests.faults.conftest import PrivateBroker, Processes

TOPICS = ("frozen.out", "frozen.positions")
CHILD = r"""
import os, sys, time
from shared.abandon import reset_on_exit
from shared.config import LeptonSettings
from shared.kafka import make_producer
producer = make_producer(LeptonSettings(kafka_bootstrap=sys.argv[1]), transactional_id="frozen")
producer.begin_transaction()
for i in range(2000):
    producer.produce("frozen.out", b"x" * 800, partition=i % 4)
    producer.poll(0)
    if i == 1000:
        time.sleep(0.5)  # a slow batch: time enough to send what was produced so far
        print("half-way", flush=True)
        time.sleep(1.0)  # the broker is frozen meanwhile
producer.produce("frozen.positions", b"positions", partition=0)
try:
    producer.commit_transaction(3)
except Exception as error:
    print("commit failed:", error, flush=True)
reset_on_exit()
os._exit(1)
"""


def _records(settings: LeptonSettings) -> int:
    consumer = Consumer(consumer_config(settings, "frozen-reader", log_level=3))
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for topic in TOPICS
                     for p in range(4)])
    count, deadline = 0, time.monotonic() + 5.0
    try:
        while time.monotonic() < deadline:
            count += sum(1 for m in consumer.consume(1000, timeout=0.3)
                         if m.error() is None and m.value() != b"before")
    finally:
        consumer.close()
    return count


def test_a_transaction_cut_off_by_a_freeze_leaves_nothing_visible(
        private_broker: PrivateBroker, processes: Processes) -> None:
    settings = LeptonSettings(kafka_bootstrap=private_broker.bootstrap)
    ensure_topics(settings, list(TOPICS))
    before = make_producer(settings)
    for topic in TOPICS:
        before.produce(topic, b"before", partition=0)
    assert before.flush(10) == 0
    child = subprocess.Popen([sys.executable, "-c", CHILD, private_broker.bootstrap],
                             stdout=subprocess.PIPE, text=True, preexec_fn=parent_death())
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "half-way"
        processes.signal(private_broker.name, signal.SIGSTOP)
        assert child.wait(30) == 1  # its commit timed out and it exited unfinished
    finally:
        child.kill()
        processes.signal(private_broker.name, signal.SIGCONT)
    time.sleep(1.0)  # the broker reads what its sockets still held
    assert _records(settings) == 0
