"""What the read-back order costs a batch on the embedded broker (shared/stage/written.py).

A transactional producer commits batches of 1,000 records (600 bytes, keyed over the topic's 4
partitions) plus one positions record, two ways, alternating batch by batch in one run:
- before: every record sent by `commit_transaction`;
- read-back order: each record with a `lepton.origin` header, the outputs delivered (`flush`)
  before the positions record is produced, then the commit.
Prints wall and CPU ms per batch (median) for each; the CPU is this process's, which runs the
broker too.

Run: `.venv/bin/python bench/commit_order_bench.py [--batches 200]`.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

from confluent_kafka import Producer

from lepton.broker import EmbeddedBroker
from shared.events import Header

BATCH = 1000
VALUE = b"x" * 600


def one_batch(producer: Producer, topic: str, positions: str, batch: int, read_back: bool
              ) -> tuple[float, float]:
    """Wall and CPU seconds for one committed batch."""
    wall, cpu = time.perf_counter(), time.process_time()
    producer.begin_transaction()
    for i in range(BATCH):
        headers = [("content-type", b"application/json")]
        if read_back:
            headers = [*headers, (Header.ORIGIN, f"in/{i % 4}/{batch * BATCH + i}".encode())]
        producer.produce(topic, key=str(i % 97).encode(), value=VALUE, headers=headers)
    if read_back:
        while producer.flush(5):
            pass
    producer.produce(positions, key=b"group/in/0", value=b'{"offset": %d}' % batch, partition=0)
    producer.commit_transaction(30)
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    """Run both orders, alternating, and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=200)
    args = parser.parse_args()
    with EmbeddedBroker(1) as broker:
        tag = uuid.uuid4().hex[:6]
        topic, positions = f"bench-{tag}.out", f"bench-{tag}.offsets"
        broker.ensure_topics([topic, positions])
        producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 10_000,
                             "transactional.id": f"bench-{tag}", "compression.type": "lz4",
                             "enable.idempotence": True, "log_level": 3})
        producer.init_transactions(30)
        results: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        for batch in range(2 * args.batches):
            read_back = batch % 2 == 1
            results[read_back].append(one_batch(producer, topic, positions, batch, read_back))
    print(f"\n{args.batches} batches of {BATCH} records each way, alternating.\n")
    print("| order | wall ms/batch (median) | CPU ms/batch (median) | CPU µs/record |")
    print("|---|---:|---:|---:|")
    for read_back, name in ((False, "before: all sent by the commit"),
                            (True, "read-back: origin header, outputs delivered first")):
        wall = statistics.median(w for w, _ in results[read_back][5:]) * 1000
        cpu = statistics.median(c for _, c in results[read_back][5:]) * 1000
        print(f"| {name} | {wall:.2f} | {cpu:.2f} | {cpu * 1000 / BATCH:.2f} |")


if __name__ == "__main__":
    main()
