"""redis-source and redis-sink against a throwaway redis-server, driven directly."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from runtime import record_to_json
from runtime.connector import SinkContext, SourceContext
from runtime.errors import RetriableError
from runtime.record import ConnectorRecord
from runtime.testing import SinkHarness, SourceHarness, poll_until, run_sink_conformance, run_source_conformance
from services.redis.sink.connector import RedisSink, RedisSinkConfig
from services.redis.source.connector import RedisSource, RedisSourceConfig
from tests.servers import RedisServer


def _event(n: int, subject: str = "orders", **overrides: Any) -> ConnectorRecord:
    return ConnectorRecord(
        **{"data": {"n": n}, "id": f"id-{n}", "source": "/tests", "type": "t", "subject": subject, **overrides}
    )


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


def _key() -> str:
    return f"s-{uuid.uuid4().hex[:8]}"


async def _source(url: str, **config: Any) -> RedisSource:
    source = RedisSource(RedisSourceConfig.model_validate({"url": url, **config}))
    await source.start(SourceContext(connector_name="redis-test", committed_offsets={}))
    return source


async def _sink(url: str, **config: Any) -> RedisSink:
    sink = RedisSink(RedisSinkConfig.model_validate({"url": url, **config}))
    await sink.start(SinkContext(connector_name="redis-test"))
    return sink


async def test_stream_source_acks_only_on_commit(redis_server: RedisServer, client: aioredis.Redis) -> None:
    stream = _key()
    for n in range(5):
        await client.xadd(stream, {"event": record_to_json(_event(n))})
    source = await _source(redis_server.url, streams=[stream])
    try:
        records = await poll_until(source, 5)
        assert [record.id for record in records] == [f"id-{n}" for n in range(5)]
        assert records[0].data == {"n": 0} and records[0].partition == {"stream": stream}
        assert (await client.xpending(stream, "meshconnect"))["pending"] == 5
        await source.commit(records[:3])
        assert (await client.xpending(stream, "meshconnect"))["pending"] == 2
    finally:
        await source.stop()


async def test_stream_source_rereads_unacked_entries_after_a_restart(redis_server: RedisServer, client: aioredis.Redis) -> None:
    stream = _key()
    for n in range(4):
        await client.xadd(stream, {"event": record_to_json(_event(n))})
    source = await _source(redis_server.url, streams=[stream], batch_size=2)
    first = await poll_until(source, 4)
    await source.commit(first[:1])  # crash after the first ack
    await source.stop()
    await client.xadd(stream, {"event": record_to_json(_event(4))})
    source = await _source(redis_server.url, streams=[stream], batch_size=2)
    try:
        again = await poll_until(source, 4)
        await source.commit(again)
    finally:
        await source.stop()
    assert [record.id for record in again] == ["id-1", "id-2", "id-3", "id-4"]
    assert [record.offset for record in again[:3]] == [record.offset for record in first[1:]]
    assert (await client.xpending(stream, "meshconnect"))["pending"] == 0


async def test_stream_source_claims_entries_a_dead_consumer_left_pending(
    redis_server: RedisServer, client: aioredis.Redis
) -> None:
    stream = _key()
    await client.xadd(stream, {"event": record_to_json(_event(1))})
    dead = await _source(redis_server.url, streams=[stream], consumer="dead-replica")
    assert len(await poll_until(dead, 1)) == 1
    await dead.stop()
    source = await _source(redis_server.url, streams=[stream], consumer="alive", claim_idle_ms=1)
    try:
        await asyncio.sleep(0.01)
        claimed = await poll_until(source, 1)
    finally:
        await source.stop()
    assert [record.id for record in claimed] == ["id-1"]


async def test_stream_source_survives_a_dropped_connection_without_loss(
    redis_server: RedisServer, client: aioredis.Redis
) -> None:
    stream = _key()
    source = await _source(redis_server.url, streams=[stream], batch_size=10)
    try:
        for n in range(20):
            await client.xadd(stream, {"event": record_to_json(_event(n))})
        got = await poll_until(source, 10)
        await source.commit(got)
        await client.client_kill_filter(_type="normal", skipme=True)  # drops the source's connection
        for n in range(20, 30):
            await client.xadd(stream, {"event": record_to_json(_event(n))})
        rest = await poll_until(source, 20, within=20)
        await source.commit(rest)
    finally:
        await source.stop()
    assert sorted({record.id for record in got + rest}) == sorted(f"id-{n}" for n in range(30))


async def test_stream_entry_without_the_field_and_foreign_payloads(redis_server: RedisServer, client: aioredis.Redis) -> None:
    stream = _key()
    await client.xadd(stream, {"user": "ann", "action": "login"})
    await client.xadd(stream, {"event": b"not a cloudevent"})
    source = await _source(redis_server.url, streams=[stream])
    try:
        fields, foreign = await poll_until(source, 2)
    finally:
        await source.stop()
    assert fields.data == {"user": "ann", "action": "login"}
    assert foreign.data == b"not a cloudevent" and "invalid JSON" in str(foreign.extensions["meshformaterror"])


async def test_pubsub_source_receives_published_messages(redis_server: RedisServer, client: aioredis.Redis) -> None:
    channel = _key()
    source = await _source(redis_server.url, mode="pubsub", channels=[channel], format="text")
    try:
        for n in range(3):
            await client.publish(channel, f"hello {n}")
        records = await poll_until(source, 3)
    finally:
        await source.stop()
    assert [record.data for record in records] == ["hello 0", "hello 1", "hello 2"]
    assert len({str(record.offset) for record in records}) == 3


async def test_stream_sink_adds_once_per_event_and_caps_the_stream(redis_server: RedisServer, client: aioredis.Redis) -> None:
    topic = _key()
    sink = await _sink(redis_server.url, maxlen=1000)
    try:
        assert await sink.put([_event(n, subject=topic) for n in range(5)]) == []
        assert await sink.put([_event(n, subject=topic) for n in range(3, 7)]) == []  # 3 and 4 redelivered
    finally:
        await sink.stop()
    entries = await client.xrange(topic)
    assert len(entries) == 7
    # what the sink writes, the source reads back as the same events
    source = await _source(redis_server.url, streams=[topic])
    try:
        records = await poll_until(source, 7)
    finally:
        await source.stop()
    assert [(r.id, r.data, r.subject) for r in records] == [(f"id-{n}", {"n": n}, topic) for n in range(7)]


async def test_stream_sink_without_dedup_rejects_a_wrong_type_key_and_writes_the_rest(
    redis_server: RedisServer, client: aioredis.Redis
) -> None:
    good, bad = _key(), _key()
    await client.set(bad, "a plain string")
    sink = await _sink(redis_server.url, dedup_seconds=0, maxlen=2)
    try:
        rejections = await sink.put([_event(1, subject=good), _event(2, subject=bad), _event(3, subject=good)])
        assert [(r.record.id, "WRONGTYPE" in r.reason) for r in rejections] == [("id-2", True)]
        await sink.put([_event(n, subject=good) for n in range(4, 300)])
    finally:
        await sink.stop()
    assert await client.xlen(good) < 298  # MAXLEN ~ trims whole nodes of entries


async def test_pubsub_sink_publishes_the_data(redis_server: RedisServer, client: aioredis.Redis) -> None:
    topic = _key()
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(f"out.{topic}")
    sink = await _sink(redis_server.url, mode="pubsub", channel="out.{topic}", payload="data")
    try:
        await sink.put([_event(1, subject=topic), _event(2, subject=topic, data="text", datacontenttype="text/plain")])
        messages = [await pubsub.get_message(timeout=0.5) for _ in range(6)]  # the subscribe confirmation reads as None
    finally:
        await sink.stop()
        await pubsub.aclose()
    assert [message["data"] for message in messages if message] == [b'{"n":1}', b"text"]


async def test_sink_while_redis_is_down_is_retriable_and_recovers() -> None:
    server = RedisServer.running()
    try:
        sink = await _sink(server.url, timeout=1)  # type: ignore[attr-defined]
        await sink.put([_event(1)])
        server.kill()
        with pytest.raises(RetriableError):
            await sink.put([_event(2)])
        server.start()
        for _ in range(3):  # as the worker would: retry the batch (the first try reloads the dedup script)
            try:
                assert await sink.put([_event(2)]) == []
                break
            except RetriableError:
                continue
        await sink.stop()
        check = aioredis.Redis.from_url(server.url)  # type: ignore[attr-defined]
        assert await check.xlen("orders") == 1  # the restarted server is empty (no persistence): only the retry
        await check.aclose()
    finally:
        server.stop()


# -- end to end: the real worker, through the embedded mesh --------------------------------------


async def test_redis_sink_conformance(redis_server: RedisServer, client: aioredis.Redis, tmp_path: Path) -> None:
    stream = _key()

    async def read() -> list[str]:
        return [orjson.loads(fields[b"event"])["id"] for _, fields in await client.xrange(stream)]

    await run_sink_conformance(
        SinkHarness(connector=RedisSink, config=lambda: {"url": redis_server.url, "key": stream}, read=read),
        workdir=tmp_path,
    )


async def test_redis_source_conformance(redis_server: RedisServer, client: aioredis.Redis, tmp_path: Path) -> None:
    stream = _key()

    async def produce(start: int, count: int) -> None:
        for n in range(start, start + count):
            # no subject: the topic is the worker's
            await client.xadd(stream, {"event": record_to_json(_event(n, subject=None))})

    await run_source_conformance(
        SourceHarness(
            connector=RedisSource,
            config=lambda: {"url": redis_server.url, "streams": [stream]},
            produce=produce,
            number_of=lambda event: int(event.get_data()["n"]),  # type: ignore[index]
        ),
        workdir=tmp_path,
    )


async def test_stream_source_reports_how_far_behind_the_stream_it_reads(
    redis_server: RedisServer, client: aioredis.Redis
) -> None:
    stream = _key()
    an_hour_ago_ms = int(time.time() * 1000) - 3_600_000
    await client.xadd(stream, {"event": record_to_json(_event(1))}, id=f"{an_hour_ago_ms}-0")  # an entry id is its append time
    source = RedisSource(RedisSourceConfig.model_validate({"url": redis_server.url, "streams": [stream]}))
    await source.start(SourceContext("redis-lag-test", {}, connector_type="redis-source"))
    labels = {"connector": "redis-source", "name": "redis-lag-test"}
    try:
        assert len(await poll_until(source, 1)) == 1
        lag = REGISTRY.get_sample_value("meshconnect_source_lag_seconds", labels)
        assert lag is not None and 3590 < lag < 3700
        assert await source.poll() == []  # read everything: caught up
        assert REGISTRY.get_sample_value("meshconnect_source_lag_seconds", labels) == 0
    finally:
        await source.stop()
