"""The catalogue's measures of the connectors whose system is a server: Redis, RabbitMQ, MQTT, NATS JetStream,
Kafka, PostgreSQL (see bench/catalogue.py)."""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aio_pika  # noqa: E402
import aiomqtt  # noqa: E402
import asyncpg  # noqa: E402
import nats  # noqa: E402
import orjson  # noqa: E402
import redis.asyncio as aioredis  # noqa: E402
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # noqa: E402

from bench.catalogue_common import BATCH, EVENTS, Measure, batches, make_records, sink_run, source_run  # noqa: E402
from runtime import SourceContext, record_to_json  # noqa: E402
from services.kafka.binding import record_to_message  # noqa: E402
from services.kafka.sink.connector import KafkaSink, KafkaSinkConfig  # noqa: E402
from services.kafka.source.connector import KafkaSource, KafkaSourceConfig  # noqa: E402
from services.mqtt.sink.connector import MqttSink, MqttSinkConfig  # noqa: E402
from services.mqtt.source.connector import MqttSource, MqttSourceConfig  # noqa: E402
from services.nats.sink.connector import NatsSink, NatsSinkConfig  # noqa: E402
from services.nats.source.connector import NatsSource, NatsSourceConfig  # noqa: E402
from services.postgres.sink.connector import PostgresSink, PostgresSinkConfig  # noqa: E402
from services.postgres.source.connector import PostgresSource, PostgresSourceConfig  # noqa: E402
from services.rabbitmq.sink.connector import RabbitmqSink, RabbitmqSinkConfig  # noqa: E402
from services.rabbitmq.source.connector import RabbitmqSource, RabbitmqSourceConfig  # noqa: E402
from services.redis.sink.connector import RedisSink, RedisSinkConfig  # noqa: E402
from services.redis.source.connector import RedisSource, RedisSourceConfig  # noqa: E402
from tests.servers import KafkaServer, MosquittoServer, NatsServer, PostgresServer, RedisServer  # noqa: E402
from tests.services.kafka_client import create_topic  # noqa: E402

# -- redis -------------------------------------------------------------------------------------


def redis(server: RedisServer) -> tuple[tuple[Measure, Measure], tuple[Measure, Measure]]:
    async def sink() -> float:
        config = RedisSinkConfig(url=server.url, key=f"s-{uuid.uuid4().hex[:6]}")  # type: ignore[arg-type]
        return await sink_run(RedisSink(config), make_records(EVENTS))

    async def sink_raw() -> float:
        client = aioredis.Redis.from_url(server.url)
        key = f"r-{uuid.uuid4().hex[:6]}"
        try:
            started = time.perf_counter()
            for batch in batches(make_records(EVENTS)):
                pipe = client.pipeline(transaction=False)
                for record in batch:
                    pipe.xadd(key, {"event": record_to_json(record)})
                await pipe.execute()
            return time.perf_counter() - started
        finally:
            await client.aclose()

    async def filled() -> str:
        key = f"in-{uuid.uuid4().hex[:6]}"
        client = aioredis.Redis.from_url(server.url)
        pipe = client.pipeline(transaction=False)
        for record in make_records(EVENTS):
            pipe.xadd(key, {"event": record_to_json(record)})
        await pipe.execute()
        await client.aclose()
        return key

    async def source() -> float:
        key = await filled()
        return await source_run(RedisSource(RedisSourceConfig(url=server.url, streams=[key], batch_size=BATCH)), EVENTS)  # type: ignore[arg-type]

    async def source_raw() -> float:
        key = await filled()
        client = aioredis.Redis.from_url(server.url)
        try:
            await client.xgroup_create(key, "raw", id="0")
            started = time.perf_counter()
            seen = 0
            while seen < EVENTS:
                reply = await client.xreadgroup("raw", "c", {key: ">"}, count=BATCH, block=1000)
                for _, entries in reply:
                    for _, fields in entries:
                        orjson.loads(fields[b"event"])
                    await client.xack(key, "raw", *[entry_id for entry_id, _ in entries])
                    seen += len(entries)
            return time.perf_counter() - started
        finally:
            await client.aclose()

    return (sink, sink_raw), (source, source_raw)


# -- rabbitmq ----------------------------------------------------------------------------------


def rabbitmq(url: str) -> tuple[tuple[Measure, Measure], tuple[Measure, Measure]]:
    async def declared() -> str:
        queue = f"q-{uuid.uuid4().hex[:6]}"
        connection = await aio_pika.connect(url)
        channel = await connection.channel()
        await channel.declare_queue(queue, durable=True)
        await connection.close()
        return queue

    async def sink() -> float:
        queue = await declared()
        return await sink_run(RabbitmqSink(RabbitmqSinkConfig(url=url, routing_key=queue)), make_records(EVENTS))  # type: ignore[arg-type]

    async def sink_raw() -> float:
        queue = await declared()
        connection = await aio_pika.connect(url)
        try:
            channel = await connection.channel(publisher_confirms=True)
            started = time.perf_counter()
            for batch in batches(make_records(EVENTS)):
                await asyncio.gather(
                    *(
                        channel.default_exchange.publish(
                            aio_pika.Message(record_to_json(r), message_id=r.id, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                            queue,
                        )
                        for r in batch
                    )
                )
            return time.perf_counter() - started
        finally:
            await connection.close()

    async def filled() -> str:
        queue = await declared()
        connection = await aio_pika.connect(url)
        channel = await connection.channel(publisher_confirms=False)
        for record in make_records(EVENTS):
            await channel.default_exchange.publish(aio_pika.Message(record_to_json(record)), queue)
        await connection.close()
        return queue

    async def source() -> float:
        queue = await filled()
        return await source_run(RabbitmqSource(RabbitmqSourceConfig(url=url, queue=queue, batch_size=BATCH)), EVENTS)  # type: ignore[arg-type]

    async def source_raw() -> float:
        queue_name = await filled()
        connection = await aio_pika.connect(url)
        try:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=1000)
            queue = await channel.declare_queue(queue_name, durable=True)
            started = time.perf_counter()
            seen = 0
            async with queue.iterator() as messages:
                async for message in messages:
                    orjson.loads(message.body)
                    await message.ack()
                    seen += 1
                    if seen >= EVENTS:
                        break
            return time.perf_counter() - started
        finally:
            await connection.close()

    return (sink, sink_raw), (source, source_raw)


# -- mqtt --------------------------------------------------------------------------------------


def mqtt(server: MosquittoServer) -> tuple[tuple[Measure, Measure], tuple[Measure, Measure]]:
    async def sink() -> float:
        return await sink_run(MqttSink(MqttSinkConfig(port=server.port, topic="bench/sink")), make_records(EVENTS))

    async def sink_raw() -> float:
        async with aiomqtt.Client("127.0.0.1", server.port, max_inflight_messages=1000) as client:
            started = time.perf_counter()
            for batch in batches(make_records(EVENTS)):
                await asyncio.gather(*(client.publish("bench/raw", record_to_json(r), qos=1) for r in batch))
            return time.perf_counter() - started

    async def measure_source(read: Callable[[str], Awaitable[float]]) -> float:
        topic = f"bench/in-{uuid.uuid4().hex[:6]}"
        reading = asyncio.create_task(read(topic))
        await asyncio.sleep(0.5)  # subscribed before anything is published
        async with aiomqtt.Client("127.0.0.1", server.port, max_inflight_messages=1000) as client:
            for batch in batches(make_records(EVENTS)):
                await asyncio.gather(*(client.publish(topic, record_to_json(r), qos=1) for r in batch))
        return await reading

    async def source() -> float:
        async def read(topic: str) -> float:
            config = MqttSourceConfig(
                port=server.port, topics=[topic], client_id=f"bench-{uuid.uuid4().hex[:6]}", batch_size=BATCH
            )
            return await source_run(MqttSource(config), EVENTS)

        return await measure_source(read)

    async def source_raw() -> float:
        async def read(topic: str) -> float:
            async with aiomqtt.Client(
                "127.0.0.1", server.port, identifier=f"raw-{uuid.uuid4().hex[:6]}", clean_session=False
            ) as client:
                await client.subscribe(topic, qos=1)
                started = time.perf_counter()
                seen = 0
                async for message in client.messages:  # PUBACK sent by the library as each arrives
                    orjson.loads(message.payload)  # type: ignore[arg-type]
                    seen += 1
                    if seen >= EVENTS:
                        break
                return time.perf_counter() - started

        return await measure_source(read)

    return (sink, sink_raw), (source, source_raw)


# -- nats --------------------------------------------------------------------------------------


def jetstream(server: NatsServer) -> tuple[tuple[Measure, Measure], tuple[Measure, Measure]]:
    async def stream() -> str:
        name = f"B{uuid.uuid4().hex[:6]}"
        client = await nats.connect(server.url)
        await client.jetstream().add_stream(name=name, subjects=[f"{name}.>"])
        await client.close()
        return name

    async def sink() -> float:
        name = await stream()
        config = NatsSinkConfig(servers=[server.url], subject=f"{name}.{{topic}}", stream=name)
        return await sink_run(NatsSink(config), make_records(EVENTS))

    async def sink_raw() -> float:
        name = await stream()
        client = await nats.connect(server.url)
        try:
            js = client.jetstream()
            started = time.perf_counter()
            for batch in batches(make_records(EVENTS)):
                await asyncio.gather(
                    *(
                        js.publish(f"{name}.bench", record_to_json(r), headers={"Nats-Msg-Id": f"{r.source} {r.id}"})
                        for r in batch
                    )
                )
            return time.perf_counter() - started
        finally:
            await client.close()

    async def filled() -> str:
        name = await stream()
        client = await nats.connect(server.url)
        js = client.jetstream()
        for batch in batches(make_records(EVENTS)):
            await asyncio.gather(*(js.publish(f"{name}.in", record_to_json(r)) for r in batch))
        await client.close()
        return name

    async def source() -> float:
        name = await filled()
        config = NatsSourceConfig(servers=[server.url], stream=name, durable="bench", batch_size=BATCH)
        return await source_run(NatsSource(config), EVENTS)

    async def source_raw() -> float:
        name = await filled()
        client = await nats.connect(server.url)
        try:
            subscription = await client.jetstream().pull_subscribe("", durable="raw", stream=name)
            started = time.perf_counter()
            seen = 0
            while seen < EVENTS:
                for message in await subscription.fetch(BATCH, timeout=5):
                    orjson.loads(message.data)
                    await message.ack()
                    seen += 1
            return time.perf_counter() - started
        finally:
            await client.close()

    return (sink, sink_raw), (source, source_raw)


# -- kafka -------------------------------------------------------------------------------------


def kafka(server: KafkaServer) -> tuple[tuple[Measure, Measure], tuple[Measure, Measure]]:
    async def topic() -> str:
        name = f"bench-{uuid.uuid4().hex[:6]}"
        await create_topic(server.bootstrap, name)
        return name

    async def producer() -> AIOKafkaProducer:
        client = AIOKafkaProducer(bootstrap_servers=server.bootstrap, acks="all", enable_idempotence=True)
        await client.start()
        return client

    async def sink() -> float:
        config = KafkaSinkConfig(bootstrap_servers=[server.bootstrap], topic=await topic())
        return await sink_run(KafkaSink(config), make_records(EVENTS))

    async def sink_raw() -> float:  # the same binary-mode messages, each batch awaited whole as put does
        name = await topic()
        client = await producer()
        try:
            started = time.perf_counter()
            for batch in batches(make_records(EVENTS)):
                messages = [record_to_message(r, mode="binary", key=None) for r in batch]
                futures = [await client.send(name, m.value, headers=m.headers) for m in messages]
                await asyncio.gather(*futures)
            return time.perf_counter() - started
        finally:
            await client.stop()

    async def filled() -> str:
        name = await topic()
        client = await producer()
        try:
            for batch in batches(make_records(EVENTS)):
                await asyncio.gather(*[await client.send(name, record_to_json(r)) for r in batch])
        finally:
            await client.stop()
        return name

    async def source() -> float:
        name = await filled()
        kafka_source = KafkaSource(KafkaSourceConfig(bootstrap_servers=[server.bootstrap], topics=[name], batch_size=BATCH))
        groups = frozenset(await kafka_source.partition_groups())
        await kafka_source.start(SourceContext(connector_name="bench", committed_offsets={}, assigned_groups=groups))
        try:
            started = time.perf_counter()
            seen = 0
            while seen < EVENTS:
                seen += len(await kafka_source.poll())  # offsets live in the registry: nothing to ack upstream
            return time.perf_counter() - started
        finally:
            await kafka_source.stop()

    async def source_raw() -> float:
        name = await filled()
        consumer = AIOKafkaConsumer(bootstrap_servers=server.bootstrap, group_id=None, enable_auto_commit=False)
        await consumer.start()
        try:
            partition = TopicPartition(name, 0)
            consumer.assign([partition])
            await consumer.seek_to_beginning(partition)
            started = time.perf_counter()
            seen = 0
            while seen < EVENTS:
                for messages in (await consumer.getmany(timeout_ms=1000, max_records=BATCH)).values():
                    for message in messages:
                        orjson.loads(message.value)
                        seen += 1
            return time.perf_counter() - started
        finally:
            await consumer.stop()

    return (sink, sink_raw), (source, source_raw)


# -- postgres ----------------------------------------------------------------------------------


_GET_CHANGES = "SELECT data FROM pg_logical_slot_get_binary_changes($1, NULL, $2, 'proto_version', '1', 'publication_names', $3)"


async def _pg(dsn: str) -> asyncpg.Connection:
    for _ in range(300):
        try:
            return await asyncpg.connect(dsn)
        except (asyncpg.CannotConnectNowError, OSError):
            await asyncio.sleep(0.1)
    return await asyncpg.connect(dsn)


def postgres(server: PostgresServer) -> tuple[tuple[Measure, Measure], tuple[Measure, Measure]]:
    async def sink() -> float:
        return await sink_run(
            PostgresSink(PostgresSinkConfig(dsn=server.dsn, table=f"e_{uuid.uuid4().hex[:6]}")), make_records(EVENTS)
        )  # type: ignore[arg-type]

    async def sink_raw() -> float:
        table = f"r_{uuid.uuid4().hex[:6]}"
        connection = await _pg(server.dsn)
        try:
            await connection.execute(
                f"CREATE TABLE {table} (source text, id text, type text, time timestamptz, data jsonb, PRIMARY KEY (source, id))"
            )
            started = time.perf_counter()
            for batch in batches(make_records(EVENTS)):
                rows = [(r.source, r.id, r.type, r.timestamp, orjson.dumps(r.data).decode()) for r in batch]
                async with connection.transaction():
                    await connection.executemany(f"INSERT INTO {table} VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING", rows)
            return time.perf_counter() - started
        finally:
            await connection.close()

    async def filled(slot: str) -> None:
        connection = await _pg(server.dsn)
        await connection.execute(f"CREATE TABLE {slot} (id int PRIMARY KEY, name text)")
        await connection.execute(f"CREATE PUBLICATION {slot} FOR TABLE {slot}")
        await connection.execute("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", slot)
        for start in range(0, EVENTS, BATCH):  # one transaction per batch, as an application would
            await connection.execute(
                f"INSERT INTO {slot} SELECT n, repeat('x', 200) FROM generate_series($1::int, $2::int) n",
                start,
                start + BATCH - 1,
            )
        await connection.close()

    async def dropped(slot: str) -> None:
        connection = await _pg(server.dsn)
        await connection.execute("SELECT pg_drop_replication_slot($1)", slot)
        await connection.close()

    async def source() -> float:
        slot = f"s_{uuid.uuid4().hex[:6]}"
        await filled(slot)
        try:
            config = PostgresSourceConfig(dsn=server.dsn, slot=slot, publication=slot, batch_size=BATCH)  # type: ignore[arg-type]
            return await source_run(PostgresSource(config), EVENTS)
        finally:
            await dropped(slot)

    async def source_raw() -> float:
        slot = f"s_{uuid.uuid4().hex[:6]}"
        await filled(slot)
        connection = await _pg(server.dsn)
        try:  # consume the same changes with the SQL interface, a batch of transactions at a time
            started = time.perf_counter()
            seen = 0
            while seen < EVENTS:
                rows = await connection.fetch(
                    _GET_CHANGES,
                    slot,
                    BATCH,
                    slot,
                )
                seen += sum(1 for row in rows if bytes(row["data"][:1]) == b"I")
            return time.perf_counter() - started
        finally:
            await connection.close()
            await dropped(slot)

    return (sink, sink_raw), (source, source_raw)
