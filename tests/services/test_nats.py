"""nats-source and nats-sink against a throwaway nats-server with JetStream, driven directly."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import nats.errors
import orjson
import pytest
from prometheus_client import REGISTRY

from runtime import record_to_json
from runtime.connector import SinkContext, SourceContext
from runtime.errors import RetriableError
from runtime.record import ConnectorRecord
from runtime.testing import SinkHarness, SourceHarness, poll_until, run_sink_conformance, run_source_conformance
from services.nats.sink.connector import NatsSink, NatsSinkConfig
from services.nats.source.connector import NatsSource, NatsSourceConfig
from tests.servers import NatsServer


def _event(n: int, subject: str = "orders", **overrides: Any) -> ConnectorRecord:
    return ConnectorRecord(
        **{"data": {"n": n}, "id": f"id-{n}", "source": "/tests", "type": "t", "subject": subject, **overrides}
    )


def _names() -> tuple[str, str]:
    tag = uuid.uuid4().hex[:6]
    return f"S{tag}", f"ev.{tag}"


@pytest.fixture
def private_nats() -> Iterator[NatsServer]:
    server = NatsServer.running()
    yield server  # type: ignore[misc]
    server.stop()


async def _source(url: str, stream: str, subject: str, **config: Any) -> NatsSource:
    settings = {"servers": [url], "stream": stream, "subjects": [f"{subject}.>"], "durable": "test", **config}
    source = NatsSource(NatsSourceConfig.model_validate(settings))
    await source.start(SourceContext(connector_name="nats-test", committed_offsets={}))
    return source


async def _sink(url: str, **config: Any) -> NatsSink:
    sink = NatsSink(NatsSinkConfig.model_validate({"servers": [url], **config}))
    await sink.start(SinkContext(connector_name="nats-test"))
    return sink


async def _publish(url: str, subject: str, records: list[ConnectorRecord]) -> None:
    client = await nats.connect(url)
    js = client.jetstream()
    for record in records:
        await js.publish(f"{subject}.{record.subject}", record_to_json(record))
    await client.close()


async def test_source_acks_on_commit_and_redelivers_the_rest(nats_server: NatsServer) -> None:
    stream, subject = _names()
    source = await _source(nats_server.url, stream, subject, ack_wait=2)
    await _publish(nats_server.url, subject, [_event(n) for n in range(5)])
    first = await poll_until(source, 5)
    assert [record.id for record in first] == [f"id-{n}" for n in range(5)]
    assert first[0].partition == {"stream": stream, "consumer": "test"} and first[0].offset == {"seq": 1}
    await source.commit(first[:2])
    await source.stop()
    source = await _source(nats_server.url, stream, subject, ack_wait=2)
    try:
        again = await poll_until(source, 3)  # after ack_wait the unacked three come back
        await source.commit(again)
        assert await poll_until(source, 1, within=3) == []
    finally:
        await source.stop()
    assert sorted(record.id or "" for record in again) == ["id-2", "id-3", "id-4"]
    assert [record.offset["seq"] for record in again] == [3, 4, 5]


async def test_source_loses_nothing_when_the_server_is_killed(private_nats: NatsServer) -> None:
    stream, subject = _names()
    source = await _source(private_nats.url, stream, subject, ack_wait=1, timeout=2)
    try:
        await _publish(private_nats.url, subject, [_event(n) for n in range(10)])
        first = await poll_until(source, 10)
        await source.commit(first[:5])
        private_nats.kill()
        await source.commit(first[5:])  # acks into the void: logged, redelivered later
        with pytest.raises(RetriableError):
            await source.poll()
        private_nats.start()
        await _publish(private_nats.url, subject, [_event(n) for n in range(10, 15)])
        rest: list[ConnectorRecord] = []
        deadline = asyncio.get_running_loop().time() + 20
        while {r.id for r in first + rest} < {f"id-{n}" for n in range(15)} and asyncio.get_running_loop().time() < deadline:
            batch = await poll_until(source, 1, within=1)
            await source.commit(batch)
            rest += batch
    finally:
        await source.stop()
    assert {record.id for record in first + rest} == {f"id-{n}" for n in range(15)}


async def test_sink_with_payload_data_publishes_the_data_alone_under_its_content_type(nats_server: NatsServer) -> None:
    stream, subject = _names()
    sink = await _sink(nats_server.url, subject=f"{subject}.{{topic}}", stream=stream, subjects=[f"{subject}.>"], payload="data")
    events = [_event(1), _event(2, data="a,b", datacontenttype="text/csv"), _event(3, data=None)]
    try:
        assert await sink.put(events) == []
    finally:
        await sink.stop()
    client = await nats.connect(nats_server.url)
    try:
        js = client.jetstream()
        messages = [await js.get_msg(stream, seq) for seq in (1, 2, 3)]
    finally:
        await client.close()
    assert [message.data or b"" for message in messages] == [b'{"n":1}', b"a,b", b""]
    # an event without data has no content type of its own: the message still says what it carries
    assert [(message.headers or {}).get("Content-Type") for message in messages] == [
        "application/json",
        "text/csv",
        "application/octet-stream",
    ]


async def test_sink_dedupes_redelivered_events_and_the_source_reads_them_back(nats_server: NatsServer) -> None:
    stream, subject = _names()
    sink = await _sink(nats_server.url, subject=f"{subject}.{{topic}}", stream=stream, subjects=[f"{subject}.>"])
    try:
        assert await sink.put([_event(n) for n in range(5)]) == []
        assert await sink.put([_event(n) for n in range(3, 8)]) == []  # 3 and 4 again
        assert [r.record.id for r in await sink.put([_event(9, id=None)])] == [None]
    finally:
        await sink.stop()
    source = await _source(nats_server.url, stream, subject)
    try:
        records = await poll_until(source, 8)
        await source.commit(records)
        assert await poll_until(source, 1, within=1.5) == []
    finally:
        await source.stop()
    assert [(r.id, r.data) for r in records] == [(f"id-{n}", {"n": n}) for n in range(8)]


async def test_sink_without_a_stream_for_the_subject_is_retriable(nats_server: NatsServer) -> None:
    sink = await _sink(nats_server.url, subject="nobody.{topic}", timeout=2)
    try:
        with pytest.raises(RetriableError, match="publish"):
            await sink.put([_event(1)])
    finally:
        await sink.stop()


async def test_sink_while_the_server_is_down_is_retriable_and_recovers(private_nats: NatsServer) -> None:
    stream, subject = _names()
    sink = await _sink(private_nats.url, subject=f"{subject}.{{topic}}", stream=stream, subjects=[f"{subject}.>"], timeout=2)
    try:
        await sink.put([_event(1)])
        private_nats.kill()
        with pytest.raises(RetriableError):
            await sink.put([_event(2)])
        private_nats.start()
        for _ in range(20):  # the worker's retry loop
            try:
                await sink.put([_event(2)])
                break
            except RetriableError:
                await asyncio.sleep(0.3)
    finally:
        await sink.stop()
    source = await _source(private_nats.url, stream, subject)
    try:
        records = await poll_until(source, 2)
    finally:
        await source.stop()
    assert [r.id for r in records] == ["id-1", "id-2"]


# -- end to end: the real worker, through the embedded mesh --------------------------------------


async def test_nats_sink_conformance(private_nats: NatsServer, tmp_path: Path) -> None:
    stream, subject = _names()

    async def read() -> list[str]:
        client = await nats.connect(private_nats.url)
        try:
            js = client.jetstream()
            info = await js.stream_info(stream)
            ids = []
            for sequence in range(info.state.first_seq, info.state.last_seq + 1):
                message = await js.get_msg(stream, sequence)
                ids.append(orjson.loads(message.data)["id"])
            return ids
        finally:
            await client.close()

    await run_sink_conformance(
        SinkHarness(
            connector=NatsSink,
            config=lambda: {
                "servers": [private_nats.url],
                "subject": f"{subject}.{{topic}}",
                "stream": stream,
                "subjects": [f"{subject}.>"],
            },
            read=read,
            kill_system=private_nats.kill,
            restart_system=private_nats.start,
        ),
        workdir=tmp_path,
    )


async def test_nats_source_conformance(private_nats: NatsServer, tmp_path: Path) -> None:
    stream, subject = _names()

    async def produce(start: int, count: int) -> None:
        for _ in range(50):  # the server may be restarting
            try:
                client = await nats.connect(private_nats.url)
                try:
                    js = client.jetstream()
                    for n in range(start, start + count):  # no CloudEvent subject: the topic is the worker's
                        await js.publish(f"{subject}.in", record_to_json(_event(n, subject=None)))
                finally:
                    await client.close()
                return
            except (nats.errors.Error, OSError):
                await asyncio.sleep(0.2)

    await run_source_conformance(
        SourceHarness(
            connector=NatsSource,
            config=lambda: {"servers": [private_nats.url], "stream": stream, "subjects": [f"{subject}.>"], "ack_wait": 5},
            produce=produce,
            number_of=lambda event: int(event.get_data()["n"]),  # type: ignore[index]
            kill_system=private_nats.kill,
            restart_system=private_nats.start,
            source_settings={"topic": "conformance"},
        ),
        workdir=tmp_path,
    )


async def test_source_reports_how_far_behind_the_stream_it_reads(nats_server: NatsServer) -> None:
    stream, subject = _names()
    settings = {"servers": [nats_server.url], "stream": stream, "subjects": [f"{subject}.>"], "durable": "lag"}
    source = NatsSource(NatsSourceConfig.model_validate(settings))
    await source.start(SourceContext("nats-lag-test", {}, connector_type="nats-source"))
    labels = {"connector": "nats-source", "name": "nats-lag-test"}
    try:
        await _publish(nats_server.url, subject, [_event(1)])
        assert len(await poll_until(source, 1)) == 1
        lag = REGISTRY.get_sample_value("meshconnect_source_lag_seconds", labels)
        assert lag is not None and 0 < lag < 60  # read after JetStream stored it, on this host's clock
        assert await source.poll() == []  # nothing newer within the fetch's second: caught up
        assert REGISTRY.get_sample_value("meshconnect_source_lag_seconds", labels) == 0
    finally:
        await source.stop()
