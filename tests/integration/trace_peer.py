"""A separate process for the cross-process trace tests.

`python trace_peer.py produce|consume confluent|aiokafka TOPIC` prints one JSON line: the
trace id and span id of the publish span (produce), or of the process span and its parent
(consume). Settings come from LEPTON_* like any Lepton process.
"""

from __future__ import annotations

import asyncio
import sys

import orjson
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan

from shared.config import LeptonSettings
from shared.events import HeaderList
from shared.kafka import (
    aiokafka_consumer_settings,
    aiokafka_producer_settings,
    make_consumer,
    make_producer,
)
from shared.tracing import get_tracer, process_span, publish_span, setup_telemetry


def _ids(span: trace.Span) -> dict[str, str]:
    ctx = span.get_span_context()
    out = {"trace_id": f"{ctx.trace_id:032x}", "span_id": f"{ctx.span_id:016x}"}
    if isinstance(span, ReadableSpan) and span.parent is not None:
        out["parent_id"] = f"{span.parent.span_id:016x}"
    return out


def confluent(role: str, topic: str, settings: LeptonSettings) -> dict[str, str]:
    tracer = get_tracer("trace-peer")
    if role == "produce":
        producer = make_producer(settings)
        headers: HeaderList = []
        with publish_span(tracer, topic, headers, key="k") as span:
            producer.produce(topic, key=b"k", value=b"{}", headers=headers)
            ids = _ids(span)
        producer.flush(10)
        return ids
    consumer = make_consumer(settings, "trace-peer-confluent")
    consumer.subscribe([topic])
    try:
        while True:
            msg = consumer.poll(1.0)
            if msg is None or msg.error():
                continue
            with process_span(tracer, topic, msg.headers(), partition=msg.partition(),
                              offset=msg.offset()) as span:
                return _ids(span)
    finally:
        consumer.close()


async def aio(role: str, topic: str, settings: LeptonSettings) -> dict[str, str]:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    tracer = get_tracer("trace-peer")
    if role == "produce":
        producer = AIOKafkaProducer(**aiokafka_producer_settings(settings))
        await producer.start()
        try:
            headers: HeaderList = []
            with publish_span(tracer, topic, headers, key="k") as span:
                await producer.send_and_wait(
                    topic, b"{}", key=b"k",
                    headers=[(k, v if isinstance(v, bytes) else str(v).encode())
                             for k, v in headers],
                )
                return _ids(span)
        finally:
            await producer.stop()
    consumer = AIOKafkaConsumer(topic, **aiokafka_consumer_settings(settings, "trace-peer-aio"))
    await consumer.start()
    try:
        msg = await consumer.getone()
        with process_span(tracer, topic, list(msg.headers), partition=msg.partition,
                          offset=msg.offset) as span:
            return _ids(span)
    finally:
        await consumer.stop()


def main() -> None:
    role, client, topic = sys.argv[1:4]
    setup_telemetry(f"trace-peer-{role}")
    settings = LeptonSettings()
    if client == "confluent":
        ids = confluent(role, topic, settings)
    else:
        ids = asyncio.run(aio(role, topic, settings))
    print(orjson.dumps(ids).decode(), flush=True)


if __name__ == "__main__":
    main()
