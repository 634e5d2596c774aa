"""kafka-source and kafka-sink throughput against raw aiokafka, on a throwaway single-node Kafka.

A KRaft broker (Apache Kafka from Maven Central, as the tests run it) and the embedded mesh (its
own process) start first. Each run measures, in the same run and on the same broker:

* **source**: EVENTS JSON messages of about 1 KiB (keys and a header) are produced to a 3-partition
  topic, then the kafka-source worker (its own process: polling, publishing with acks, registry
  checkpoints) reads them into the mesh. Its rate counts from the first event the mesh acknowledged
  to the last (the worker's ``meshconnect_records_out_total``, sampled every 20 ms from /metrics;
  the bench checkpoints every 50 ms so that counter moves smoothly), so start-up is not in it.
  Baseline: one aiokafka consumer (no group) reading the same topic.
* **sink**: the mesh topic is filled with EVENTS CloudEvents, then the kafka-sink worker (its own
  process: pushes, batches of BATCH, idempotent producer with acks=all, binary-mode headers, acks to
  the mesh after every message was acknowledged) writes them to a 3-partition topic. Its rate counts
  from the first message in the topic to the last (end offsets sampled every 20 ms). Baseline: one
  idempotent aiokafka producer with acks=all sending the same messages (value, key, ce_ headers) in
  batches of BATCH, each awaited before the next, as the sink does.

The last line is ``ratio: <the lower of source/consumer and sink/producer>``.
``BENCH_EVENTS`` (default 40000) and ``BENCH_RUNS`` (default 2) set the size.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from cloudevents.core.v1.event import CloudEvent

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(ROOT), str(BENCH)]

from protocol import free_port, spawn, stop  # noqa: E402
from workers import start_sink_worker, start_worker, worker_config  # noqa: E402

from runtime import cloudevent_to_record  # noqa: E402
from services.kafka.binding import record_to_message  # noqa: E402
from tests.servers import KafkaServer  # noqa: E402
from tests.services.kafka_client import create_topic  # noqa: E402

RUNS = int(os.environ.get("BENCH_RUNS", "2"))
EVENTS = int(os.environ.get("BENCH_EVENTS", "40000"))
BATCH = 500
PARTITIONS = 3
PAYLOAD = "x" * 900


def value_of(n: int) -> bytes:
    return orjson.dumps({"n": n, "payload": PAYLOAD})


def event_of(n: int, topic: str) -> CloudEvent:
    attributes = {
        "specversion": "1.0",
        "id": f"order-{n}",
        "source": "/bench/orders",
        "type": "order.created",
        "subject": topic,
        "datacontenttype": "application/json",
        "partitionkey": f"customer-{n % 977}",
    }
    return CloudEvent(attributes, {"n": n, "payload": PAYLOAD})


async def produce_input(bootstrap: str, topic: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5)
    await producer.start()
    try:
        for offset in range(0, EVENTS, BATCH):
            futures = [
                await producer.send(topic, value_of(n), key=f"customer-{n % 977}".encode(), headers=[("origin", b"bench")])
                for n in range(offset, min(offset + BATCH, EVENTS))
            ]
            await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def records_out(http: aiohttp.ClientSession, admin_port: int) -> float:
    try:
        async with http.get(f"http://127.0.0.1:{admin_port}/metrics") as response:
            text = await response.text()
    except aiohttp.ClientError:
        return 0.0
    for line in text.splitlines():
        if line.startswith("meshconnect_records_out_total{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def source_rate(kafka: KafkaServer, mesh_port: int, run: int, state: Path) -> float:
    topic = f"bench-in-{run}"
    await create_topic(kafka.bootstrap, topic, PARTITIONS)
    await produce_input(kafka.bootstrap, topic)
    admin_port = free_port()
    config = worker_config(
        f"bench-kafka-source-{run}",
        "kafka-source",
        f"127.0.0.1:{mesh_port}",
        state,
        registry=state / f"registry-{run}",
        # Checkpoints (and the counter the rate is read from) every 50 ms instead of every second.
        source={"topic": f"orders-from-kafka-{run}", "checkpoint_interval": 0.05},
        admin={"host": "127.0.0.1", "port": admin_port},
        config={"bootstrap_servers": [kafka.bootstrap], "topics": [topic], "format": "json"},
    )
    worker = start_worker("services.kafka.source", config)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            deadline = time.monotonic() + 300
            first_at, first_count = 0.0, 0.0
            while True:
                done = await records_out(http, admin_port)
                now = time.perf_counter()
                if done and not first_at:
                    first_at, first_count = now, done
                if done >= EVENTS:
                    return (EVENTS - first_count) / (now - first_at)
                if time.monotonic() > deadline or worker.poll() is not None:
                    raise RuntimeError(f"the source published {done:.0f} of {EVENTS} events")
                await asyncio.sleep(0.02)
    finally:
        stop(worker)


async def raw_consume_rate(kafka: KafkaServer, run: int) -> float:
    topic = f"bench-in-{run}"
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        read = 0
        started = time.perf_counter()
        while read < EVENTS:
            batches = await consumer.getmany(timeout_ms=1000, max_records=BATCH)
            for messages in batches.values():
                for message in messages:
                    orjson.loads(message.value)  # what the source does with a json value, at the least
                read += len(messages)
        return EVENTS / (time.perf_counter() - started)
    finally:
        await consumer.stop()


async def topic_size(consumer: AIOKafkaConsumer, partitions: list[TopicPartition]) -> int:
    return sum((await consumer.end_offsets(partitions)).values())


async def sink_rate(kafka: KafkaServer, mesh_port: int, run: int, state: Path) -> float:
    topic = f"bench-out-{run}"
    mesh_topic = f"orders-to-kafka-{run}"
    await create_topic(kafka.bootstrap, topic, PARTITIONS)
    probe = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap, group_id=None)
    await probe.start()
    partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    worker = await start_sink_worker(
        "services.kafka.sink",
        f"bench-kafka-sink-{run}",
        mesh_port,
        state,
        events=(event_of(n, mesh_topic) for n in range(EVENTS)),
        sink={"topics": [mesh_topic], "batch_size": BATCH, "linger_ms": 20},
        config={"bootstrap_servers": [kafka.bootstrap], "topic": topic},
    )
    try:
        deadline = time.monotonic() + 300
        first_at, first_count = 0.0, 0
        while True:
            written = await topic_size(probe, partitions)
            now = time.perf_counter()
            if written and not first_at:
                first_at, first_count = now, written
            if written >= EVENTS:
                return (EVENTS - first_count) / (now - first_at)
            if time.monotonic() > deadline or worker.poll() is not None:
                raise RuntimeError(f"the sink wrote {written} of {EVENTS} messages")
            await asyncio.sleep(0.02)
    finally:
        stop(worker)
        await probe.stop()


async def raw_produce_rate(kafka: KafkaServer, run: int) -> float:
    topic = f"bench-raw-out-{run}"
    await create_topic(kafka.bootstrap, topic, PARTITIONS)
    messages = [
        record_to_message(cloudevent_to_record(event_of(n, "orders")), mode="binary", key=f"customer-{n % 977}".encode())
        for n in range(EVENTS)
    ]
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        started = time.perf_counter()
        for offset in range(0, EVENTS, BATCH):
            futures = [
                await producer.send(topic, message.value, key=message.key, headers=message.headers)
                for message in messages[offset : offset + BATCH]
            ]
            await asyncio.gather(*futures)
        return EVENTS / (time.perf_counter() - started)
    finally:
        await producer.stop()


async def main() -> None:
    kafka = KafkaServer.running()
    assert isinstance(kafka, KafkaServer)
    mesh_port = free_port()
    mesh = spawn(["-m", "runtime.commands.mesh", "--port", str(mesh_port), "--log-level", "error"], mesh_port)
    ratios: dict[str, list[float]] = {"source": [], "sink": []}
    print(f"events: {EVENTS} of about 1 KiB per run, {PARTITIONS} partitions, batch {BATCH}, runs: {RUNS}")
    try:
        with tempfile.TemporaryDirectory(prefix="meshconnect-bench-") as directory:
            for run in range(RUNS):
                source = await source_rate(kafka, mesh_port, run, Path(directory))
                consume = await raw_consume_rate(kafka, run)
                sink = await sink_rate(kafka, mesh_port, run, Path(directory))
                produce = await raw_produce_rate(kafka, run)
                ratios["source"].append(source / consume)
                ratios["sink"].append(sink / produce)
                print(
                    f"    run {run + 1}: kafka-source {source:,.0f} events/s, raw consumer {consume:,.0f} msgs/s,"
                    f" ratio {source / consume:.2f}"
                )
                print(
                    f"    run {run + 1}: kafka-sink {sink:,.0f} events/s, raw producer {produce:,.0f} msgs/s,"
                    f" ratio {sink / produce:.2f}"
                )
    finally:
        stop(mesh)
        kafka.stop()
    medians = {side: statistics.median(values) for side, values in ratios.items()}
    for side, value in medians.items():
        print(f"{side}: median ratio {value:.3f}")
    print(f"ratio: {min(medians.values()):.3f}")


if __name__ == "__main__":
    asyncio.run(main())
