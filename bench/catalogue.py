"""Connector catalogue: each connector's events/s against its system's own raw client doing the same work.

Every connector is driven directly (sinks: ``put`` of batches of ``BATCH``; sources: ``poll`` +
``commit`` until ``EVENTS`` records were read), and its baseline is a plain client of the same
library doing the same job in the same run: the same payload bytes, the same batching or window,
the same durability (fsync, publisher confirms, PUBACKs, JetStream acks, committed rows, acks
upstream). Servers are throwaway (tests/servers.py), RabbitMQ is the machine's, in a vhost of its
own. A connector whose system is missing is skipped. Each measure is the median of ``RUNS``.

Prints one line per connector (events/s, raw events/s, ratio), then ``ratio: <median ratio>``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aio_pika  # noqa: E402
import aiohttp  # noqa: E402
import aiomqtt  # noqa: E402
import asyncpg  # noqa: E402
import nats  # noqa: E402
import orjson  # noqa: E402
import redis.asyncio as aioredis  # noqa: E402
from aiohttp import web  # noqa: E402
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # noqa: E402

from runtime import record_to_json  # noqa: E402
from runtime.connector import Sink, SinkContext, Source, SourceContext  # noqa: E402
from runtime.record import ConnectorRecord  # noqa: E402
from services.chat.client import ChatbotSink  # noqa: E402
from services.chat.dingtalk.connector import DingtalkSink  # noqa: E402
from services.chat.lark.connector import LarkSink  # noqa: E402
from services.chat.slack.connector import SlackSink  # noqa: E402
from services.chat.wecom.connector import WecomSink  # noqa: E402
from services.file_sink.connector import FileSink, FileSinkConfig  # noqa: E402
from services.file_source.connector import FileSource, FileSourceConfig  # noqa: E402
from services.http.knative.connector import KnativeSink, KnativeSinkConfig  # noqa: E402
from services.http.sink.connector import HttpSink, HttpSinkConfig  # noqa: E402
from services.http.source.connector import HttpSource, HttpSourceConfig  # noqa: E402
from services.kafka.binding import record_to_message  # noqa: E402
from services.kafka.sink.connector import KafkaSink, KafkaSinkConfig  # noqa: E402
from services.kafka.source.connector import KafkaSource, KafkaSourceConfig  # noqa: E402
from services.mqtt.sink.connector import MqttSink, MqttSinkConfig  # noqa: E402
from services.mqtt.source.connector import MqttSource, MqttSourceConfig  # noqa: E402
from services.nats.sink.connector import NatsSink, NatsSinkConfig  # noqa: E402
from services.nats.source.connector import NatsSource, NatsSourceConfig  # noqa: E402
from services.postgres.sink.connector import PostgresSink, PostgresSinkConfig  # noqa: E402
from services.postgres.source.connector import PostgresSource, PostgresSourceConfig  # noqa: E402
from services.prometheus_source.connector import PrometheusSource, PrometheusSourceConfig  # noqa: E402
from services.rabbitmq.sink.connector import RabbitmqSink, RabbitmqSinkConfig  # noqa: E402
from services.rabbitmq.source.connector import RabbitmqSource, RabbitmqSourceConfig  # noqa: E402
from services.redis.sink.connector import RedisSink, RedisSinkConfig  # noqa: E402
from services.redis.source.connector import RedisSource, RedisSourceConfig  # noqa: E402
from tests.servers import KafkaServer, MosquittoServer, NatsServer, PostgresServer, RedisServer, free_port  # noqa: E402
from tests.services.kafka_client import create_topic  # noqa: E402

EVENTS = int(os.environ.get("BENCH_EVENTS", "4000"))
BATCH = 500
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
HTTP_CONCURRENCY = 16

Measure = Callable[[], Awaitable[float]]
"""Runs the work once and returns its seconds."""


def _records(count: int, subject: str = "bench") -> list[ConnectorRecord]:
    now = datetime.now(UTC)
    return [
        ConnectorRecord(
            data={"n": n, "text": "x" * 200},
            id=f"e-{uuid.uuid4().hex}-{n}",
            source="/bench",
            type="bench",
            subject=subject,
            timestamp=now,
        )
        for n in range(count)
    ]


def _batches(records: list[ConnectorRecord]) -> list[list[ConnectorRecord]]:
    return [records[i : i + BATCH] for i in range(0, len(records), BATCH)]


async def _timed(work: Awaitable[Any]) -> float:
    started = time.perf_counter()
    await work
    return time.perf_counter() - started


async def _sink_run(sink: Sink[Any], records: list[ConnectorRecord]) -> float:
    await sink.start(SinkContext(connector_name="bench"))
    try:
        started = time.perf_counter()
        for batch in _batches(records):
            await sink.put(batch)
        return time.perf_counter() - started
    finally:
        await sink.stop()


async def _source_run(source: Source[Any], count: int) -> float:
    await source.start(SourceContext(connector_name="bench", committed_offsets={}))
    try:
        started = time.perf_counter()
        seen = 0
        while seen < count:
            records = await source.poll()
            await source.commit(records)
            seen += len(records)
        return time.perf_counter() - started
    finally:
        await source.stop()


# -- file --------------------------------------------------------------------------------------


def file_sink(workdir: Path) -> tuple[Measure, Measure]:
    async def connector() -> float:
        directory = workdir / f"sink-{uuid.uuid4().hex[:6]}"
        return await _sink_run(FileSink(FileSinkConfig(directory=str(directory))), _records(EVENTS))

    async def raw() -> float:
        records = _records(EVENTS)
        path = workdir / f"raw-{uuid.uuid4().hex[:6]}.jsonl"

        def append(handle: Any, chunk: bytes) -> None:
            handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())

        with path.open("ab") as handle:
            started = time.perf_counter()
            for batch in _batches(records):  # one fsync'ed write per batch, in a thread, as the connector does
                await asyncio.to_thread(append, handle, b"".join(record_to_json(record) + b"\n" for record in batch))
            return time.perf_counter() - started

    return connector, raw


def file_source(workdir: Path) -> tuple[Measure, Measure]:
    async def prepared() -> Path:
        path = workdir / f"in-{uuid.uuid4().hex[:6]}.log"
        path.write_bytes(b"".join(record_to_json(record) + b"\n" for record in _records(EVENTS)))
        return path

    async def connector() -> float:
        path = await prepared()
        return await _source_run(FileSource(FileSourceConfig(paths=[str(path)], format="cloudevents", batch_size=BATCH)), EVENTS)

    async def raw() -> float:
        path = await prepared()

        def read() -> int:
            with path.open("rb") as handle:
                return sum(1 for line in handle if orjson.loads(line))

        return await _timed(asyncio.to_thread(read))

    return connector, raw


# -- http --------------------------------------------------------------------------------------


class _Receiver:
    """An HTTP endpoint answering every POST in this process: 204, or 200 with ``answer`` as JSON (a chat API's success)."""

    def __init__(self, answer: dict[str, Any] | None = None) -> None:
        self.runner: web.AppRunner | None = None
        self.url = ""
        self.answer = None if answer is None else orjson.dumps(answer)

    async def start(self) -> None:
        async def accept(request: web.Request) -> web.Response:
            await request.read()
            if self.answer is not None:
                return web.Response(body=self.answer, content_type="application/json")
            return web.Response(status=204)

        app = web.Application()
        app.router.add_post("/in{tail:.*}", accept)  # any path under /in: an API base URL takes its method's path
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}/in"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def _post_all(url: str, bodies: list[tuple[dict[str, str], bytes]]) -> None:
    """POST every body, HTTP_CONCURRENCY at a time, each awaited for a 2xx."""
    connector = aiohttp.TCPConnector(limit=HTTP_CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:
        gate = asyncio.Semaphore(HTTP_CONCURRENCY)

        async def post(headers: dict[str, str], body: bytes) -> None:
            async with gate, session.post(url, data=body, headers=headers) as response:
                await response.read()
                assert response.status < 300, response.status

        await asyncio.gather(*(post(headers, body) for headers, body in bodies))


def http_sink(workdir: Path) -> tuple[Measure, Measure]:
    receiver = _Receiver()

    async def connector() -> float:
        await receiver.start()
        try:
            return await _sink_run(HttpSink(HttpSinkConfig(urls=[receiver.url], concurrency=HTTP_CONCURRENCY)), _records(EVENTS))
        finally:
            await receiver.stop()

    async def raw() -> float:
        await receiver.start()
        try:
            bodies = [({"content-type": "application/cloudevents+json"}, record_to_json(r)) for r in _records(EVENTS)]
            started = time.perf_counter()
            for start in range(0, len(bodies), BATCH):
                await _post_all(receiver.url, bodies[start : start + BATCH])
            return time.perf_counter() - started
        finally:
            await receiver.stop()

    return connector, raw


def http_source(workdir: Path) -> tuple[Measure, Measure]:
    bodies = [({"content-type": "application/cloudevents+json"}, record_to_json(r)) for r in _records(EVENTS)]

    async def connector() -> float:
        port = free_port()
        source = HttpSource(HttpSourceConfig(host="127.0.0.1", port=port, path="/in", queue_size=EVENTS, batch_size=BATCH))
        await source.start(SourceContext(connector_name="bench", committed_offsets={}))

        async def pump() -> None:  # the worker's part: poll, and commit what was polled
            while True:
                await source.commit(await source.poll())

        pumping = asyncio.create_task(pump())
        try:
            return await _timed(_post_all(f"http://127.0.0.1:{port}/in", bodies))
        finally:
            pumping.cancel()
            await asyncio.gather(pumping, return_exceptions=True)
            await source.stop()

    async def raw() -> float:
        receiver = _Receiver()
        await receiver.start()
        try:
            return await _timed(_post_all(receiver.url, bodies))
        finally:
            await receiver.stop()

    return connector, raw


# -- knative, chat robots, prometheus ---------------------------------------------------------------


def knative_sink(workdir: Path) -> tuple[Measure, Measure]:
    receiver = _Receiver()

    async def connector() -> float:
        await receiver.start()
        try:
            sink = KnativeSink(KnativeSinkConfig(url=receiver.url, concurrency=HTTP_CONCURRENCY))
            return await _sink_run(sink, _records(EVENTS))
        finally:
            await receiver.stop()

    async def raw() -> float:  # binary mode by hand: ce-* headers, the data as the body
        await receiver.start()
        try:
            bodies = [
                (
                    {
                        "ce-specversion": "1.0",
                        "ce-id": str(r.id),
                        "ce-source": str(r.source),
                        "ce-type": str(r.type),
                        "ce-subject": str(r.subject),
                        "ce-time": r.timestamp.isoformat(),
                        "content-type": "application/json",
                    },
                    orjson.dumps(r.data),
                )
                for r in _records(EVENTS)
            ]
            started = time.perf_counter()
            for start in range(0, len(bodies), BATCH):
                await _post_all(receiver.url, bodies[start : start + BATCH])
            return time.perf_counter() - started
        finally:
            await receiver.stop()

    return connector, raw


_CHAT_TEMPLATE = "{subject} #{data[n]}: {data[text]}"
# Each robot's endpoint setting, success answer, and the JSON body a raw client would post for a text.
_CHATS: dict[str, tuple[type[ChatbotSink[Any]], dict[str, Any], dict[str, Any], Callable[[str], dict[str, Any]]]] = {
    "slack-sink": (
        SlackSink,
        {"token": "bench-token", "channel": "C1"},
        {"ok": True},
        lambda text: {"channel": "C1", "text": text},
    ),
    "dingtalk-sink": (
        DingtalkSink,
        {"access_token": "bench-token"},
        {"errcode": 0, "errmsg": "ok"},
        lambda text: {"msgtype": "text", "text": {"content": text}},
    ),
    "wecom-sink": (
        WecomSink,
        {"key": "bench-token"},
        {"errcode": 0, "errmsg": "ok"},
        lambda text: {"msgtype": "text", "text": {"content": text}},
    ),
    "lark-sink": (
        LarkSink,
        {"hook": "bench-token"},
        {"code": 0, "msg": "success"},
        lambda text: {"msg_type": "text", "content": {"text": text}},
    ),
}


def chat_sink(name: str) -> tuple[Measure, Measure]:
    """A chat robot sink with no pacing against a plain client posting the same messages one at a time."""
    sink_class, settings, answer, payload = _CHATS[name]
    receiver = _Receiver(answer)

    async def connector() -> float:
        await receiver.start()
        try:
            endpoint = {"api_url": receiver.url} if sink_class is SlackSink else {"webhook_url": receiver.url}
            config = sink_class.config_model.model_validate(
                {**settings, **endpoint, "template": _CHAT_TEMPLATE, "min_interval": 0}
            )
            return await _sink_run(sink_class(config), _records(EVENTS))
        finally:
            await receiver.stop()

    async def raw() -> float:
        await receiver.start()
        try:
            records = _records(EVENTS)
            async with aiohttp.ClientSession() as session:
                started = time.perf_counter()
                for r in records:
                    text = _CHAT_TEMPLATE.format(subject=r.subject, data=r.data)
                    async with session.post(receiver.url, json=payload(text)) as response:
                        assert orjson.loads(await response.read()) == answer
                return time.perf_counter() - started
        finally:
            await receiver.stop()

    return connector, raw


_PROMETHEUS_SERIES = 8
_PROMETHEUS_T0 = 1_767_225_600  # seconds, on the 1 s step grid


def prometheus_source(workdir: Path) -> tuple[Measure, Measure]:
    """query_range windows of BATCH steps over 8 series, read into records vs fetched and parsed by hand."""
    steps = EVENTS // _PROMETHEUS_SERIES

    async def query_range(request: web.Request) -> web.Response:
        start, end = int(float(request.query["start"])), int(float(request.query["end"]))
        result = [
            {
                "metric": {"__name__": "bench", "instance": f"host-{i}:9100"},
                "values": [
                    [t, str(t % 97 + i)] for t in range(max(start, _PROMETHEUS_T0), min(end, _PROMETHEUS_T0 + steps - 1) + 1)
                ],
            }
            for i in range(_PROMETHEUS_SERIES)
        ]
        return web.json_response({"status": "success", "data": {"resultType": "matrix", "result": result}})

    async def serving(measure: Callable[[str], Awaitable[float]]) -> float:
        app = web.Application()
        app.router.add_get("/api/v1/query_range", query_range)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        try:
            return await measure(f"http://127.0.0.1:{runner.addresses[0][1]}")
        finally:
            await runner.cleanup()

    async def connector() -> float:
        async def measure(url: str) -> float:
            config = PrometheusSourceConfig(
                url=url, query="bench", step=1, delay=0, interval=1, start=_PROMETHEUS_T0, max_points=BATCH
            )
            return await _source_run(PrometheusSource(config), EVENTS)

        return await serving(measure)

    async def raw() -> float:
        async def measure(url: str) -> float:
            samples: list[tuple[float, dict[str, str], float]] = []
            async with aiohttp.ClientSession() as session:
                started = time.perf_counter()
                for start in range(_PROMETHEUS_T0, _PROMETHEUS_T0 + steps, BATCH):
                    params = {"query": "bench", "start": str(start), "end": str(start + BATCH - 1), "step": "1"}
                    async with session.get(f"{url}/api/v1/query_range", params=params) as response:
                        answer = orjson.loads(await response.read())
                    for series in answer["data"]["result"]:
                        samples.extend((float(t), series["metric"], float(v)) for t, v in series["values"])
                assert len(samples) >= EVENTS
                return time.perf_counter() - started

        return await serving(measure)

    return connector, raw


# -- redis -------------------------------------------------------------------------------------


def redis(server: RedisServer) -> tuple[tuple[Measure, Measure], tuple[Measure, Measure]]:
    async def sink() -> float:
        config = RedisSinkConfig(url=server.url, key=f"s-{uuid.uuid4().hex[:6]}")  # type: ignore[arg-type]
        return await _sink_run(RedisSink(config), _records(EVENTS))

    async def sink_raw() -> float:
        client = aioredis.Redis.from_url(server.url)
        key = f"r-{uuid.uuid4().hex[:6]}"
        try:
            started = time.perf_counter()
            for batch in _batches(_records(EVENTS)):
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
        for record in _records(EVENTS):
            pipe.xadd(key, {"event": record_to_json(record)})
        await pipe.execute()
        await client.aclose()
        return key

    async def source() -> float:
        key = await filled()
        return await _source_run(RedisSource(RedisSourceConfig(url=server.url, streams=[key], batch_size=BATCH)), EVENTS)  # type: ignore[arg-type]

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
        return await _sink_run(RabbitmqSink(RabbitmqSinkConfig(url=url, routing_key=queue)), _records(EVENTS))  # type: ignore[arg-type]

    async def sink_raw() -> float:
        queue = await declared()
        connection = await aio_pika.connect(url)
        try:
            channel = await connection.channel(publisher_confirms=True)
            started = time.perf_counter()
            for batch in _batches(_records(EVENTS)):
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
        for record in _records(EVENTS):
            await channel.default_exchange.publish(aio_pika.Message(record_to_json(record)), queue)
        await connection.close()
        return queue

    async def source() -> float:
        queue = await filled()
        return await _source_run(RabbitmqSource(RabbitmqSourceConfig(url=url, queue=queue, batch_size=BATCH)), EVENTS)  # type: ignore[arg-type]

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
        return await _sink_run(MqttSink(MqttSinkConfig(port=server.port, topic="bench/sink")), _records(EVENTS))

    async def sink_raw() -> float:
        async with aiomqtt.Client("127.0.0.1", server.port, max_inflight_messages=1000) as client:
            started = time.perf_counter()
            for batch in _batches(_records(EVENTS)):
                await asyncio.gather(*(client.publish("bench/raw", record_to_json(r), qos=1) for r in batch))
            return time.perf_counter() - started

    async def measure_source(read: Callable[[str], Awaitable[float]]) -> float:
        topic = f"bench/in-{uuid.uuid4().hex[:6]}"
        reading = asyncio.create_task(read(topic))
        await asyncio.sleep(0.5)  # subscribed before anything is published
        async with aiomqtt.Client("127.0.0.1", server.port, max_inflight_messages=1000) as client:
            for batch in _batches(_records(EVENTS)):
                await asyncio.gather(*(client.publish(topic, record_to_json(r), qos=1) for r in batch))
        return await reading

    async def source() -> float:
        async def read(topic: str) -> float:
            config = MqttSourceConfig(
                port=server.port, topics=[topic], client_id=f"bench-{uuid.uuid4().hex[:6]}", batch_size=BATCH
            )
            return await _source_run(MqttSource(config), EVENTS)

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
        return await _sink_run(NatsSink(config), _records(EVENTS))

    async def sink_raw() -> float:
        name = await stream()
        client = await nats.connect(server.url)
        try:
            js = client.jetstream()
            started = time.perf_counter()
            for batch in _batches(_records(EVENTS)):
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
        for batch in _batches(_records(EVENTS)):
            await asyncio.gather(*(js.publish(f"{name}.in", record_to_json(r)) for r in batch))
        await client.close()
        return name

    async def source() -> float:
        name = await filled()
        config = NatsSourceConfig(servers=[server.url], stream=name, durable="bench", batch_size=BATCH)
        return await _source_run(NatsSource(config), EVENTS)

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
        return await _sink_run(KafkaSink(config), _records(EVENTS))

    async def sink_raw() -> float:  # the same binary-mode messages, each batch awaited whole as put does
        name = await topic()
        client = await producer()
        try:
            started = time.perf_counter()
            for batch in _batches(_records(EVENTS)):
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
            for batch in _batches(_records(EVENTS)):
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
        return await _sink_run(
            PostgresSink(PostgresSinkConfig(dsn=server.dsn, table=f"e_{uuid.uuid4().hex[:6]}")), _records(EVENTS)
        )  # type: ignore[arg-type]

    async def sink_raw() -> float:
        table = f"r_{uuid.uuid4().hex[:6]}"
        connection = await _pg(server.dsn)
        try:
            await connection.execute(
                f"CREATE TABLE {table} (source text, id text, type text, time timestamptz, data jsonb, PRIMARY KEY (source, id))"
            )
            started = time.perf_counter()
            for batch in _batches(_records(EVENTS)):
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
            return await _source_run(PostgresSource(config), EVENTS)
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


# -- the run -----------------------------------------------------------------------------------


async def _ratio(name: str, pair: tuple[Measure, Measure]) -> float:
    connector, raw = pair
    connector_seconds, raw_seconds = [], []
    for _ in range(RUNS):  # interleaved, so drift on a noisy machine hits both alike
        connector_seconds.append(await connector())
        raw_seconds.append(await raw())
    rate, raw_rate = EVENTS / statistics.median(connector_seconds), EVENTS / statistics.median(raw_seconds)
    ratio = rate / raw_rate
    print(f"{name:<16} {rate:>10.0f} events/s   raw {raw_rate:>10.0f} events/s   ratio {ratio:.2f}", flush=True)
    return ratio


def _start(server_class: type[Any]) -> Any:
    try:
        return server_class.running()
    except BaseException as exc:
        print(f"{server_class.name:<16} skipped: {exc}", flush=True)
        return None


def _vhost() -> tuple[str, str] | None:
    vhost = f"meshconnect-bench-{uuid.uuid4().hex[:6]}"
    try:
        subprocess.run(["rabbitmqctl", "add_vhost", vhost], check=True, capture_output=True, timeout=60)
        subprocess.run(
            ["rabbitmqctl", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
            check=True,
            capture_output=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"{'rabbitmq':<16} skipped: {exc}", flush=True)
        return None
    return vhost, f"amqp://guest:guest@127.0.0.1:5672/{vhost}"


async def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.getLogger().setLevel(logging.ERROR)
    logging.getLogger("mqtt").setLevel(logging.ERROR)  # the raw aiomqtt baseline warns about its own pending publishes
    print(f"catalogue: {EVENTS} events per run, batches of {BATCH}, median of {RUNS} runs", flush=True)
    ratios: list[float] = []
    servers: list[Any] = []
    vhost = None
    with tempfile.TemporaryDirectory(prefix="meshconnect-bench-") as workdir:
        try:
            ratios.append(await _ratio("file-sink", file_sink(Path(workdir))))
            ratios.append(await _ratio("file-source", file_source(Path(workdir))))
            ratios.append(await _ratio("http-sink", http_sink(Path(workdir))))
            ratios.append(await _ratio("http-source", http_source(Path(workdir))))
            ratios.append(await _ratio("knative-sink", knative_sink(Path(workdir))))
            for chat in _CHATS:
                ratios.append(await _ratio(chat, chat_sink(chat)))
            ratios.append(await _ratio("prometheus-source", prometheus_source(Path(workdir))))
            systems = (
                ("redis", RedisServer, redis),
                ("mqtt", MosquittoServer, mqtt),
                ("nats", NatsServer, jetstream),
                ("kafka", KafkaServer, kafka),
                ("postgres", PostgresServer, postgres),
            )
            for system, server_class, pairs in systems:
                server = _start(server_class)
                if server is None:
                    continue
                servers.append(server)
                sink_pair, source_pair = pairs(server)
                ratios.append(await _ratio(f"{system}-sink", sink_pair))
                ratios.append(await _ratio(f"{system}-source", source_pair))
            vhost = _vhost()
            if vhost is not None:
                sink_pair, source_pair = rabbitmq(vhost[1])
                ratios.append(await _ratio("rabbitmq-sink", sink_pair))
                ratios.append(await _ratio("rabbitmq-source", source_pair))
        finally:
            for server in servers:
                server.stop()
            if vhost is not None:
                await asyncio.to_thread(
                    subprocess.run, ["rabbitmqctl", "delete_vhost", vhost[0]], check=False, capture_output=True, timeout=60
                )
    print(f"ratio: {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    asyncio.run(main())
