"""kafka-source and kafka-sink against a throwaway single-node Kafka (KRaft), driven directly and through the worker."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiokafka.errors import KafkaError
from cloudevents.core.v1.event import CloudEvent

from runtime import ConfigError, load_config, record_to_json
from runtime.app import serve
from runtime.client import MeshClient, user_agent_for
from runtime.config import WorkerConfig, connector_config
from runtime.connector import SinkContext, SourceContext
from runtime.errors import RetriableError
from runtime.mesh import EmbeddedMesh
from runtime.protocol.frames import SubscriptionMode, SubscriptionType
from runtime.record import ConnectorRecord
from runtime.registry.file import FileRegistry
from runtime.testing import (
    SinkHarness,
    SourceHarness,
    WorkerProcess,
    poll_until,
    run_sink_conformance,
    run_source_conformance,
)
from services.kafka.sink.connector import KafkaSink, KafkaSinkConfig
from services.kafka.source.connector import KafkaSource, KafkaSourceConfig
from tests.servers import KafkaServer, free_port
from tests.services.kafka_client import create_topic, new_topic_name, produce, read_topic
from tests.services.workers import readiness, until


def _event(n: int, subject: str = "orders", **overrides: Any) -> ConnectorRecord:
    return ConnectorRecord(
        **{"data": {"n": n}, "id": f"id-{n}", "source": "/tests", "type": "t", "subject": subject, **overrides}
    )


def _source_config(kafka: KafkaServer, topics: list[str], **config: Any) -> KafkaSourceConfig:
    return KafkaSourceConfig.model_validate({"bootstrap_servers": [kafka.bootstrap], "topics": topics, "timeout": 3} | config)


async def _source(config: KafkaSourceConfig, offsets: dict[str, Any] | None = None) -> KafkaSource:
    """A started source owning every partition group, as the worker would start it."""
    source = KafkaSource(config)
    groups = frozenset(await source.partition_groups())
    await source.start(SourceContext("kafka-test", offsets or {}, assigned_groups=groups))
    return source


async def _sink(kafka: KafkaServer, **config: Any) -> KafkaSink:
    sink = KafkaSink(KafkaSinkConfig.model_validate({"bootstrap_servers": [kafka.bootstrap], "timeout": 3} | config))
    await sink.start(SinkContext(connector_name="kafka-test"))
    return sink


async def test_source_maps_key_headers_timestamp_and_position(kafka_server: KafkaServer) -> None:
    topic = new_topic_name()
    await create_topic(kafka_server.bootstrap, topic)
    await produce(
        kafka_server.bootstrap,
        topic,
        [(b'{"n": 1}', b"customer-7", [("trace", b"abc"), ("trace", b"def")]), (b"plain", None, [])],
    )
    source = await _source(_source_config(kafka_server, [topic], format="json"))
    try:
        records = await poll_until(source, 2)
    finally:
        await source.stop()
    first, second = records
    assert first.partition == {"topic": topic, "partition": 0} and first.offset == {"offset": 0}
    assert second.offset == {"offset": 1}
    assert first.data == {"n": 1} and first.datacontenttype == "application/json"
    assert first.id is None  # the worker derives it from topic, partition and offset
    assert first.extensions["partitionkey"] == "customer-7"
    assert orjson.loads(str(first.extensions["kafkaheaders"])) == [["trace", "abc"], ["trace", "def"]]
    assert (first.extensions["kafkatopic"], first.extensions["kafkapartition"], first.extensions["kafkaoffset"]) == (
        topic,
        0,
        "0",
    )
    kafka_time = datetime.fromtimestamp(int(first.extensions["kafkatimestamp"]) / 1000, UTC)
    assert first.timestamp == kafka_time and abs((datetime.now(UTC) - kafka_time).total_seconds()) < 600
    assert "partitionkey" not in second.extensions and "kafkaheaders" not in second.extensions
    assert second.refusal is None and first.refusal is None


async def test_source_resumes_after_the_checkpointed_offset_and_never_commits_to_kafka(kafka_server: KafkaServer) -> None:
    topic = new_topic_name()
    await create_topic(kafka_server.bootstrap, topic, partitions=2)
    await produce(kafka_server.bootstrap, topic, [(record_to_json(_event(n)), None, []) for n in range(6)], partition=0)
    await produce(kafka_server.bootstrap, topic, [(record_to_json(_event(n)), None, []) for n in range(6, 9)], partition=1)
    config = _source_config(kafka_server, [topic])
    assert await KafkaSource(config).partition_groups() == [f"{topic}/0", f"{topic}/1"]
    committed = {
        orjson.dumps({"partition": 0, "topic": topic}).decode(): {"offset": 3},
        orjson.dumps({"partition": 1, "topic": topic}).decode(): {"offset": 0},
    }
    source = await _source(config, committed)
    try:
        records = await poll_until(source, 4)
        assert await poll_until(source, 1, within=1.5) == []
    finally:
        await source.stop()
    assert sorted(record.id or "" for record in records) == ["id-4", "id-5", "id-7", "id-8"]  # the CloudEvents keep their ids


async def test_source_starting_from_latest_reads_only_new_messages(kafka_server: KafkaServer) -> None:
    topic = new_topic_name()
    await create_topic(kafka_server.bootstrap, topic)
    await produce(kafka_server.bootstrap, topic, [(b"old-0", None, []), (b"old-1", None, [])])
    source = await _source(_source_config(kafka_server, [topic], format="text", start_from="latest"))
    try:
        await produce(kafka_server.bootstrap, topic, [(b"new-2", None, [])])
        records = await poll_until(source, 1)
        assert await poll_until(source, 1, within=1.5) == []
    finally:
        await source.stop()
    assert [(record.data, record.offset) for record in records] == [("new-2", {"offset": 2})]


async def test_source_reads_only_the_partitions_whose_leases_it_holds(kafka_server: KafkaServer) -> None:
    topic = new_topic_name()
    await create_topic(kafka_server.bootstrap, topic, partitions=2)
    await produce(kafka_server.bootstrap, topic, [(b"zero", None, [])], partition=0)
    await produce(kafka_server.bootstrap, topic, [(b"one", None, [])], partition=1)
    source = KafkaSource(_source_config(kafka_server, [topic], format="text"))
    await source.start(SourceContext("kafka-test", {}, assigned_groups=frozenset({f"{topic}/1"})))
    try:
        records = await poll_until(source, 1)
        assert await poll_until(source, 1, within=1.5) == []
    finally:
        await source.stop()
    assert [(record.data, source.group_of(record.partition)) for record in records] == [("one", f"{topic}/1")]


async def test_source_refuses_keys_and_headers_that_are_not_text(kafka_server: KafkaServer) -> None:
    topic = new_topic_name()
    await create_topic(kafka_server.bootstrap, topic)
    binary_event = [("ce_specversion", b"1.0"), ("ce_id", b"x"), ("ce_source", b"/s"), ("ce_type", b"t")]
    await produce(
        kafka_server.bootstrap,
        topic,
        [
            (b"a", b"\xff\xfe", []),
            (b"b", b"k", [("h", b"\xc3\x28")]),
            (b"c", None, [("ce_specversion", b"1.0")]),
            (b"d", None, [*binary_event, ("ce_Bad-Name", b"v")]),
        ],
    )
    source = await _source(_source_config(kafka_server, [topic]))
    try:
        bad_key, bad_header, bad_event, bad_extension = await poll_until(source, 4)
    finally:
        await source.stop()
    assert bad_extension.refusal is not None and "'Bad-Name' is invalid" in bad_extension.refusal
    assert bad_key.refusal is not None and "key is not UTF-8" in bad_key.refusal
    assert bad_header.refusal is not None and "header 'h'" in bad_header.refusal
    assert bad_event.refusal is not None and "ce_id" in bad_event.refusal
    assert (bad_key.data, bad_key.offset, bad_key.extensions["kafkatopic"]) == (b"a", {"offset": 0}, topic)


def _running(broker: KafkaServer) -> None:
    """Start ``broker`` again if a test left it killed (the session shares it)."""
    if broker.proc is None or broker.proc.poll() is not None:
        broker.start()


async def test_poll_while_the_broker_is_down_is_retriable(kafka_server: KafkaServer) -> None:
    topic = new_topic_name()
    await create_topic(kafka_server.bootstrap, topic)
    source = await _source(_source_config(kafka_server, [topic], timeout=1.5))
    try:
        assert await poll_until(source, 1, within=1.5) == []
        kafka_server.kill()
        with pytest.raises(RetriableError, match="Kafka unavailable"):
            for _ in range(10):  # the first polls may still be served from what was fetched
                await source.poll()
        sink = KafkaSink(KafkaSinkConfig.model_validate({"bootstrap_servers": [kafka_server.bootstrap], "timeout": 1.5}))
        with pytest.raises(RetriableError):
            await sink.start(SinkContext(connector_name="kafka-test"))
    finally:
        await source.stop()
        _running(kafka_server)


async def test_sink_binary_mode_writes_ce_headers_and_the_key(kafka_server: KafkaServer) -> None:
    topic = new_topic_name()
    sink = await _sink(kafka_server, topic=topic)
    events = [
        _event(1, extensions={"partitionkey": "customer-7", "tenant": 3}),
        _event(2, data="a,b", datacontenttype="text/csv"),
        _event(3, data=b"\x00\x01"),
    ]
    try:
        assert await sink.put(events) == []
    finally:
        await sink.stop()
    messages = await read_topic(kafka_server.bootstrap, topic)
    first = messages[0]
    headers = {name: value.decode() for name, value in first.headers}
    assert first.key == b"customer-7" and first.value == b'{"n":1}'
    assert headers["ce_specversion"] == "1.0" and headers["ce_id"] == "id-1" and headers["ce_source"] == "/tests"
    assert headers["ce_type"] == "t" and headers["ce_subject"] == "orders" and headers["ce_tenant"] == "3"
    assert headers["content-type"] == "application/json" and headers["ce_time"].endswith("Z")
    assert "ce_datacontenttype" not in headers
    assert [(m.value, dict(m.headers)["content-type"]) for m in messages[1:]] == [
        (b"a,b", b"text/csv"),
        (b"\x00\x01", b"application/octet-stream"),
    ]
    assert messages[1].key is None


async def test_sink_structured_mode_and_key_path(kafka_server: KafkaServer) -> None:
    topic = new_topic_name()
    sink = await _sink(kafka_server, topic=topic, mode="structured", key_path="order.id")
    try:
        rejected = await sink.put([_event(1, data={"order": {"id": 42}}), _event(2, data={"other": 1})])
    finally:
        await sink.stop()
    assert [(r.record.id, r.reason) for r in rejected] == [
        ("id-2", "the event data has no 'order.id' for the message key (config key_path)")
    ]
    (message,) = await read_topic(kafka_server.bootstrap, topic)
    assert message.key == b"42"
    assert dict(message.headers) == {"content-type": b"application/cloudevents+json"}
    assert orjson.loads(message.value)["id"] == "id-1" and orjson.loads(message.value)["data"] == {"order": {"id": 42}}


async def test_what_the_sink_writes_the_source_reads_back_as_the_same_event(kafka_server: KafkaServer) -> None:
    for mode in ("binary", "structured"):
        topic = new_topic_name()
        sink = await _sink(kafka_server, topic=topic, mode=mode)
        events = [
            _event(1, extensions={"partitionkey": "k1", "tenant": "acme"}),
            _event(2, data="hello", datacontenttype="text/plain"),
            _event(3, data=b"\x00\xff"),
        ]
        try:
            assert await sink.put(events) == []
        finally:
            await sink.stop()
        source = await _source(_source_config(kafka_server, [topic]))
        try:
            records = await poll_until(source, 3)
        finally:
            await source.stop()
        for sent, read in zip(events, records, strict=True):
            assert (read.id, read.source, read.type, read.subject, read.data) == (
                sent.id,
                sent.source,
                sent.type,
                sent.subject,
                sent.data,
            ), mode
            assert read.timestamp == sent.timestamp, mode
            assert read.effective_content_type == sent.effective_content_type, mode
            assert read.refusal is None
        assert records[0].extensions["tenant"] == "acme" and records[0].extensions["partitionkey"] == "k1"


async def test_sink_rejects_an_event_whose_subject_is_no_topic_name(kafka_server: KafkaServer) -> None:
    sink = await _sink(kafka_server, topic="out.{topic}")
    try:
        rejected = await sink.put([_event(1, subject="a/b")])
    finally:
        await sink.stop()
    assert len(rejected) == 1 and "not a Kafka topic name" in rejected[0].reason


async def test_sink_while_the_broker_is_down_is_retriable_and_recovers(kafka_server: KafkaServer) -> None:
    topic = new_topic_name()
    await create_topic(kafka_server.bootstrap, topic)
    sink = await _sink(kafka_server, topic=topic, timeout=1.5)
    try:
        assert await sink.put([_event(1)]) == []
        kafka_server.kill()
        with pytest.raises(RetriableError, match="Kafka unavailable"):
            await sink.put([_event(2)])
        kafka_server.start()
        for _ in range(60):  # the worker's retry loop
            try:
                assert await sink.put([_event(2)]) == []
                break
            except RetriableError:
                await asyncio.sleep(0.5)
    finally:
        await sink.stop()
        _running(kafka_server)
    ids = [dict(message.headers)["ce_id"] for message in await read_topic(kafka_server.bootstrap, topic)]
    # A batch that failed may still be written once the broker is back: a copy under the same ce_id.
    assert ids[0] == b"id-1" and set(ids) == {b"id-1", b"id-2"}


def test_config_refuses_sasl_without_credentials_and_never_shows_the_password(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs sasl_plain_username and sasl_plain_password"):
        KafkaSinkConfig.model_validate({"security_protocol": "SASL_SSL", "sasl_plain_username": "u"})
    config = KafkaSourceConfig.model_validate(
        {
            "topics": ["t"],
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_plain_username": "u",
            "sasl_plain_password": "hunter2-secret",
        }
    )
    assert "hunter2-secret" not in repr(config) and "hunter2-secret" not in str(config.model_dump())
    path = tmp_path / "c.yaml"
    path.write_text("name: k\nconnector: kafka-sink\nsink: {topics: [a]}\nconfig: {topic: 'bad topic'}\n")
    with pytest.raises(ConfigError, match=r"config key 'config\.topic': .*not a Kafka topic name"):
        connector_config(KafkaSinkConfig, load_config(path))


# -- end to end: the real worker, through the embedded mesh --------------------------------------


async def _read_mesh_topic(mesh: EmbeddedMesh, topic: str, count: int, within: float = 30.0) -> list[CloudEvent]:
    """The first ``count`` events pushed on ``topic``, in a group of their own."""
    events: list[CloudEvent] = []
    async with asyncio.timeout(within), MeshClient(f"127.0.0.1:{mesh.port}", user_agent_for(f"reader-{topic}", "sub")) as client:
        await client.subscribe(topic, SubscriptionMode.CLUSTERING, SubscriptionType.ASYNC)
        await client.listen()
        async for pushed in client.pushed():
            events.append(pushed.event)
            await pushed.ack()
            if len(events) >= count:
                break
    return events


async def test_worker_dead_letters_a_message_whose_key_is_not_text_and_goes_on(kafka_server: KafkaServer, tmp_path: Path) -> None:
    topic = new_topic_name()
    await create_topic(kafka_server.bootstrap, topic)
    await produce(kafka_server.bootstrap, topic, [(b"good-0", b"k", []), (b"bad", b"\xff", []), (b"good-2", None, [])])
    mesh = EmbeddedMesh(port=0)
    await mesh.start()
    settings = WorkerConfig.model_validate(
        {
            "name": "kafka-in",
            "connector": "kafka-source",
            "mesh": {"address": f"127.0.0.1:{mesh.port}"},
            "source": {"topic": "orders", "checkpoint_interval": 0.2},
            "registry": {"kind": "file", "path": str(tmp_path / "registry")},
            "admin": {"host": "127.0.0.1", "port": free_port()},
            "config": {"bootstrap_servers": [kafka_server.bootstrap], "topics": [topic], "format": "text", "timeout": 3},
        }
    )
    stop = asyncio.Event()
    worker = asyncio.create_task(serve(KafkaSource, settings, stop=stop, install_signals=False))
    try:
        published = await _read_mesh_topic(mesh, "orders", 2)
        (letter,) = await _read_mesh_topic(mesh, "kafka-in-dlq", 1)
    finally:
        stop.set()
        await asyncio.wait_for(worker, 30)
        await mesh.stop()
    assert [event.get_data() for event in published] == ["good-0", "good-2"]
    assert published[0].get_extension("partitionkey") == "k"
    assert "key is not UTF-8" in str(letter.get_extension("dlqreason"))
    kept = letter.get_data()  # the record that could not become an event, its fields as JSON
    assert isinstance(kept, dict) and kept["data"] == "bad" and kept["offset"] == {"offset": 1}
    assert kept["extensions"]["kafkatopic"] == topic
    offsets = await FileRegistry(tmp_path / "registry").load_offsets("kafka-in")
    assert offsets == {orjson.dumps({"partition": 0, "topic": topic}).decode(): {"offset": 2}}


async def test_kafka_sink_conformance(kafka_server: KafkaServer, tmp_path: Path) -> None:
    topic = new_topic_name("sink")
    await create_topic(kafka_server.bootstrap, topic)

    async def read() -> list[str]:
        return [dict(message.headers)["ce_id"].decode() for message in await read_topic(kafka_server.bootstrap, topic)]

    await run_sink_conformance(
        SinkHarness(
            connector=KafkaSink,
            config=lambda: {"bootstrap_servers": [kafka_server.bootstrap], "topic": topic, "timeout": 3},
            read=read,
            kill_system=kafka_server.kill,
            restart_system=kafka_server.start,
            idempotent=False,  # Kafka appends: a redelivered event is written again under the same ce_id
        ),
        workdir=tmp_path,
    )


async def test_kafka_source_conformance(kafka_server: KafkaServer, tmp_path: Path) -> None:
    topic = new_topic_name("source")
    await create_topic(kafka_server.bootstrap, topic, partitions=3)

    async def produce_items(start: int, count: int) -> None:
        messages = [(orjson.dumps({"n": n}), str(n).encode(), []) for n in range(start, start + count)]
        for _ in range(100):  # the broker may be restarting
            try:
                await produce(kafka_server.bootstrap, topic, messages)
                return
            except KafkaError:
                await asyncio.sleep(0.3)
        raise AssertionError("the broker did not come back")

    await run_source_conformance(
        SourceHarness(
            connector=KafkaSource,
            config=lambda: {"bootstrap_servers": [kafka_server.bootstrap], "topics": [topic], "format": "json", "timeout": 3},
            produce=produce_items,
            number_of=lambda event: int(event.get_data()["n"]),  # type: ignore[index]
            kill_system=kafka_server.kill,
            restart_system=kafka_server.start,
        ),
        workdir=tmp_path,
    )


async def test_pipeline_through_kills_and_a_broker_restart_loses_nothing(kafka_server: KafkaServer, tmp_path: Path) -> None:
    """Kafka -> kafka-source -> mesh -> kafka-sink -> Kafka, each connector its own process; both are
    killed with SIGKILL mid-stream and the broker is killed and restarted. Every message arrives,
    under one event id each and with its key; copies (Kafka cannot deduplicate) share that id."""
    inbound, outbound = new_topic_name("in"), new_topic_name("out")
    await create_topic(kafka_server.bootstrap, inbound, partitions=3)
    await create_topic(kafka_server.bootstrap, outbound, partitions=3)
    mesh = EmbeddedMesh(port=free_port(), data_dir=tmp_path / "mesh", redelivery_timeout=3.0)
    await mesh.start()
    common = {"bootstrap_servers": [kafka_server.bootstrap], "timeout": 3}

    def worker_config(name: str, connector: str, block: dict[str, Any], **sections: Any) -> dict[str, Any]:
        return {
            "name": name,
            "connector": connector,
            "mesh": {"address": f"127.0.0.1:{mesh.port}", "request_timeout": 5},
            "registry": {"kind": "file", "path": str(tmp_path / "registry"), "lease_ttl": 2},
            "admin": {"host": "127.0.0.1", "port": free_port()},
            "log": {"format": "json"},
            "config": {**common, **block},
            **sections,
        }

    source = WorkerProcess(
        KafkaSource,
        worker_config(
            "kafka-in",
            "kafka-source",
            {"topics": [inbound], "format": "json"},
            source={"topic": "orders", "checkpoint_every": 20, "checkpoint_interval": 0.2},
        ),
        tmp_path,
    )
    sink = WorkerProcess(
        KafkaSink,
        worker_config(
            "kafka-out",
            "kafka-sink",
            {"topic": outbound},
            sink={"topics": ["orders"], "batch_size": 50, "linger_ms": 20, "retry_initial": 0.1, "retry_max": 1.0},
        ),
        tmp_path,
    )
    produced = 0

    async def feed(count: int) -> None:
        nonlocal produced
        messages = [(orjson.dumps({"n": n}), str(n).encode(), []) for n in range(produced, produced + count)]
        for _ in range(100):  # the broker may be restarting
            try:
                await produce(kafka_server.bootstrap, inbound, messages)
                break
            except KafkaError:
                await asyncio.sleep(0.3)
        else:
            raise AssertionError("the broker did not come back")
        produced += count

    try:
        await sink.start(30)
        await source.start(30)
        await feed(200)
        await asyncio.sleep(0.3)  # let the source be mid-stream, then kill it
        await source.kill()
        await feed(100)
        await source.start(30)
        await feed(100)
        await sink.kill()
        await feed(100)
        await sink.start(30)
        kafka_server.kill()
        async with aiohttp.ClientSession() as http:  # the source finds the broker away and says so
            await until(lambda: readiness(http, source.admin_port)(503, "Kafka unavailable"), "source not ready", within=30)
        kafka_server.start()
        await feed(100)

        async def arrived() -> dict[int, set[tuple[bytes, bytes | None]]]:
            found: dict[int, set[tuple[bytes, bytes | None]]] = {}
            for message in await read_topic(kafka_server.bootstrap, outbound):
                found.setdefault(orjson.loads(message.value)["n"], set()).add((dict(message.headers)["ce_id"], message.key))
            return found

        deadline = asyncio.get_running_loop().time() + 90
        found = await arrived()
        while len(found) < produced and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.5)
            found = await arrived()
        lost = sorted(set(range(produced)) - set(found))
        assert not lost, (
            f"{len(lost)} of {produced} lost (first {lost[:5]}); source:\n{source.log_tail()}\nsink:\n{sink.log_tail()}"
        )
        unstable = {n: copies for n, copies in found.items() if len(copies) != 1}
        assert not unstable, f"messages written under several ids or keys: {dict(list(unstable.items())[:3])}"
        assert all(key == str(n).encode() for n, copies in found.items() for _, key in copies)
        assert mesh.topic_depth("kafka-in-dlq") == 0 and mesh.topic_depth("kafka-out-dlq") == 0
        assert await source.terminate(30) == 0 and await sink.terminate(30) == 0
    finally:
        await source.kill()
        await sink.kill()
        await mesh.stop()


async def test_the_sasl_password_appears_in_no_log_line_and_no_status(kafka_server: KafkaServer, tmp_path: Path) -> None:
    """A sink whose SASL handshake fails (the broker speaks PLAINTEXT) logs its config and its errors, never the password."""
    config = {
        "name": "kafka-secret",
        "connector": "kafka-sink",
        "mesh": {"address": f"127.0.0.1:{free_port()}"},
        "sink": {"topics": ["orders"], "retry_initial": 0.1, "retry_max": 0.5},
        "admin": {"host": "127.0.0.1", "port": free_port()},
        "log": {"format": "json"},
        "config": {
            "bootstrap_servers": [kafka_server.bootstrap],
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "SCRAM-SHA-256",
            "sasl_plain_username": "meshconnect",
            "sasl_plain_password": "hunter2-kafka-secret",
            "timeout": 1,
        },
    }
    worker = WorkerProcess(KafkaSink, config, tmp_path)
    with pytest.raises(AssertionError, match="not running within"):
        await worker.start(8)  # no mesh and a refused handshake: it never gets ready
    try:
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{worker.admin_port}/status") as status:
            body = await status.text()
    finally:
        await worker.kill()
    log = worker.log_path.read_text()
    assert '"starting"' in log and "sasl_plain_username" in log
    assert "hunter2" not in log and "hunter2" not in body
