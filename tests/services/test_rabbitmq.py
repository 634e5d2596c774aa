"""rabbitmq-source and rabbitmq-sink against the machine's RabbitMQ, in a vhost of their own per test run."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from runtime import CLOUDEVENTS_JSON, record_to_json
from runtime.connector import SinkContext, SourceContext
from runtime.errors import RetriableError
from runtime.record import ConnectorRecord
from runtime.testing import SinkHarness, SourceHarness, poll_until, run_sink_conformance, run_source_conformance
from services.rabbitmq.sink.connector import RabbitmqSink, RabbitmqSinkConfig
from services.rabbitmq.source.connector import RabbitmqSource, RabbitmqSourceConfig
from tests.servers import require_binary, unavailable, wait_for_port


def _rabbitmqctl(*args: str) -> None:
    subprocess.run([require_binary("rabbitmqctl"), *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def vhost_url() -> Iterator[str]:
    require_binary("rabbitmqctl")
    try:
        wait_for_port(5672, timeout=2)
    except TimeoutError:
        unavailable("no RabbitMQ broker answers on 127.0.0.1:5672")
    vhost = f"meshconnect-test-{uuid.uuid4().hex[:8]}"
    _rabbitmqctl("add_vhost", vhost)
    _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    yield f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    _rabbitmqctl("delete_vhost", vhost)


@pytest.fixture
async def channel(vhost_url: str) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    connection = await aio_pika.connect(vhost_url)
    channel = await connection.channel()
    yield channel
    await connection.close()


def _event(n: int, subject: str = "orders", **overrides: Any) -> ConnectorRecord:
    return ConnectorRecord(
        **{"data": {"n": n}, "id": f"id-{n}", "source": "/tests", "type": "t", "subject": subject, **overrides}
    )


async def _source(url: str, **config: Any) -> RabbitmqSource:
    source = RabbitmqSource(RabbitmqSourceConfig.model_validate({"url": url, **config}))
    await source.start(SourceContext(connector_name="rabbitmq-test", committed_offsets={}))
    return source


async def _sink(url: str, **config: Any) -> RabbitmqSink:
    sink = RabbitmqSink(RabbitmqSinkConfig.model_validate({"url": url, **config}))
    await sink.start(SinkContext(connector_name="rabbitmq-test"))
    return sink


async def _publish(channel: aio_pika.abc.AbstractChannel, queue: str, records: list[ConnectorRecord]) -> None:
    for record in records:
        await channel.default_exchange.publish(aio_pika.Message(record_to_json(record), content_type=CLOUDEVENTS_JSON), queue)


async def test_source_acks_only_what_was_committed(vhost_url: str, channel: aio_pika.abc.AbstractChannel) -> None:
    queue = f"q-{uuid.uuid4().hex[:6]}"
    source = await _source(vhost_url, queue=queue)
    await _publish(channel, queue, [_event(n) for n in range(5)])
    records = await poll_until(source, 5)
    assert [record.id for record in records] == [f"id-{n}" for n in range(5)]
    await source.commit(records[:2])
    await source.stop()  # three were never committed: the broker requeues them
    source = await _source(vhost_url, queue=queue)
    try:
        again = await poll_until(source, 3)
        await source.commit(again)
    finally:
        await source.stop()
    assert [record.id for record in again] == ["id-2", "id-3", "id-4"]
    declared = await channel.declare_queue(queue, passive=True)
    assert declared.declaration_result.message_count == 0


async def test_source_binds_to_an_exchange_and_reads_raw_payloads(vhost_url: str, channel: aio_pika.abc.AbstractChannel) -> None:
    queue = f"q-{uuid.uuid4().hex[:6]}"
    source = await _source(vhost_url, queue=queue, exchange="events", routing_key="orders.*", format="json")
    try:
        exchange = await channel.get_exchange("events")
        await exchange.publish(aio_pika.Message(b'{"raw": true}', message_id="m-1"), "orders.created")
        await exchange.publish(aio_pika.Message(b'{"other": true}'), "payments.created")
        [record] = await poll_until(source, 1, within=3)
        await source.commit([record])
    finally:
        await source.stop()
    assert (record.id, record.data) == ("m-1", {"raw": True})


async def test_source_loses_nothing_when_the_connection_drops(vhost_url: str, channel: aio_pika.abc.AbstractChannel) -> None:
    queue = f"q-{uuid.uuid4().hex[:6]}"
    vhost = vhost_url.rsplit("/", 1)[1]
    source = await _source(vhost_url, queue=queue, prefetch=10, batch_size=5)
    try:
        await _publish(channel, queue, [_event(n) for n in range(20)])
        first = await poll_until(source, 5)
        await source.commit(first)
        in_flight = await poll_until(source, 5)  # polled, not committed, when the connection dies
        await asyncio.to_thread(_rabbitmqctl, "close_all_connections", "-p", vhost, "test drops the connection")
        await source.commit(in_flight)  # acks on a dead channel: logged, the broker redelivers them
        rest: list[ConnectorRecord] = []
        for _ in range(40):
            if {r.id for r in first + rest} >= {f"id-{n}" for n in range(20)}:
                break
            batch = await source.poll()
            await source.commit(batch)
            rest += batch
    finally:
        await source.stop()
    assert {record.id for record in first + rest} == {f"id-{n}" for n in range(20)}


async def test_sink_publishes_confirmed_messages_the_source_reads_back(
    vhost_url: str, channel: aio_pika.abc.AbstractChannel
) -> None:
    topic = f"t-{uuid.uuid4().hex[:6]}"
    await channel.declare_queue(topic, durable=True)
    sink = await _sink(vhost_url)
    try:
        assert await sink.put([_event(n, subject=topic) for n in range(5)]) == []
        assert [r.record.id for r in await sink.put([_event(9, subject=topic, id=None)])] == [None]
    finally:
        await sink.stop()
    queue = await channel.declare_queue(topic, passive=True)
    message = await queue.get(timeout=5)
    assert message is not None
    assert (message.message_id, message.content_type, message.delivery_mode) == (
        "id-0",
        CLOUDEVENTS_JSON,
        aio_pika.DeliveryMode.PERSISTENT,
    )
    await message.nack(requeue=True)
    source = await _source(vhost_url, queue=topic)
    try:
        records = await poll_until(source, 5)
        await source.commit(records)
    finally:
        await source.stop()
    assert sorted((r.id, r.data["n"]) for r in records) == [(f"id-{n}", n) for n in range(5)]


async def test_sink_unroutable_message_is_retriable_not_dropped(vhost_url: str) -> None:
    sink = await _sink(vhost_url, exchange="sink-events", routing_key="{topic}")
    try:
        with pytest.raises(RetriableError, match="not confirmed"):
            await sink.put([_event(1, subject="nobody-listens")])
    finally:
        await sink.stop()


async def test_sink_data_payload_keeps_the_content_type(vhost_url: str, channel: aio_pika.abc.AbstractChannel) -> None:
    topic = f"t-{uuid.uuid4().hex[:6]}"
    await channel.declare_queue(topic, durable=True)
    sink = await _sink(vhost_url, payload="data")
    try:
        await sink.put([_event(1, subject=topic, data="hello", datacontenttype="text/plain")])
    finally:
        await sink.stop()
    message = await (await channel.declare_queue(topic, passive=True)).get(timeout=5)
    assert message is not None and (message.body, message.content_type) == (b"hello", "text/plain")
    await message.ack()


# -- end to end: the real worker, through the embedded mesh --------------------------------------


async def test_rabbitmq_sink_conformance(vhost_url: str, channel: aio_pika.abc.AbstractChannel, tmp_path: Path) -> None:
    queue_name = f"conf-{uuid.uuid4().hex[:6]}"
    queue = await channel.declare_queue(queue_name, durable=True)
    seen: list[str] = []

    async def read() -> list[str]:
        while (message := await queue.get(fail=False, timeout=5)) is not None:
            seen.append(str(message.message_id))
            await message.ack()
        return seen

    await run_sink_conformance(
        SinkHarness(
            connector=RabbitmqSink,
            config=lambda: {"url": vhost_url, "routing_key": queue_name},
            read=read,
            idempotent=False,  # a queue keeps duplicates; consumers dedupe on message_id
        ),
        workdir=tmp_path,
    )


async def test_rabbitmq_source_conformance(vhost_url: str, channel: aio_pika.abc.AbstractChannel, tmp_path: Path) -> None:
    queue = f"conf-{uuid.uuid4().hex[:6]}"
    await channel.declare_queue(queue, durable=True)

    async def produce(start: int, count: int) -> None:
        await _publish(channel, queue, [_event(n, subject=None) for n in range(start, start + count)])

    await run_source_conformance(
        SourceHarness(
            connector=RabbitmqSource,
            config=lambda: {"url": vhost_url, "queue": queue},
            produce=produce,
            number_of=lambda event: int(event.get_data()["n"]),  # type: ignore[index]
        ),
        workdir=tmp_path,
    )
