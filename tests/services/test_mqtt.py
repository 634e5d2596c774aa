"""mqtt-source and mqtt-sink against a throwaway mosquitto, driven directly."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from runtime import record_to_json
from runtime.connector import SinkContext, SourceContext
from runtime.errors import RetriableError
from runtime.record import ConnectorRecord
from runtime.testing import SinkHarness, SourceHarness, poll_until, run_sink_conformance, run_source_conformance
from services.mqtt.sink.connector import MqttSink, MqttSinkConfig
from services.mqtt.source.connector import MqttSource, MqttSourceConfig
from tests.servers import MosquittoServer


def _event(n: int, subject: str = "orders", **overrides: Any) -> ConnectorRecord:
    return ConnectorRecord(
        **{"data": {"n": n}, "id": f"id-{n}", "source": "/tests", "type": "t", "subject": subject, **overrides}
    )


@pytest.fixture
def private_broker() -> Iterator[MosquittoServer]:
    """A broker of the test's own, restarted gracefully (SIGTERM: mosquitto saves its sessions first)."""
    server = MosquittoServer.running()
    yield server  # type: ignore[misc]
    server.stop()


async def _source(port: int, topic: str, client_id: str, **config: Any) -> MqttSource:
    source = MqttSource(MqttSourceConfig.model_validate({"port": port, "topics": [topic], "client_id": client_id, **config}))
    await source.start(SourceContext(connector_name="mqtt-test", committed_offsets={}))
    return source


async def _sink(port: int, **config: Any) -> MqttSink:
    sink = MqttSink(MqttSinkConfig.model_validate({"port": port, "client_id": f"sink-{uuid.uuid4().hex[:6]}", **config}))
    await sink.start(SinkContext(connector_name="mqtt-test"))
    return sink


async def _publish(port: int, topic: str, records: list[ConnectorRecord]) -> None:
    async with aiomqtt.Client("127.0.0.1", port) as client:
        for record in records:
            await client.publish(topic, record_to_json(record), qos=1)


async def test_source_redelivers_what_was_never_committed(mosquitto_server: MosquittoServer) -> None:
    topic, client_id = f"t/{uuid.uuid4().hex[:6]}", f"src-{uuid.uuid4().hex[:6]}"
    source = await _source(mosquitto_server.port, topic, client_id)
    await _publish(mosquitto_server.port, topic, [_event(n) for n in range(5)])
    first = await poll_until(source, 5)
    assert [record.id for record in first] == [f"id-{n}" for n in range(5)]
    assert first[0].extensions["mqtttopic"] == topic
    await source.commit(first[:2])
    await source.stop()  # 3 received, never acked
    await _publish(mosquitto_server.port, topic, [_event(5)])  # published while the source is away
    source = await _source(mosquitto_server.port, topic, client_id)
    try:
        again = await poll_until(source, 4)
        await source.commit(again)
        assert await poll_until(source, 1, within=1.5) == []
    finally:
        await source.stop()
    assert [record.id for record in again] == ["id-2", "id-3", "id-4", "id-5"]


async def test_source_loses_nothing_when_the_broker_restarts(private_broker: MosquittoServer) -> None:
    topic, client_id = "t/restart", "src-restart"
    source = await _source(private_broker.port, topic, client_id, timeout=3)
    try:
        await _publish(private_broker.port, topic, [_event(n) for n in range(10)])
        first = await poll_until(source, 10)
        await source.commit(first[:5])
        await asyncio.to_thread(private_broker.restart, graceful=True)
        await source.commit(first[5:])  # acks of the dropped connection: skipped, the broker resends
        await _publish(private_broker.port, topic, [_event(n) for n in range(10, 15)])
        rest: list[ConnectorRecord] = []
        for _ in range(30):  # redelivered duplicates come first, one by one
            if {record.id for record in first + rest} >= {f"id-{n}" for n in range(15)}:
                break
            batch = await poll_until(source, 1, within=1)
            await source.commit(batch)
            rest += batch
    finally:
        await source.stop()
    assert {record.id for record in first + rest} == {f"id-{n}" for n in range(15)}


async def test_sink_publishes_events_the_source_reads_back(mosquitto_server: MosquittoServer) -> None:
    topic = f"out-{uuid.uuid4().hex[:6]}"
    source = await _source(mosquitto_server.port, f"events/{topic}", f"src-{uuid.uuid4().hex[:6]}")
    sink = await _sink(mosquitto_server.port, topic="events/{topic}")
    try:
        assert await sink.put([_event(n, subject=topic) for n in range(20)]) == []
        records = await poll_until(source, 20)
        await source.commit(records)
    finally:
        await sink.stop()
        await source.stop()
    assert [(r.id, r.data) for r in records] == [(f"id-{n}", {"n": n}) for n in range(20)]


async def test_sink_while_the_broker_is_down_is_retriable_and_recovers(private_broker: MosquittoServer) -> None:
    topic = "t/sink-restart"
    source = await _source(private_broker.port, topic, "src-sink-restart")
    sink = await _sink(private_broker.port, timeout=2)
    try:
        await sink.put([_event(1, subject=topic)])
        assert private_broker.proc is not None
        os.killpg(private_broker.proc.pid, signal.SIGTERM)  # saves the source's session: it gets what is sent meanwhile
        await asyncio.to_thread(private_broker.proc.wait, 10)
        with pytest.raises(RetriableError):
            await sink.put([_event(2, subject=topic)])
        private_broker.start()
        for _ in range(10):  # the worker's retry loop
            try:
                await sink.put([_event(2, subject=topic)])
                break
            except RetriableError:
                await asyncio.sleep(0.3)
        received = await poll_until(source, 2)
    finally:
        await sink.stop()
        await source.stop()
    assert "id-2" in {record.id for record in received}


async def test_sink_rejects_an_event_it_cannot_encode(mosquitto_server: MosquittoServer) -> None:
    sink = await _sink(mosquitto_server.port)
    try:
        rejections = await sink.put([_event(1, id=None), _event(2)])
    finally:
        await sink.stop()
    assert [r.record.id for r in rejections] == [None]


# -- end to end: the real worker, through the embedded mesh --------------------------------------


async def test_mqtt_sink_conformance(private_broker: MosquittoServer, tmp_path: Path) -> None:
    topic = "conformance-out/#"
    reader = await _source(private_broker.port, topic, "conformance-reader")
    seen: list[str] = []

    async def read() -> list[str]:
        batch = await poll_until(reader, 1_000_000, within=0.3)
        await reader.commit(batch)
        seen.extend(str(record.id) for record in batch)
        return seen

    try:
        await run_sink_conformance(
            SinkHarness(
                connector=MqttSink,
                config=lambda: {"port": private_broker.port, "topic": "conformance-out/{topic}", "timeout": 3},
                read=read,
                idempotent=False,  # MQTT keeps duplicates; consumers dedupe on source + id
                kill_system=private_broker.terminate,
                restart_system=private_broker.start,
            ),
            workdir=tmp_path,
        )
    finally:
        await reader.stop()


async def test_mqtt_source_conformance(private_broker: MosquittoServer, tmp_path: Path) -> None:
    async def produce(start: int, count: int) -> None:
        for _ in range(50):  # the broker may be restarting
            try:
                await _publish(
                    private_broker.port, "conformance-in", [_event(n, subject=None) for n in range(start, start + count)]
                )
                return
            except aiomqtt.MqttError:
                await asyncio.sleep(0.2)

    await run_source_conformance(
        SourceHarness(
            connector=MqttSource,
            config=lambda: {"port": private_broker.port, "topics": ["conformance-in"], "timeout": 3},
            produce=produce,
            number_of=lambda event: int(event.get_data()["n"]),  # type: ignore[index]
            kill_system=private_broker.terminate,
            restart_system=private_broker.start,
        ),
        workdir=tmp_path,
    )
